"""Any server speaking OpenAI's streaming chat-completions protocol: OpenAI, Ollama's /v1, vLLM, llama.cpp's server.

Each attempt reads the HTTP stream in its own task and hands deltas over through a `Feed`, so the reply can
give up on a timeout or a cancel at any moment; giving up cancels that task, which closes the HTTP response.
A failed attempt is retried only before any text came (nothing has been spoken then) and only for failures a
retry can cure: no connection, a timeout, a server error.

Tool calls stream in pieces (OpenAI: id and name first, then the arguments a few characters at a time; vLLM and
Ollama: each call whole); they are put together per index and yielded, whole and in order, once the stream has
finished, so a failure can never leave half a call behind. Each piece still counts as a sign of life for
`stall_timeout_s`.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit, urlunsplit

import openai
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.chat.chat_completion_chunk import ChoiceDeltaToolCall

from assistant.config import OpenAIBackendConfig
from assistant.llm.backend import BackendUnavailable, LlmError, Message, ToolCall, ToolSpec
from assistant.llm.feed import Feed, Progress

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
NO_KEY = "not-needed"  # local servers ignore the key, but the client insists on one
RETRY_PAUSE_S = 0.5


class OpenAICompatibleBackend:
    name = "openai"

    def __init__(self, config: OpenAIBackendConfig) -> None:
        self._config = config
        self.url = config.base_url or OPENAI_URL
        self.shown_url = redact_url(self.url)  # what messages say: no password
        key = config.api_key() or None  # an empty variable is no key
        if key is None and urlsplit(self.url).hostname == "api.openai.com":
            raise BackendUnavailable(f"{self.shown_url} needs an API key: {self._key_hint()}")
        if key is None and config.api_key_env:
            log.info(
                "LLM: $%s (llm.openai.api_key_env) is not set, so no API key is sent to %s",
                config.api_key_env,
                self.shown_url,
            )
        # Our own timers decide (timeout_s, stall_timeout_s); the client's is only a backstop, and it never retries.
        backstop = max(config.timeout_s, config.stall_timeout_s) + 1
        self._client = openai.AsyncOpenAI(base_url=self.url, api_key=key or NO_KEY, timeout=backstop, max_retries=0)

    async def start(self) -> None:
        return None

    async def stream(
        self, messages: list[Message], cancel: asyncio.Event | None = None, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        said = False  # something was yielded: a retry would repeat it
        for attempt in itertools.count():
            if cancel is not None and cancel.is_set():
                return
            feed: Feed[str | ToolCall | Progress] = Feed(cancel)
            reader = asyncio.create_task(self._read(messages, tools, feed))
            started = False  # text or a piece of a tool call came: from then on the stall timer runs
            try:
                limit = self._config.timeout_s
                while (item := await feed.get(limit)) is not None:
                    started, limit = True, self._config.stall_timeout_s
                    if item is not Progress.MADE:
                        said = True
                        yield item
                return
            except Exception as error:
                failure = LlmError(self._scrub(self._explain(error, started)), before_first_token=not said)
                if said or attempt >= self._config.max_retries or not _retryable(error):
                    raise failure from error
                log.warning("%s; trying again (%d of %d)", failure, attempt + 1, self._config.max_retries)
            finally:
                reader.cancel()  # closes the HTTP response if it is still open
                await asyncio.wait([reader])
                feed.close()
            await asyncio.sleep(RETRY_PAUSE_S)

    async def aclose(self) -> None:
        await self._client.close()

    async def _read(
        self, messages: list[Message], tools: Sequence[ToolSpec], feed: Feed[str | ToolCall | Progress]
    ) -> None:
        config = self._config
        calls = _Calls()
        try:
            # a Message is one of openai's message types, but a TypedDict with a union of roles matches none of them
            stream = await self._client.chat.completions.create(
                model=config.model,
                messages=cast(list[ChatCompletionMessageParam], messages),
                stream=True,
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                tools=[_tool(spec) for spec in tools] if tools else openai.omit,
            )
            finished: str | None = None
            async with stream:
                async for chunk in stream:
                    for choice in chunk.choices or ():
                        if choice.delta is not None and choice.delta.content:
                            feed.put(choice.delta.content)
                        if choice.delta is not None and choice.delta.tool_calls:
                            for piece in choice.delta.tool_calls:
                                calls.add(piece)
                            feed.put(Progress.MADE)
                        finished = choice.finish_reason or finished
                        if choice.finish_reason == "length":
                            log.info(
                                "the reply reached llm.openai.max_tokens (%d) and was cut there", config.max_tokens
                            )
            if not finished:  # the body ended without a finish reason: a cut the HTTP layer could not see
                raise StreamEndedEarly("the stream ended without a finish reason")
            if finished in ("tool_calls", "stop"):
                for call in calls.whole():
                    feed.put(call)
            elif calls.pieces:
                log.warning("the reply ended (%s) before its tool calls were whole; they are dropped", finished)
            feed.put(None)
        except Exception as error:
            feed.put(error)

    def _explain(self, error: Exception, started: bool) -> str:
        """One line that says what went wrong and what to check; `started`: the server had begun to reply (with text
        or a piece of a tool call)."""
        config, server = self._config, f"the LLM server at {self.shown_url}"
        if isinstance(error, (TimeoutError, openai.APITimeoutError)):
            if started:
                return (
                    f"{server} stopped sending mid-reply "
                    f"(nothing for {config.stall_timeout_s:g} s, llm.openai.stall_timeout_s)"
                )
            return f"{server} sent no reply within {config.timeout_s:g} s (llm.openai.timeout_s)"
        if isinstance(error, StreamEndedEarly):
            return f"{server} ended the reply stream before it was finished (no finish reason; the connection closed)"
        if isinstance(error, openai.APIConnectionError):
            if started:
                return f"{server} broke off the reply mid-stream ({_cause(error)})"
            if _refused(error):
                return f"{server} refused the connection: is it running? (llm.openai.base_url)"
            return f"cannot reach {server} ({_cause(error)}); check llm.openai.base_url"
        if isinstance(error, openai.AuthenticationError):
            return f"{server} rejected the API key (401: {_detail(error)}); {self._key_hint()}"
        if isinstance(error, openai.PermissionDeniedError):
            return f"{server} refused access (403: {_detail(error)}); {self._key_hint()}"
        if isinstance(error, openai.NotFoundError):
            return (
                f"{server} has no model {config.model!r} (404: {_detail(error)}); check llm.openai.model, "
                "and that llm.openai.base_url ends in /v1"
            )
        if isinstance(error, openai.APIStatusError):
            return f"{server} answered {error.status_code}: {_detail(error)}"
        if isinstance(error, openai.APIError):
            return f"{server} reported an error {'mid-reply' if started else 'before replying'}: {_detail(error)}"
        if isinstance(error, ValueError):
            return f"{server} sent something that is not a chat-completions stream ({error})"
        return f"{server}: {type(error).__name__}: {error}"

    def _scrub(self, message: str) -> str:
        """`message` without the URL's credentials, wherever a library's text repeats the URL."""
        netloc = urlsplit(self.url).netloc
        if "@" not in netloc:
            return message
        return message.replace(netloc, urlsplit(self.shown_url).netloc)

    def _key_hint(self) -> str:
        variable = self._config.api_key_env
        if variable is None:
            return "set llm.openai.api_key_env to the environment variable that holds the key"
        return f"put the key in the environment variable {variable} (llm.openai.api_key_env)"


@dataclass
class _Partial:
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class _Calls:
    """A reply's tool calls put together from their pieces, per index; a piece without an index belongs to the
    call before it, unless it brings a new id or a second name (a server that sends each call whole, unindexed)."""

    def __init__(self) -> None:
        self._calls: dict[int, _Partial] = {}
        self._last: int | None = None
        self.pieces = 0

    def add(self, piece: ChoiceDeltaToolCall) -> None:
        self.pieces += 1
        function = piece.function
        name = function.name if function is not None else None
        arguments = function.arguments if function is not None else None
        index = piece.index
        if index is None:
            last = self._calls.get(self._last) if self._last is not None else None
            new = last is None or (piece.id and piece.id != last.id) or (not piece.id and name and last.name)
            index = max(self._calls, default=-1) + 1 if new or self._last is None else self._last
        call = self._calls.setdefault(index, _Partial())
        self._last = index
        call.id = call.id or piece.id
        call.name = call.name or name
        if arguments:  # some servers send an object where OpenAI sends its JSON text
            call.arguments += arguments if isinstance(arguments, str) else json.dumps(arguments)

    def whole(self) -> list[ToolCall]:
        """The calls in index order; a server that gave no id gets one made, no arguments are `{}`."""
        calls = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call.name:
                log.warning("the LLM server sent a tool call without a name (%r); it is dropped", call.arguments)
                continue
            made = call.id or f"call_{uuid.uuid4().hex[:24]}"
            calls.append(ToolCall(id=made, name=call.name, arguments=call.arguments or "{}"))
        return calls


def _tool(spec: ToolSpec) -> ChatCompletionToolParam:
    return {
        "type": "function",
        "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters},
    }


class StreamEndedEarly(Exception):
    """A reply stream whose body ended before any chunk gave a finish reason."""


def redact_url(url: str) -> str:
    """`url` with the password of its user part as *** (user:***@), or all of it when it has no password (a token)."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}" if colon and user else f"***@{host}"))


def _retryable(error: Exception) -> bool:
    return isinstance(error, (TimeoutError, StreamEndedEarly, openai.APIConnectionError, openai.InternalServerError))


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _refused(error: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno == errno.ECONNREFUSED for e in _causes(error)) or any(
        "refused" in str(e).lower() for e in _causes(error)
    )


def _cause(error: BaseException) -> str:
    """The innermost description of a transport failure (the client's own is a generic 'Connection error.')."""
    described = [str(e) for e in _causes(error) if str(e)]
    return described[-1] if described else type(error).__name__


def _detail(error: openai.APIError) -> str:
    """The server's own message from an error body like {"error": {"message": ...}}, else the client's text."""
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return message
    return error.message
