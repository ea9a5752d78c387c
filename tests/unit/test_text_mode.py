"""Text mode with fakes: a ready line in the log, a prompt before each line when the input is a terminal, and at a
real (pseudo-)terminal the prompt kept below what is printed, with keys that interrupt and quit."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any, TextIO

import pytest

from assistant.config import Config
from assistant.events import EventBus
from assistant.llm.backend import Message, ToolCall, ToolSpec
from pipelines.text_mode import PROMPT, run_text_mode
from pipelines.voice_loop import VoiceLoop
from tests.support.fakes import FakeBackend
from tests.support.terminal import PseudoTerminal, Screen


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


# --- at a terminal: a real pseudo-terminal, read into a screen as a user sees it


class GatedBackend:
    """An LLM whose replies stream one delta each time the test opens the gate."""

    name = "gated"

    def __init__(self, *replies: list[str]) -> None:
        self.replies = list(replies)
        self.gate = asyncio.Semaphore(0)
        self.requests = 0

    async def start(self) -> None:
        return None

    async def stream(
        self, messages: list[Message], cancel: asyncio.Event | None = None, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        deltas = self.replies[min(self.requests, len(self.replies) - 1)]
        self.requests += 1
        for delta in deltas:
            await self.gate.acquire()
            if cancel is not None and cancel.is_set():
                return
            yield delta

    def open(self, deltas: int = 1) -> None:
        for _ in range(deltas):
            self.gate.release()

    async def aclose(self) -> None:
        return None


@pytest.fixture
def pty() -> Iterator[PseudoTerminal]:
    terminal = PseudoTerminal(rows=24, cols=60)
    yield terminal
    terminal.close()


@contextlib.contextmanager
def terminal_ends(pty: PseudoTerminal) -> Iterator[tuple[TextIO, TextIO]]:
    """The program's stdin and stdout on the terminal."""
    with open(os.dup(pty.follower)) as source, open(os.dup(pty.follower), "w") as sink:
        yield source, sink


