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
async def test_replies_each_line_with_a_prompt_only_at_a_terminal(
    terminal: bool, caplog: pytest.LogCaptureFixture
) -> None:
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


async def test_a_log_line_during_a_reply_at_a_terminal_gets_a_line_of_its_own() -> None:
    log_terminal = Terminal()
    handler = logging.StreamHandler(log_terminal)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        bus = EventBus()
        voice = VoiceLoop(Config(), bus, FakeBackend(["One. ", "Two. ", "Three."], fail_after=2))
        sink = Terminal()
        handler.stream = sink  # stdout and stderr on one terminal
        await run_text_mode(voice, bus, io.StringIO("hello\n"), sink)
    finally:
        logging.getLogger().removeHandler(handler)
    first, warning, rest = sink.getvalue().splitlines()  # the failure comes while "Two." waits to be spoken
    assert (first, rest) == ("assistant: One.", "assistant: Two.")
    assert warning.startswith("WARNING turn ") and warning.endswith(
        "the LLM failed mid-reply: the fake LLM was told to fail"
    )
    assert not handler.filters  # the terminal's handlers are left as they were
