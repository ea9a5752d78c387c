"""Tools a kiosk's or a robot's own program offers over MQTT.

The host publishes its tools, retained, on `tool/manifest`: a JSON list of `{"name", "description", "parameters"}`
(parameters: a JSON schema object); an empty payload withdraws them (a host may set that as its last will). The
assistant calls one by publishing `{"id", "name", "arguments"}` on `tool/call` and waits for `{"id", "result"}`
(any JSON; a string is passed on as it is) or `{"id", "error": "..."}` on `tool/result`. When the user interrupts,
or no result comes within `tools.timeout_s`, it publishes `{"id"}` on `tool/cancel`; a result that comes after that
is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from assistant.llm.backend import ToolSpec
from assistant.mqtt.messages import utf8
from assistant.tools.registry import ToolError, ToolRegistry

log = logging.getLogger(__name__)

SOURCE = "mqtt"
Publish = Callable[[str, dict[str, Any]], Awaitable[None]]
"""Publish a JSON object on a topic under the assistant's base (`tool/call`); raises ToolError when it cannot."""


class _Announced(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    @field_validator("parameters")
    @classmethod
    def _schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError('must be a JSON schema with "type": "object"')
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as error:
            raise ValueError(f"not a valid JSON schema: {error.message}") from None
        return schema


_MANIFEST = TypeAdapter(list[_Announced])


class ManifestError(ValueError):
    """A tool manifest that is not taken; the message says why."""


def parse_manifest(payload: bytes) -> list[ToolSpec]:
    """The tools a manifest announces; an empty payload announces none. Raises ManifestError."""
    if not payload.strip():
        return []
    try:
        text = utf8(payload)
    except ValueError as error:
        raise ManifestError(str(error)) from None
    try:
        announced = _MANIFEST.validate_json(text)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise ManifestError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    names = [tool.name for tool in announced]
    if len(names) != len(set(names)):
        raise ManifestError(f"two tools share a name: {names}")
    return [ToolSpec(tool.name, tool.description, tool.parameters) for tool in announced]


class MqttTool:
    source = SOURCE

    def __init__(self, spec: ToolSpec, host: MqttTools) -> None:
        self.spec = spec
        self._host = host

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self._host.call(self.spec.name, arguments)


class MqttTools:
    """The host's tools in the registry, and the calls waiting for its results."""

    def __init__(self, registry: ToolRegistry, publish: Publish, report: Callable[[str], None]) -> None:
        self.registry = registry
        self._publish = publish
        self._report = report
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._cancelling: set[asyncio.Task[None]] = set()

    def on_manifest(self, payload: bytes) -> None:
        """Replace the host's tools with those announced; a manifest that is not valid withdraws them."""
        self.registry.withdraw(SOURCE)
        try:
            specs = parse_manifest(payload)
        except ManifestError as error:
            self._report(f"MQTT: the tool manifest was rejected, so the host's tools are withdrawn: {error}")
            return
        added = []
        for spec in specs:
            try:
                self.registry.add(MqttTool(spec, self))
                added.append(spec.name)
            except ValueError as error:  # a name another source has: that one stays
                self._report(f"MQTT: the host's tool is not used: {error}")
        log.info("MQTT: the host offers %d tools: %s", len(added), ", ".join(added) or "none")

    def on_result(self, payload: bytes) -> None:
        try:
            data = json.loads(utf8(payload))
            call_id = data["id"] if isinstance(data, dict) else None
            if not isinstance(call_id, str) or ("result" in data) == ("error" in data):
                raise ValueError('expected {"id": "...", "result": ...} or {"id": "...", "error": "..."}')
        except (ValueError, KeyError, RecursionError) as error:
            self._report(f"MQTT: a tool result was rejected: {error}")
            return
        waiting = self._waiting.get(call_id)
        if waiting is None or waiting.done():
            log.info("MQTT: a result for call %r came after it ended (cancelled or timed out); ignored", call_id[:64])
            return
        if "error" in data:
            waiting.set_exception(ToolError(str(data["error"])))
        else:
            result = data["result"]
            waiting.set_result(result if isinstance(result, str) else json.dumps(result, ensure_ascii=False))

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        call_id = uuid.uuid4().hex
        waiting = self._waiting[call_id] = asyncio.get_running_loop().create_future()
        try:
            await self._publish("tool/call", {"id": call_id, "name": name, "arguments": arguments})
            return await waiting
        except asyncio.CancelledError:  # interrupted or timed out: the host may stop what it does
            cancelling = asyncio.get_running_loop().create_task(self._cancel(call_id))
            self._cancelling.add(cancelling)
            cancelling.add_done_callback(self._cancelling.discard)
            raise
        finally:
            del self._waiting[call_id]

    async def _cancel(self, call_id: str) -> None:
        try:
            await self._publish("tool/cancel", {"id": call_id})
        except ToolError as error:
            log.info("MQTT: could not cancel call %s: %s", call_id, error)

    def withdraw(self) -> None:
        self.registry.withdraw(SOURCE)
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_exception(ToolError("the MQTT bridge stopped before the host answered"))
