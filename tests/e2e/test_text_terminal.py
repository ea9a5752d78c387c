"""`run_assistant.py --text` at a terminal, as a user sees it: a real pseudo-terminal read into a screen."""

from __future__ import annotations

import os
import re
import signal
import sys
import termios
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import REPO
from tests.support.terminal import Screen, Terminal

SCRIPT = str(REPO / "run_assistant.py")
FIRST = "assistant: Hello! I'm a scripted assistant. Ask me anything, and I'll pretend to know."
LOG_LINE = re.compile(r"\d\d:\d\d:\d\d [DIWE] [\w.]+: ")


@pytest.fixture
def assistant() -> Iterator[Terminal]:
    terminal = Terminal(
        [sys.executable, SCRIPT, "--text", "--no-speech", "--config", "configs/scripted.yaml"]
        + ["--set", "llm.scripted.token_delay_s=0.2"],
        rows=30,
        cols=240,
        env={**os.environ, "TERM": "xterm", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        cwd=str(REPO),
    )
    yield terminal
    terminal.close()


def at_prompt(typed: str = "") -> Callable[[Screen], bool]:
    """The cursor at the end of the prompt's line, which holds `typed`."""
    return lambda screen: screen.cursor_line == f"you: {typed}".rstrip() and screen.x == len(f"you: {typed}")


def test_typing_while_a_reply_prints_ctrl_c_interrupting_it_and_ctrl_d_leaving(assistant: Terminal) -> None:
    assistant.wait_for(at_prompt(), "the prompt", timeout_s=120)
    assistant.type("hello\r")
    assistant.wait_for(lambda screen: "assistant: Hello!" in screen.lines, "the reply's first chunk")
    assistant.type("typed while speaking", gap_s=0.02)
    assistant.wait_for(lambda screen: FIRST in screen.lines, "the reply, whole")
    assistant.wait_for(at_prompt("typed while speaking"), "the typed characters in the prompt")
    lines = assistant.lines
    assert [line for line in lines if "typed" in line] == ["you: typed while speaking"]  # nowhere else
    assert lines.index("you: hello") < lines.index(FIRST)
    turn_log = next(i for i, line in enumerate(lines) if "assistant.turns: turn 1" in line)
    assert LOG_LINE.match(lines[turn_log]) and lines.index(FIRST) < turn_log  # a line of its own, below the reply

    assistant.type("\x15slow one\r")  # Ctrl-U empties the line first
    assistant.wait_for(lambda screen: "assistant: That's a good question." in screen.lines, "the second reply begun")
    assistant.type("\x03")
    assistant.wait_for(
        lambda screen: "assistant: That's a good question. [interrupted]" in screen.lines, "the reply interrupted"
    )
    assistant.wait_for(at_prompt(), "the prompt again")
    assert assistant.process.poll() is None
    assert not any("moment" in line for line in assistant.lines)  # the rest of the reply never printed

    assistant.type("again\r")  # still answering
    assistant.wait_for(lambda screen: screen.lines.count(FIRST) == 2, "the third reply")
    assistant.wait_for(at_prompt(), "the prompt after it")
    assistant.type("\x04")
    assert assistant.wait_exit() == 0
    assistant.wait_for(lambda screen: screen.x == 0 and screen.cursor_line == "", "the cursor on a fresh line")
    lines = assistant.lines
    assert lines[-2:] == ["you:", ""]
    mixed = [line for line in lines[:-1] if not (line.startswith(("you:", "assistant: ")) or LOG_LINE.match(line))]
    assert not mixed  # every line is one the user typed, a reply or a log line (none wraps at 240 columns)
    assert "Traceback" not in assistant.output


def test_ctrl_c_at_the_idle_prompt_stops_it(assistant: Terminal) -> None:
    """As Ctrl-C stops it elsewhere: "Stopped.", exit 0."""
    assistant.wait_for(at_prompt(), "the prompt", timeout_s=120)
    assistant.type("never sent\x03")
    assert assistant.wait_exit() == 0
    assistant.wait_for(lambda screen: "Stopped." in screen.lines, "Stopped.")
    lines = assistant.lines
    assert "you: never sent" in lines and "Traceback" not in assistant.output


def test_sigterm_during_a_reply_ends_its_line_and_gives_the_terminal_back(assistant: Terminal) -> None:
    assistant.wait_for(at_prompt(), "the prompt", timeout_s=120)
    assert not termios.tcgetattr(assistant.leader)[3] & termios.ICANON  # prompt_toolkit reads each key
    assistant.type("hello\r")
    assistant.wait_for(lambda screen: "assistant: Hello!" in screen.lines, "the reply's first chunk")
    assistant.process.send_signal(signal.SIGTERM)
    assert assistant.wait_exit() == 0
    assistant.wait_for(lambda screen: "Stopped." in screen.lines, "Stopped.")
    (reply,) = [line for line in assistant.lines if line.startswith("assistant: ")]
    assert reply.startswith("assistant: Hello!") and reply.endswith(" [interrupted]")
    assert termios.tcgetattr(assistant.leader)[3] & (termios.ICANON | termios.ECHO) == termios.ICANON | termios.ECHO
    assert "Traceback" not in assistant.output
