"""A chat model running inside the assistant with transformers: no server needed.

The model loads once (`start`, or else the first reply), from a local folder or a hub id downloaded with
progress bars. Each reply is generated in a worker thread; its text reaches the event loop through a `Feed`,
and a stopping criterion tied to the reply's cancel event ends generation within one token.

Tools are offered through the model's chat template (`tools=`, as HF templates take them); the calls the model
writes in its text (Qwen2.5's `<tool_call>` format) are parsed out of the stream. A template that ignores tools
gets none, with a warning: the model still answers, without them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteria, StoppingCriteriaList, TextStreamer

from assistant.config import LocalBackendConfig
from assistant.hub import ModelNotFound, resolve_model
from assistant.llm.backend import LlmError, Message, ToolCall, ToolSpec
from assistant.llm.feed import Feed
from assistant.llm.tool_call_text import CLOSE, OPEN, ToolCallParser

log = logging.getLogger(__name__)

MODEL_FILES = ["*.json", "*.jinja", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
"""What a chat model needs from its hub repository: config, weights, tokenizer files."""


class LocalBackend:
    name = "local"

    def __init__(self, config: LocalBackendConfig) -> None:
        self._config = config
        self._loading = asyncio.Lock()
        self.model: Any = None
        self.tokenizer: Any = None
        self._renders_tools: bool | None = None

    @property
    def model_name(self) -> str:
        """The folder or hub id `llm.local.model` names."""
        return self._config.model

    async def start(self) -> None:
        async with self._loading:
            if self.model is None:
                self.model, self.tokenizer = await asyncio.to_thread(self._load)

    async def stream(
        self, messages: list[Message], cancel: asyncio.Event | None = None, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        await self.start()
        conversation = template_messages(messages)
        offered = [
            {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
            for t in tools
        ]
        try:
            if offered and not self._template_renders_tools(conversation, offered):
                offered = []  # the model answers without tools (warned once) rather than not at all
            prompt = self.tokenizer.apply_chat_template(
                conversation, tools=offered or None, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
        except Exception as error:  # a template may refuse a conversation (e.g. one without system messages)
            raise LlmError(
                f"the local LLM's chat template refused the conversation: {error}", before_first_token=True
            ) from error
        parser = ToolCallParser() if offered else None
        feed: Feed[str] = Feed(cancel)
        stop = threading.Event()
        worker = asyncio.ensure_future(asyncio.to_thread(self._generate, prompt, feed, stop))
        said = False
        try:
            while (delta := await feed.get()) is not None:
                for item in parser.feed(delta) if parser else [delta]:
                    said = True
                    yield item
            if parser and not (cancel is not None and cancel.is_set()):
                for item in parser.flush():  # a call cut off by max_new_tokens still comes out, to be answered
                    yield item
        except Exception as error:
            raise LlmError(
                f"the local LLM failed {'mid-reply' if said else 'before replying'}: {type(error).__name__}: {error}",
                before_first_token=not said,
            ) from error
        finally:
            stop.set()
            await asyncio.wait([worker])  # the model is free again (within one token) before the next reply
            feed.close()

    def _template_renders_tools(self, conversation: list[dict[str, Any]], tools: list[dict[str, Any]]) -> bool:
        """Whether the chat template shows the model its tools (it renders them, rather than ignoring `tools`);
        checked once, with a warning when not."""
        if self._renders_tools is None:
            render = functools.partial(
                self.tokenizer.apply_chat_template, conversation, add_generation_prompt=True, tokenize=False
            )
            self._renders_tools = render(tools=tools) != render()
            if not self._renders_tools:
                log.warning(
                    "the chat template of the local LLM %r does not support tools: it answers without them "
                    "(choose a tool-calling model such as Qwen/Qwen2.5-0.5B-Instruct for llm.local.model)",
                    self._config.model,
                )
        return self._renders_tools

    async def aclose(self) -> None:
        self.model = self.tokenizer = self._renders_tools = None

    def _load(self) -> tuple[Any, Any]:
        config = self._config
        started = time.monotonic()
        try:
            folder = resolve_model(config.model, MODEL_FILES, "llm.local.model")
        except ModelNotFound as error:
            raise LlmError(f"cannot load the local LLM: {error}", before_first_token=True) from None
        except Exception as error:  # the hub answered with an error, the disk is full, ...
            raise LlmError(
                f"cannot download the local LLM {config.model!r}: {type(error).__name__}: {error}",
                before_first_token=True,
            ) from None
        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = (
            getattr(torch, config.dtype)
            if config.dtype != "auto"
            else torch.bfloat16
            if device == "cuda"
            else torch.float32
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
            # PreTrainedModel.to is decorated with functools.wraps, whose stub does not bind it to the model
            model = model.to(device).eval()  # type: ignore[arg-type]
        except Exception as error:  # a broken or incomplete folder, an unknown architecture, no GPU: one line
            raise LlmError(
                f"cannot load the local LLM {config.model!r} from {folder}: {type(error).__name__}: {error}",
                before_first_token=True,
            ) from None
        if not tokenizer.chat_template:
            raise LlmError(
                f"the local LLM {config.model!r} has no chat template: "
                "llm.local.model must be an instruct (chat) model",
                before_first_token=True,
            )
        log.info("local LLM: %s on %s (%s) in %.1f s", config.model, device, dtype, time.monotonic() - started)
        return model, tokenizer

    def _generate(self, prompt: Any, feed: Feed[str], stop: threading.Event) -> None:
        """Worker thread: generate the reply, handing text to `feed` as it is decoded; ends with None or the error."""
        config, tokenizer = self._config, self.tokenizer
        if config.temperature > 0:
            sampling: dict[str, Any] = {"do_sample": True, "temperature": config.temperature}
        else:  # greedy; silence the sampling settings a model's generation_config may carry
            sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        try:
            with torch.inference_mode():
                self.model.generate(
                    input_ids=prompt["input_ids"].to(
                        self.model.device
                    ),  # not token_type_ids, which some tokenizers add
                    attention_mask=prompt["attention_mask"].to(self.model.device),
                    max_new_tokens=config.max_new_tokens,
                    streamer=_FeedStreamer(tokenizer, feed),
                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                    pad_token_id=tokenizer.pad_token_id
                    if tokenizer.pad_token_id is not None
                    else tokenizer.eos_token_id,
                    **sampling,
                )
            feed.put_threadsafe(None)
        except Exception as error:
            feed.put_threadsafe(error)


class _FeedStreamer(TextStreamer):
    """transformers' word-aligned incremental decoding, handing each piece of text to a `Feed`.

    Special tokens are left out, but not tool-call tags: Qwen2.5 marks `<tool_call>` non-special, so decoding with
    skip_special_tokens keeps it, yet other tokenizers mark such tags special. So the tokens to hide (all special
    ones but the tags) are dropped before decoding, and the rest decoded as they are.
    """

    def __init__(self, tokenizer: Any, feed: Feed[str]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=False)
        self._feed = feed
        special = set(tokenizer.all_special_ids)
        special.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
        self._hidden = torch.tensor(
            sorted(i for i in special if tokenizer.convert_ids_to_tokens(i) not in (OPEN, CLOSE)), dtype=torch.long
        )

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            value = value.reshape(-1)
            value = value[~torch.isin(value, self._hidden.to(value.device))]
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._feed.put_threadsafe(text)


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self._event.is_set(), dtype=torch.bool, device=input_ids.device)


def template_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI-format messages as HF chat templates take them: a call's arguments as a dict (its JSON text parsed;
    text that is not a JSON object stays text), no None content, and each tool result named after its call."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for message in messages:
        converted: dict[str, Any] = {**message, "content": message["content"] or ""}
        if message["role"] == "assistant" and "tool_calls" in message:
            calls = []
            for call in message["tool_calls"]:
                function = call["function"]
                names[call["id"]] = function["name"]
                try:
                    arguments: Any = json.loads(function["arguments"])
                except ValueError:
                    arguments = function["arguments"]
                if not isinstance(arguments, dict):
                    arguments = function["arguments"]
                calls.append({**call, "function": {"name": function["name"], "arguments": arguments}})
            converted["tool_calls"] = calls
        elif message["role"] == "tool" and message["tool_call_id"] in names:
            converted["name"] = names[message["tool_call_id"]]
        out.append(converted)
    return out
