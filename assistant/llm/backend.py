"""The one interface every LLM backend speaks: stream text deltas for a list of chat messages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal, Protocol, TypedDict


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class LlmError(RuntimeError):
    """A backend failed, in one line a user can act on; `before_first_token` tells whether any text had been
    produced."""

    def __init__(self, message: str, *, before_first_token: bool) -> None:
        super().__init__(message)
        self.before_first_token = before_first_token


class BackendUnavailable(RuntimeError):
    """The configured backend cannot be built (a setting or secret it needs is missing); the message says which."""


class ChatBackend(Protocol):
    name: str

    async def start(self) -> None:
        """Load what the first reply needs (a model, a client), so the first turn does not wait for it."""
        ...

    def stream(self, messages: list[Message], cancel: asyncio.Event | None = None) -> AsyncIterator[str]:
        """Yield text deltas of the reply; stop early (and release resources) once `cancel` is set."""
        ...

    async def aclose(self) -> None: ...
