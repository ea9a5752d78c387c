"""A scripted backend: fixed replies in turn, streamed word by word with optional delays.

For demos and tests; it never calls a model. A reply may call tools (`ScriptedReply`), and a reply's text may
quote the last tool result ('{result}'), so a scripted demo can act and then say what came back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Sequence

from assistant.config import ScriptedBackendConfig
from assistant.llm.backend import Message, ToolCall, ToolSpec

_calls = itertools.count(1)


class ScriptedBackend:
    name = "scripted"

    def __init__(self, config: ScriptedBackendConfig) -> None:
        self._config = config
        self._replies = itertools.cycle(config.replies)

    async def start(self) -> None:
        return None

    async def stream(
        self, messages: list[Message], cancel: asyncio.Event | None = None, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        scripted = next(self._replies)
        text = scripted.text.replace("{result}", _last_result(messages))
        await asyncio.sleep(self._config.first_token_delay_s)
        for i, piece in enumerate(re.findall(r"\S+\s*", text)):
            if cancel is not None and cancel.is_set():
                return
            if i:
                await asyncio.sleep(self._config.token_delay_s)
            yield piece
        for call in scripted.tool_calls:
            if cancel is not None and cancel.is_set():
                return
            yield ToolCall(f"call_{next(_calls)}", call.name, json.dumps(call.arguments, ensure_ascii=False))

    async def aclose(self) -> None:
        return None


def _last_result(messages: list[Message]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "tool"), "")
