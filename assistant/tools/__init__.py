"""Tools the model may call: one registry for the embedding program's Python functions, MCP servers' tools and
the tools an MQTT host announces."""

from assistant.tools.python import PythonTool, tool
from assistant.tools.registry import Tool, ToolError, ToolRegistry

__all__ = ["PythonTool", "Tool", "ToolError", "ToolRegistry", "tool"]