async def until(pty: PseudoTerminal, check: Callable[[Screen], bool], what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not pty.seen(check):
        assert time.monotonic() < deadline, f"not seen within {timeout_s:.0f} s: {what}; the screen:\n{pty.text}"
        await asyncio.sleep(0.01)


async def typing_along(run: Coroutine[Any, Any, None], user: Coroutine[Any, Any, None], pty: PseudoTerminal) -> None:
    """Run text mode while `user` types. Text mode is awaited here, not in a task (a KeyboardInterrupt must not leave
    the loop); a failure of `user`, or text mode still running 10 s after the user is done, stops it."""
    main, typing = asyncio.current_task(), asyncio.ensure_future(user)
    assert main is not None
    timers: list[asyncio.TimerHandle] = []

    def typed(done: asyncio.Future[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            main.cancel()
        elif not done.cancelled():
            timers.append(asyncio.get_running_loop().call_later(10, main.cancel))

    typing.add_done_callback(typed)
    try:
        await run
    except asyncio.CancelledError:
        if typing.done() and not typing.cancelled():
            if (error := typing.exception()) is not None:
                raise error from None
            raise AssertionError(f"text mode did not end after the user's last key; the screen:\n{pty.text}") from None
        raise
    except BaseException:
        typing.cancel()
        raise
    finally:
        for timer in timers:
            timer.cancel()
    await typing


def bottom(*lines: str) -> Callable[[Screen], bool]:
    """The screen ends with these lines, the cursor on the last."""
    return lambda screen: screen.lines[-len(lines) :] == list(lines)


async def test_at_a_terminal_the_reply_prints_above_the_prompt_and_what_is_typed_stays_in_it(
    pty: PseudoTerminal,
) -> None:
    bus = EventBus()
    backend = GatedBackend(["Hello there. ", "How are you ", "today? ", "Fine."], ["Second."])
    voice = VoiceLoop(Config(), bus, backend)

    async def user() -> None:
        await until(pty, bottom("you:"), "the prompt")
        pty.type("hello\r")
        await until(pty, bottom("you: hello", "you:"), "the next prompt at once")
        backend.open(2)
        await until(pty, bottom("you: hello", "assistant: Hello there.", "you:"), "the reply's start above the prompt")
        pty.type("typed while")
        await until(pty, bottom("assistant: Hello there.", "you: typed while"), "the typing in the prompt")
        backend.open(2)
        await until(
            pty, bottom("assistant: Hello there. How are you today? Fine.", "you: typed while"), "the reply, whole"
        )
        pty.type(" it spoke\r")  # queued behind nothing now: answered at once
        backend.open()
        await until(pty, bottom("you: typed while it spoke", "assistant: Second.", "you:"), "the second reply")
        pty.type("\x04")

    with terminal_ends(pty) as (source, sink):
        await typing_along(run_text_mode(voice, bus, source, sink), user(), pty)
        await until(pty, lambda screen: screen.x == 0 and screen.cursor_line == "", "the cursor on a fresh line")
    assert pty.lines == [
        "you: hello",
        "assistant: Hello there. How are you today? Fine.",
        "you: typed while it spoke",
        "assistant: Second.",
        "you:",
        "",
    ]
    assert [m["content"] for m in voice.conversation.messages() if m["role"] == "user"] == [
        "hello",
        "typed while it spoke",
    ]


async def test_at_a_terminal_log_lines_come_above_the_prompt_and_the_reply_being_printed(pty: PseudoTerminal) -> None:
    bus = EventBus()
    backend = GatedBackend(["One. ", "Two."])
    voice = VoiceLoop(Config(), bus, backend)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.text_mode")

    async def user() -> None:
        await until(pty, bottom("you:"), "the prompt")
        pty.type("hi\r")
        backend.open()
        await until(pty, bottom("assistant: One.", "you:"), "the reply's start")
        pty.type("abc")
        logger.warning("from the loop")
        thread = threading.Thread(target=logger.warning, args=("from a thread",))
        thread.start()
        thread.join()
        await until(
            pty,
            bottom("WARNING from the loop", "WARNING from a thread", "assistant: One.", "you: abc"),
            "the log lines above the reply",
        )
        backend.open()
        await until(pty, bottom("assistant: One. Two.", "you: abc"), "the reply, whole")
        pty.type("\x15\x04")  # Ctrl-U empties the line, Ctrl-D ends

    with terminal_ends(pty) as (source, sink):
        handler.setStream(sink)
        logging.getLogger().addHandler(handler)
        try:
            await typing_along(run_text_mode(voice, bus, source, sink), user(), pty)
        finally:
            logging.getLogger().removeHandler(handler)
        assert handler.stream is sink  # given back
        await until(pty, lambda screen: screen.x == 0 and screen.cursor_line == "", "the cursor on a fresh line")
    assert pty.lines[-5:] == [
        "WARNING from the loop",
        "WARNING from a thread",
        "assistant: One. Two.",
        "you:",
        "",
    ]


async def test_at_a_terminal_esc_and_ctrl_c_interrupt_a_reply_a_line_sent_meanwhile_waits_its_turn(
    pty: PseudoTerminal,
) -> None:
    bus = EventBus()
    backend = GatedBackend(["First. ", "never said"], ["Second. ", "never said"], ["Third. ", "Done."])
    voice = VoiceLoop(Config(), bus, backend)

    async def user() -> None:
        await until(pty, bottom("you:"), "the prompt")
        pty.type("one\r")
        backend.open()
        await until(pty, bottom("assistant: First.", "you:"), "the first reply")
        pty.type("two\r")  # sent while the first reply plays: queued behind it
        await until(pty, bottom("you: two", "assistant: First.", "you:"), "the second line sent")
        pty.type("\x03")
        await until(pty, bottom("you: two", "assistant: First. [interrupted]", "you:"), "the first reply interrupted")
        backend.open()
        await until(pty, bottom("assistant: Second.", "you:"), "the second line answered")
        pty.type("\x1b")
        await until(pty, bottom("assistant: Second. [interrupted]", "you:"), "the second reply interrupted by Esc")
        pty.type("three\r")
        backend.open(2)
        await until(pty, bottom("assistant: Third. Done.", "you:"), "a reply after them, whole")
        pty.type("half typed\x03")  # nothing to interrupt: Ctrl-C quits

    with terminal_ends(pty) as (source, sink), pytest.raises(KeyboardInterrupt):
        await typing_along(run_text_mode(voice, bus, source, sink), user(), pty)
    await until(pty, lambda screen: screen.x == 0 and screen.cursor_line == "", "the cursor on a fresh line")
    assert pty.lines[-3:] == ["assistant: Third. Done.", "you: half typed", ""]
    assert not voice.busy
