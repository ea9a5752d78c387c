"""A scripted backend: fixed replies in turn, streamed word by word with optional delays.

For demos and tests; it never calls a model.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator

from assistant.config import ScriptedBackendConfig
from assistant.llm.backend import Message


class ScriptedBackend:
    name = "scripted"

    def __init__(self, config: ScriptedBackendConfig) -> None:
        self._config = config
        self._replies = itertools.cycle(config.replies)

    async def start(self) -> None:
        return None

    async def stream(self, messages: list[Message], cancel: asyncio.Event | None = None) -> AsyncIterator[str]:
        reply = next(self._replies)
        await asyncio.sleep(self._config.first_token_delay_s)
        for i, piece in enumerate(re.findall(r"\S+\s*", reply)):
            if cancel is not None and cancel.is_set():
                return
            if i:
                await asyncio.sleep(self._config.token_delay_s)
            yield piece

    async def aclose(self) -> None:
        return None
