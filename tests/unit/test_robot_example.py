"""examples/robot.py's tools as the model meets them: their schemas, and a drive the user interrupts."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

from assistant.config import Config
from assistant.events import EventBus
from assistant.llm.backend import ToolCall
from assistant.tools import PythonTool, ToolRegistry
from pipelines.voice_loop import VoiceLoop
from tests.support.fakes import FakeBackend
from tests.unit.test_reply import until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "robot.py"


def robot_module():
    spec = importlib.util.spec_from_file_location("robot_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_robot_s_methods_are_described_to_the_model_from_their_hints_and_docstrings() -> None:
    robot = robot_module().Robot()
    drive = PythonTool(robot.drive)
    assert drive.spec.description == "Drive to a room of the flat and say when it arrived."
    room = drive.spec.parameters["properties"]["room"]
    assert room["enum"][0] == "kitchen" and room["description"] == "where to go."
    assert drive.spec.parameters["required"] == ["room"]


async def test_a_drive_interrupted_on_the_way_stops_the_robot_and_the_model_hears_so() -> None:
    robot = robot_module().Robot()
    registry = ToolRegistry()
    for method in (robot.drive, robot.battery_level, robot.where_am_i):
        registry.add(PythonTool(method))
    drive = ToolCall("c1", "drive", json.dumps({"room": "bedroom"}))
    backend = FakeBackend([drive], then=[[ToolCall("c2", "battery_level", "{}")], ["At 87 percent."]])
    voice = VoiceLoop(Config.model_validate({"tools": {"filler": None}}), EventBus(), backend, tools=registry)
    driving = voice.ask("Go to the bedroom.")
    await asyncio.sleep(0.2)
    assert voice.interrupt()
    await driving
    assert robot.room == "charging dock"  # it never arrived
    tool_message = voice.conversation.messages()[-2]
    assert tool_message["role"] == "tool" and tool_message["content"].startswith("cancelled")
    assert (await voice.ask("Battery?")).text == "At 87 percent."
    await until(lambda: backend.messages[-1][-1]["content"] == '{"percent": 87, "charging": true}')
