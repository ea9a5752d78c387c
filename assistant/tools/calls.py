"""One tool call, from the model's request to the result it reads back, whatever goes wrong in between.

The model may name a tool that does not exist, write arguments that are not JSON or do not fit the schema, or
call a tool that raises, hangs or answers with a novel: each becomes an error result the model can read and
recover from, never an exception for the turn. Cancellation (the user interrupted) is the one thing that
propagates, so the caller can record the call as cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import jsonschema

from assistant.llm.backend import ToolCall
from assistant.tools.registry import Tool, ToolError, ToolRegistry

log = logging.getLogger(__name__)

Status = Literal["ok", "error", "cancelled"]
CANCELLED = "cancelled: the user interrupted before it finished; it may or may not have taken effect"


@dataclass(frozen=True)
class ToolOutcome:
    """A call and its result as the model reads it back (`content`)."""

    call: ToolCall
    status: Status
    content: str
    duration_s: float = 0.0

    @classmethod
    def cancelled(cls, call: ToolCall, duration_s: float = 0.0) -> ToolOutcome:
        return cls(call, "cancelled", CANCELLED, duration_s)


async def run_call(registry: ToolRegistry, call: ToolCall, timeout_s: float, max_chars: int) -> ToolOutcome:
    """Run `call` through the registry; every failure is an error result. Raises only CancelledError."""
    started = time.monotonic()
    status: Status = "error"
    try:
        tool, arguments = _checked(registry, call)
        content, status = await asyncio.wait_for(tool.call(arguments), timeout_s), "ok"
    except _Refused as refused:
        content = str(refused)
    except TimeoutError:
        content = f"no result within {timeout_s:g} s (tools.timeout_s); it may still take effect"
    except ToolError as error:
        content = str(error) or "the tool failed"
    except Exception as error:  # a tool's own bug: reported, and the turn goes on
        content = f"the tool failed: {type(error).__name__}: {error}"
    took = time.monotonic() - started
    if status == "error":
        log.warning("tool %s failed after %.2f s: %s", call.name, took, content)
        content = f"error: {content}"
    return ToolOutcome(call, status, _trimmed(content, max_chars), took)


class _Refused(Exception):
    """The call cannot be made as asked; the message tells the model why."""


def _checked(registry: ToolRegistry, call: ToolCall) -> tuple[Tool, dict[str, Any]]:
    tool = registry.get(call.name)
    if tool is None:
        names = ", ".join(spec.name for spec in registry.specs()) or "none"
        raise _Refused(f"there is no tool named {call.name[:80]!r}; the tools are: {names}")
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except (json.JSONDecodeError, RecursionError) as error:
        raise _Refused(f"the arguments are not valid JSON ({error}); send one JSON object") from None
    if not isinstance(arguments, dict):
        raise _Refused(f"the arguments must be a JSON object, not {type(arguments).__name__}")
    try:
        jsonschema.validate(arguments, tool.spec.parameters)
    except jsonschema.ValidationError as error:
        where = "/".join(str(p) for p in error.absolute_path) or "arguments"
        raise _Refused(f"invalid arguments: {where}: {error.message}") from None
    except jsonschema.SchemaError as error:  # the tool's own schema is broken: say so, do not blame the model
        raise _Refused(f"the tool's parameter schema is invalid ({error.message}); it cannot be called") from None
    return tool, arguments


def _trimmed(content: str, max_chars: int) -> str:
    if len(content) <= max_chars:
        return content
    return f"{content[:max_chars]}... [trimmed: {len(content)} characters, the first {max_chars} kept]"
