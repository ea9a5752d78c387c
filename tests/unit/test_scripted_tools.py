"""The scripted backend calling tools from its config: a reply's tool_calls run through the voice loop with real Python
tools, and "{result}" in the next reply says what came back; a malformed scripted call is a config error."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import ConfigError, load_config
from assistant.events import EventBus
from assistant.llm.scripted import ScriptedBackend
from assistant.tools import ToolRegistry, tool
from pipelines.voice_loop import VoiceLoop

REPLIES = """
llm:
  backend: scripted
  scripted:
    replies:
      - text: "Let me check."
        tool_calls: [{name: thermostat, arguments: {room: kitchen, celsius: 21.5}}]
      - "Done: {result}"
      - tool_calls: [{name: battery}]
      - "Battery at {result} percent."
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


async def test_a_scripted_reply_calls_a_python_tool_and_the_next_reply_quotes_its_result(tmp_path: Path) -> None:
    calls: list[tuple[str, float]] = []

    @tool
    def thermostat(room: str, celsius: float) -> str:
        """Set a room's temperature."""
        calls.append((room, celsius))
        return f"the {room} is set to {celsius} degrees"

    @tool
    async def battery() -> int:
        """The battery level in percent."""
        return 80

    config = load_config(write(tmp_path, REPLIES), ["tools.filler=null"])
    registry = ToolRegistry()
    registry.add(thermostat)
    registry.add(battery)
    voice = VoiceLoop(config, EventBus(), ScriptedBackend(config.llm.scripted), tools=registry)
    spoken = await voice.ask("Make the kitchen warm.")
    result = "the kitchen is set to 21.5 degrees"
    assert calls == [("kitchen", 21.5)]  # the scripted arguments, converted by the tool's hints
    assert spoken is not None and spoken.text == f"Let me check. Done: {result}"
    history = voice.conversation.messages()
    assert [m["role"] for m in history] == ["system", "user", "assistant", "tool", "assistant"]
    (call,) = history[2]["tool_calls"]  # type: ignore[typeddict-item]
    assert call["function"] == {"name": "thermostat", "arguments": '{"room": "kitchen", "celsius": 21.5}'}
    assert history[3] == {"role": "tool", "tool_call_id": call["id"], "content": result}
    spoken = await voice.ask("And the battery?")
    assert spoken is not None and spoken.text == "Battery at 80 percent."  # a non-string result as JSON


def test_config_replies_may_mix_text_and_tool_calls(tmp_path: Path) -> None:
    replies = load_config(write(tmp_path, REPLIES)).llm.scripted.replies
    first = replies[0]
    assert first.text == "Let me check."
    assert [(c.name, c.arguments) for c in first.tool_calls] == [("thermostat", {"room": "kitchen", "celsius": 21.5})]
    assert replies[1].text == "Done: {result}" and not replies[1].tool_calls


@pytest.mark.parametrize(
    "call, key",
    [("{arguments: {room: hall}}", "tool_calls.0.name"), ("{name: move, arguments: hall}", "tool_calls.0.arguments")],
)
def test_a_malformed_scripted_tool_call_is_a_config_error_naming_the_key(call: str, key: str) -> None:
    setting = f"llm.scripted.replies=[{{text: hi, tool_calls: [{call}]}}]"
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[setting])
    assert f"(--set {setting})" in str(info.value) and "llm.scripted.replies.0" in str(info.value)


def test_a_scripted_tool_call_without_a_name_is_named_precisely(tmp_path: Path) -> None:
    path = write(tmp_path, "llm:\n  scripted:\n    replies:\n      - {text: hi, tool_calls: [{arguments: {}}]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: llm.scripted.replies.0") and "tool_calls.0.name" in message
    assert "Field required" in message and "valid string" not in message
