"""The one interface every LLM backend speaks: stream a reply to a list of chat messages, as text deltas and the
tool calls the model asks for.

Messages use OpenAI's chat format, tool calls and results included, whatever the backend: the openai backend sends
them as they are, the local one renders them with the model's own chat template.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict

from typing_extensions import NotRequired


class FunctionCall(TypedDict):
    name: str
    arguments: str  # JSON text, as the model wrote it


class ToolCallMessage(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class SystemMessage(TypedDict):
    role: Literal["system"]
    content: str


class UserMessage(TypedDict):
    role: Literal["user"]
    content: str


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    tool_calls: NotRequired[list[ToolCallMessage]]


class ToolMessage(TypedDict):
    role: Literal["tool"]
    tool_call_id: str
    content: str


Message = SystemMessage | UserMessage | AssistantMessage | ToolMessage


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model is told of it: its name, what it does, and its parameters as a JSON schema object."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True)
class ToolCall:
    """A call the model asked for; `arguments` is the JSON text it wrote, not yet parsed or checked."""

    id: str
    name: str
    arguments: str

    def message(self) -> ToolCallMessage:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


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

    def stream(
        self, messages: list[Message], cancel: asyncio.Event | None = None, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        """Yield text deltas of the reply, and each whole tool call (of `tools`) the model makes, in the order it
        made them; stop early (and release resources) once `cancel` is set."""
        ...

    async def aclose(self) -> None: ...
