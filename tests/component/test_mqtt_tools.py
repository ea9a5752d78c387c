"""A host's tools over MQTT, against a real mosquitto: the retained manifest, calls answered by id, a result that
never comes, a cancelled call, malformed manifests and results. The host is a second real aiomqtt client."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from assistant.audio.streams import FileSink
from assistant.events import ErrorEvent
from assistant.llm.backend import ToolCall
from pipelines import Assistant
from tests.component.test_mqtt_bridge import BASE, broker, controller, kiosk_config  # noqa: F401 (fixture)
from tests.support.fakes import FakeBackend, FakeSpeechEngine, FakeTranscriber, QueueSource
from tests.support.mosquitto import Mosquitto
from tests.unit.test_reply import until

MOVE = {
    "name": "move",
    "description": "Drive the robot to a room.",
    "parameters": {"type": "object", "properties": {"room": {"type": "string"}}, "required": ["room"]},
}


class Host:
    """The robot's own program: announces its tools and answers calls as the test says."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.calls: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.cancels: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def announce(self, tools: Any, *, raw: bytes | None = None) -> None:
        payload = raw if raw is not None else json.dumps(tools).encode()
        await self.client.publish(f"{BASE}/tool/manifest", payload, qos=1, retain=True)

    async def answer(self, call_id: str, **outcome: Any) -> None:
        await self.client.publish(f"{BASE}/tool/result", json.dumps({"id": call_id, **outcome}), qos=1)

    async def _collect(self) -> None:
        async for message in self.client.messages:
            payload = json.loads(message.payload)  # type: ignore[arg-type]
            (self.calls if message.topic.value.endswith("/call") else self.cancels).put_nowait(payload)


@asynccontextmanager
async def host(server: Mosquitto) -> AsyncIterator[Host]:
    async with aiomqtt.Client(server.host, server.port) as client:
        other = Host(client)
        await client.subscribe(f"{BASE}/tool/call", qos=1)
        await client.subscribe(f"{BASE}/tool/cancel", qos=1)
        collecting = asyncio.create_task(other._collect())
        try:
            yield other
        finally:
            collecting.cancel()
            await client.publish(f"{BASE}/tool/manifest", b"", qos=1, retain=True)  # no tools left for the next test


@asynccontextmanager
async def robot(server: Mosquitto, backend: FakeBackend, **tools: Any) -> AsyncIterator[Assistant]:
    config = kiosk_config(server).model_copy(deep=True)
    config.tools = config.tools.model_copy(update={"filler": None, **tools})
    assistant = Assistant(
        config,
        backend=backend,
        engine=FakeSpeechEngine(frames_per_text=1),
        transcriber=FakeTranscriber(),
        source=QueueSource(),
        sink=FileSink(Path(tempfile.mkdtemp()) / "replies.wav"),
    )
    async with assistant:
        yield assistant


def move(room: str = "kitchen") -> ToolCall:
    return ToolCall("call_1", "move", json.dumps({"room": room}))


async def registered(assistant: Assistant, names: list[str]) -> None:
    await until(lambda: sorted(assistant.toolbox.registry.names("mqtt")) == names)


async def test_announced_tools_are_called_by_id_and_the_result_reaches_the_model(broker: Mosquitto) -> None:
    backend = FakeBackend([move()], then=[["I am in the kitchen."]])
    async with host(broker) as robot_host, controller(broker) as kiosk, robot(broker, backend) as assistant:
        await robot_host.announce([MOVE])
        await registered(assistant, ["move"])
        asking = assistant.ask("Come to the kitchen.")
        asked = await asyncio.wait_for(robot_host.calls.get(), 10)
        assert asked["name"] == "move" and asked["arguments"] == {"room": "kitchen"}
        await robot_host.answer(asked["id"], result={"arrived": True})
        assert await asking == "I am in the kitchen."
        assert backend.messages[1][-1]["content"] == '{"arrived": true}'
        called = await kiosk.next("tool", lambda e: e["phase"] == "called")
        result = await kiosk.next("tool", lambda e: e["phase"] == "result")
        assert called["name"] == result["name"] == "move" and result["status"] == "ok"


