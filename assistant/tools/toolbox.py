"""Every source of tools in one registry: the program's Python functions and the configured MCP servers (an MQTT
host's tools are added by the MQTT bridge, which shares the registry)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from assistant.config import ToolsConfig
from assistant.events import ErrorEvent, EventBus
from assistant.tools.mcp import McpServers
from assistant.tools.python import PythonTool
from assistant.tools.registry import ToolRegistry

log = logging.getLogger(__name__)

ToolFunction = Callable[..., Any] | PythonTool
"""A function (its schema from its hints and docstring), or one already made a tool with `@tool`."""


class Toolbox:
    """`await start()` starts the MCP servers; `await aclose()` stops them. Tools can be added at any time."""

    def __init__(self, config: ToolsConfig, bus: EventBus, functions: Sequence[ToolFunction] = ()) -> None:
        self.config = config
        self.bus = bus
        self.registry = ToolRegistry(config.enabled)
        for function in functions:
            self.add(function)
        self._mcp = McpServers.from_config(config, self.registry, self._report)

    def add(self, function: ToolFunction) -> PythonTool:
        """Offer a Python function to the model; ValueError if its name is taken."""
        made = function if isinstance(function, PythonTool) else PythonTool(function)
        self.registry.add(made)
        return made

    async def start(self) -> None:
        await self._mcp.start()
        names = self.registry.names()
        if names:
            log.info("tools: %s", ", ".join(n if self.registry.get(n) else f"{n} (not enabled)" for n in names))
        missing = sorted(set(self.config.enabled or ()) - set(names))
        if missing:  # an MQTT host may announce them later
            log.info("tools.enabled names tools no source offers yet: %s", ", ".join(missing))

    async def aclose(self) -> None:
        await self._mcp.aclose()

    async def __aenter__(self) -> Toolbox:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _report(self, message: str) -> None:  # the MCP servers have logged it
        self.bus.publish(ErrorEvent(source="tools", message=message))
