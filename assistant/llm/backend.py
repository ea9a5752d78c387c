"""The one interface every LLM backend speaks: stream text deltas for a list of chat messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal, Protocol, TypedDict


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class LlmError(RuntimeError):
    """A backend failed; `before_first_token` tells whether any text had been produced."""

    def __init__(self, message: str, *, before_first_token: bool) -> None:
        super().__init__(message)
        self.before_first_token = before_first_token


class ChatBackend(Protocol):
    name: str

    def stream(self, messages: list[Message], cancel: asyncio.Event | None = None) -> AsyncIterator[str]:
        """Yield text deltas of the reply; stop early (and release resources) once `cancel` is set."""
        ...

    async def aclose(self) -> None: ...
