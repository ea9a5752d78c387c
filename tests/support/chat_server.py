"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for tests of the LLM backends.

It speaks HTTP/1.1 over a socket (keep-alive, chunked transfer) and streams server-sent events the way
OpenAI, vLLM, Ollama and llama.cpp do: `data: {chat.completion.chunk}` lines, then `data: [DONE]`. It
checks the bearer key and the model name like a real server, and each request can be scripted: delays,
a stall, a dropped connection, tool calls streamed OpenAI's way or vLLM's. It runs in its own thread, so
both async tests and subprocesses can use it, and records how each response ended (`finished`,
`client closed`, `dropped`).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Literal

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Call:
    """A tool call the scripted model makes; without an id the server makes one (`call_<n>`) unless told not to."""

    name: str
    arguments: str = "{}"
    id: str | None = None


@dataclass(frozen=True)
class Script:
    """How the server answers one chat request: the reply's text tokens, then its tool calls, as deltas."""

    reply: str = "Hello there! How can I help you today?"
    first_delay_s: float = 0.0  # after the headers, before the first delta
    delay_s: float = 0.0  # between deltas
    stall_after: int | None = None  # deltas sent, then silence until the client leaves
    drop_after: int | None = None  # deltas sent, then the connection is cut mid-stream
    end_after: int | None = None  # deltas sent unchunked, then the connection closed cleanly: no finish, no [DONE]
    status: int = 200  # anything else answers with an error body, like a server that fails the request
    calls: tuple[Call, ...] = ()
    # "openai": per call a first delta with index, id, type and name, then its arguments `piece_chars` at a time;
    # "whole": each call complete in one delta, as vLLM and Ollama send them
    call_style: Literal["openai", "whole"] = "openai"
    piece_chars: int = 4
    send_ids: bool = True  # False: no call carries an id, like some local servers
    send_index: bool = True  # False: no call delta carries an index
    finish_reason: str | None = None  # None: "tool_calls" when there are calls, else "stop"

    def deltas(self) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = [{"content": piece} for piece in tokens(self.reply)]
        for n, call in enumerate(self.calls):
            index: dict[str, Any] = {"index": n} if self.send_index else {}
            head = dict(index)
            if self.send_ids:
                head["id"] = call.id or f"call_{n}"
            head["type"] = "function"
            if self.call_style == "whole":
                deltas.append(_calls({**head, "function": {"name": call.name, "arguments": call.arguments}}))
                continue
            deltas.append(_calls({**head, "function": {"name": call.name, "arguments": ""}}))
            for at in range(0, len(call.arguments), self.piece_chars):
                piece = call.arguments[at : at + self.piece_chars]
                deltas.append(_calls({**index, "function": {"arguments": piece}}))
        return deltas


def _calls(call: dict[str, Any]) -> dict[str, Any]:
    return {"tool_calls": [call]}


def tokens(text: str) -> list[str]:
    """Word-sized deltas with their leading space, as BPE tokens stream."""
    return re.findall(r"\s*\S+", text)


class ChatServer:
    def __init__(self, *scripts: Script, api_key: str | None = None, models: set[str] | None = None) -> None:
        self.scripts = list(scripts)
        self.default = Script()
        self.api_key = api_key
        self.models = models
        self.requests: list[dict[str, Any]] = []  # JSON bodies
        self.authorizations: list[str | None] = []
        self.outcomes: list[str] = []
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="chat-server", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._connection, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def wait_outcomes(self, count: int, timeout_s: float = 10.0) -> list[str]:
        """Block until `count` responses have ended; their outcomes."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.outcomes) >= count, timeout_s):
                raise TimeoutError(
                    f"the chat server saw {len(self.outcomes)} of {count} responses end: {self.outcomes}"
                )
            return list(self.outcomes)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while (request := await _read_request(reader)) is not None:  # keep-alive: requests in turn
                try:
                    outcome = await self._answer(*request, reader, writer)
                except ConnectionError:
                    outcome = "client closed"
                with self._changed:
                    self.outcomes.append(outcome)
                    self._changed.notify_all()
                if outcome != "finished":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):  # cancelled: shutting down
            return
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _answer(
        self,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> str:
        if path != CHAT_PATH:
            return await _send_error(writer, 404, f"no route {path}", "not_found")
        self.requests.append(body)
        self.authorizations.append(headers.get("authorization"))
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return await _send_error(writer, 401, "Incorrect API key provided.", "invalid_api_key")
        model = body.get("model")
        if self.models is not None and model not in self.models:
            return await _send_error(
                writer, 404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found"
            )
        script = self.scripts.pop(0) if self.scripts else self.default
        if script.status != 200:
            return await _send_error(
                writer, script.status, "The server had an error processing your request.", "server_error"
            )
        return await _stream(script, str(model), reader, writer)


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], dict[str, Any]] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None  # the client closed an idle connection
    request_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    path = request_line.split(" ")[1]
    return path, headers, json.loads(raw) if raw else {}


async def _send_error(writer: asyncio.StreamWriter, status: int, message: str, code: str) -> str:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})
    writer.write(
        (
            f"HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    await writer.drain()
    return "finished"


def _event(model: str, delta: dict[str, Any], finish: str | None = None, chunked: bool = True) -> bytes:
    chunk = {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    data = f"data: {json.dumps(chunk)}\n\n".encode()
    return _chunked(data) if chunked else data


def _chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _client_stays(reader: asyncio.StreamReader, seconds: float | None) -> bool:
    """Wait `seconds` (None: for ever); False as soon as the client closes the connection."""
    try:
        return await asyncio.wait_for(reader.read(1), seconds) != b""
    except TimeoutError:
        return True


async def _stream(script: Script, model: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    if script.end_after is not None:  # a body that ends with the connection: the HTTP layer cannot tell a cut
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
        for delta in script.deltas()[: script.end_after]:
            writer.write(_event(model, delta, chunked=False))
        await writer.drain()
        writer.close()
        return "ended early"
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + _event(model, {"role": "assistant", "content": ""})
    )
    await writer.drain()
    deltas = script.deltas()
    for i in range(len(deltas) + 1):  # a stall or a drop may come after the last delta, before the finish
        if i == script.stall_after:
            await _client_stays(reader, None)
            return "client closed"
        if i == script.drop_after:
            writer.transport.abort()
            return "dropped"
        if i == len(deltas):
            break
        delta = deltas[i]
        if not await _client_stays(reader, script.first_delay_s if i == 0 else script.delay_s):
            return "client closed"
        writer.write(_event(model, delta))
        await writer.drain()
    finish = script.finish_reason or ("tool_calls" if script.calls else "stop")
    writer.write(_event(model, {}, finish) + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()
    return "finished"