async def test_an_error_from_the_host_and_a_result_that_never_comes_are_error_results(broker: Mosquitto) -> None:
    backend = FakeBackend([move()], then=[["Sorry."], [move()], ["Sorry again."]])
    async with host(broker) as robot_host, robot(broker, backend, timeout_s=0.5) as assistant:
        await robot_host.announce([MOVE])
        await registered(assistant, ["move"])
        asking = assistant.ask("Come.")
        asked = await asyncio.wait_for(robot_host.calls.get(), 10)
        await robot_host.answer(asked["id"], error="the door is shut")
        await asking
        assert backend.messages[1][-1]["content"] == "error: the door is shut"

        asking = assistant.ask("Come again.")
        asked = await asyncio.wait_for(robot_host.calls.get(), 10)  # and no answer
        await asking
        assert backend.messages[-1][-1]["content"].startswith("error: no result within 0.5 s")
        cancelled = await asyncio.wait_for(robot_host.cancels.get(), 10)
        assert cancelled == {"id": asked["id"]}
        await robot_host.answer(asked["id"], result="too late")  # ignored, harmlessly
        await asyncio.sleep(0.2)


async def test_an_interrupt_cancels_the_call_on_the_host(broker: Mosquitto) -> None:
    backend = FakeBackend([move()], then=[["Stopped."]])
    async with host(broker) as robot_host, robot(broker, backend) as assistant:
        await robot_host.announce([MOVE])
        await registered(assistant, ["move"])
        asking = assistant.ask("Come.")
        asked = await asyncio.wait_for(robot_host.calls.get(), 10)
        assert assistant.interrupt()
        await asking
        assert await asyncio.wait_for(robot_host.cancels.get(), 10) == {"id": asked["id"]}
        messages = assistant.conversation.messages()
        assert messages[-2]["role"] == "tool" and messages[-2]["content"].startswith("cancelled")


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"{not json", "Invalid JSON"),
        (
            json.dumps([{"name": "move", "parameters": {"type": "string"}}]).encode(),
            'must be a JSON schema with "type"',
        ),
        (json.dumps([{"name": "has space"}]).encode(), "String should match pattern"),
        (json.dumps([MOVE, MOVE]).encode(), "two tools share a name"),
    ],
)
async def test_a_malformed_manifest_is_an_error_and_withdraws_the_host_s_tools(
    broker: Mosquitto,
    raw: bytes,
    why: str,
) -> None:
    async with host(broker) as robot_host, robot(broker, FakeBackend(["Hi."])) as assistant:
        errors = assistant.subscribe(ErrorEvent)
        await robot_host.announce([MOVE])
        await registered(assistant, ["move"])
        await robot_host.announce(None, raw=raw)
        await registered(assistant, [])
        error = await asyncio.wait_for(errors.get(), 5)
        assert isinstance(error, ErrorEvent) and "tool manifest was rejected" in error.message and why in error.message
        await robot_host.announce([MOVE])  # a good one again
        await registered(assistant, ["move"])
        await robot_host.announce(None, raw=b"")  # the host withdraws its tools (e.g. its last will)
        await registered(assistant, [])


async def test_a_malformed_result_is_an_error_event_and_the_call_goes_on_waiting(broker: Mosquitto) -> None:
    backend = FakeBackend([move()], then=[["Done."]])
    async with host(broker) as robot_host, robot(broker, backend) as assistant:
        errors = assistant.subscribe(ErrorEvent)
        await robot_host.announce([MOVE])
        await registered(assistant, ["move"])
        asking = assistant.ask("Come.")
        asked = await asyncio.wait_for(robot_host.calls.get(), 10)
        await robot_host.client.publish(f"{BASE}/tool/result", b'{"result": 1}', qos=1)
        error = await asyncio.wait_for(errors.get(), 5)
        assert isinstance(error, ErrorEvent) and "tool result was rejected" in error.message
        await robot_host.answer(asked["id"], result="ok")
        assert await asking == "Done."


def test_a_manifest_or_result_that_is_not_utf8_is_named_so() -> None:
    from assistant.mqtt.tools import ManifestError, MqttTools, parse_manifest
    from assistant.tools import ToolRegistry

    with pytest.raises(ManifestError, match=r"^payload is not UTF-8 \(byte 0 is 0xff\)$"):
        parse_manifest(json.dumps([MOVE]).encode("utf-16"))
    reports: list[str] = []
    MqttTools(ToolRegistry(), None, reports.append).on_result(json.dumps({"id": "x", "result": 1}).encode("utf-16"))  # type: ignore[arg-type]
    assert reports == ["MQTT: a tool result was rejected: payload is not UTF-8 (byte 0 is 0xff)"]
