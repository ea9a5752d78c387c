"""Every tool the assistant can call, whatever it comes from, under one name space.

A tool is anything with a `spec` (what the model is told) and an async `call(arguments)` that returns the result
as text (or raises `ToolError` with a message the model can read). Tools are grouped by `source` ("python",
"mcp:<server>", "mqtt") so that a source that goes away withdraws its tools at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Protocol

from assistant.llm.backend import ToolSpec

log = logging.getLogger(__name__)


class ToolError(Exception):
    """A tool ran and failed; the message is the error result the model sees."""


class Tool(Protocol):
    spec: ToolSpec
    source: str

    async def call(self, arguments: dict[str, Any]) -> str:
        """Run with arguments already checked against `spec.parameters`; cancelling the task cancels the call."""
        ...


class ToolRegistry:
    """The tools by name; `enabled` (names, None = all) decides which the model is offered and may call."""

    def __init__(self, enabled: Iterable[str] | None = None) -> None:
        self.enabled = None if enabled is None else frozenset(enabled)
        self._tools: dict[str, Tool] = {}

    def add(self, tool: Tool) -> None:
        """Register `tool`; a name already taken by another source is refused (ValueError), by the same source
        replaced (an MQTT host announcing again)."""
        name = tool.spec.name
        if (old := self._tools.get(name)) is not None and old.source != tool.source:
            raise ValueError(f"a tool named {name!r} already comes from {old.source}")
        self._tools[name] = tool

    def withdraw(self, source: str) -> list[str]:
        """Remove every tool of `source`; the names removed."""
        gone = [name for name, tool in self._tools.items() if tool.source == source]
        for name in gone:
            del self._tools[name]
        return gone

    def get(self, name: str) -> Tool | None:
        """The tool the model may call by that name (None when unknown or not enabled)."""
        if self.enabled is not None and name not in self.enabled:
            return None
        return self._tools.get(name)

    def specs(self) -> list[ToolSpec]:
        """What the model is offered now."""
        return [tool.spec for name, tool in self._tools.items() if self.enabled is None or name in self.enabled]

    def names(self, source: str | None = None) -> list[str]:
        return [name for name, tool in self._tools.items() if source is None or tool.source == source]

    def __len__(self) -> int:
        return len(self.specs())
