"""Text mode with fakes: a ready line in the log, and at a terminal a prompt before each line."""

from __future__ import annotations

import io
import logging

import pytest

from assistant.config import Config
from assistant.events import EventBus
from pipelines.text_mode import PROMPT, run_text_mode
from pipelines.voice_loop import VoiceLoop
from tests.support.fakes import FakeBackend


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
async def test_replies_each_line_with_a_prompt_only_at_a_terminal(terminal: bool, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipelines.text_mode")
    bus = EventBus()
    voice = VoiceLoop(Config(), bus, FakeBackend(["Hi there."]))
    source = (Terminal if terminal else io.StringIO)("hello\n\nbye\n")
    sink = io.StringIO()
    await run_text_mode(voice, bus, source, sink)
    replies = "assistant: Hi there.\nassistant: Hi there.\n"
    expected = f"{PROMPT}assistant: Hi there.\n{PROMPT}{PROMPT}assistant: Hi there.\n{PROMPT}" if terminal else replies
    assert sink.getvalue() == expected
    assert any(r.getMessage().startswith("ready: type a line") for r in caplog.records)
