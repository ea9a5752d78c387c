"""Text mode: the user types, the assistant answers, speaking the reply when it has a voice.

Each line is one turn, answered in order. A chunk of the reply is printed as it is handed to speech, and a ready line
goes to the log once the assistant can answer.

At a terminal (input and output both, and not a dumb one), prompt_toolkit keeps the `you: ` line below everything
printed: the reply being printed shows just above it and moves up whole when it ends, log lines come above it too,
and what is typed meanwhile stays in the input line. A line sent while a reply plays is queued: typed turns are
answered in order, as lines sent in a chat are (Esc or Ctrl-C is the way to cut a reply short). Esc or Ctrl-C
interrupts the reply (its line ends with ` [interrupted]`); Ctrl-C with nothing to interrupt quits (KeyboardInterrupt,
as a Ctrl-C does elsewhere). Ctrl-D ends the input: the turns sent are answered, and the cursor is left on a fresh line.

Otherwise (a pipe, a file) lines are read plainly; when only the input is a terminal a `you: ` prompt asks for each
line, and a log line that comes while a reply is being printed on a terminal ends the reply's line first.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from prompt_toolkit import PromptSession
from prompt_toolkit.application import create_app_session, run_in_terminal
from prompt_toolkit.filters import Condition
from prompt_toolkit.input import create_input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.output import create_output
from prompt_toolkit.patch_stdout import patch_stdout
from prompt_toolkit.utils import is_dumb_terminal

from assistant.events import EventBus, ReplyText, Subscription
from pipelines.voice_loop import VoiceLoop

log = logging.getLogger(__name__)
PROMPT = "you: "


def _read_lines(source: TextIO, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    try:
        for line in source:
            loop.call_soon_threadsafe(queue.put_nowait, line)
        loop.call_soon_threadsafe(queue.put_nowait, None)
    except RuntimeError:  # the loop closed (the program is stopping) while a line was being read
        return


class ReplyLines(logging.Filter):
    """Prints each reply on a line of its own, chunk by chunk, from the bus's ReplyText events.

    As a filter on the log's terminal handlers it prints what was published before a log record and ends an
    open reply line, so the record comes in order and does not land in the middle of the reply.
    """

    def __init__(self, replies: Subscription, sink: TextIO) -> None:
        super().__init__()
        self.replies = replies
        self.sink = sink
        self.started: set[int] = set()  # turns whose reply has begun
        self.open = False  # the last thing written is part of a reply's line
        self._loop_thread = threading.current_thread()  # the subscription's queue is read only there

    def show(self, event: ReplyText) -> None:
        if not event.final:
            self.sink.write(f"{' ' if self.open else 'assistant: '}{event.text}")
            self.started.add(event.turn)
            self.open = True
        elif event.turn in self.started:
            if self.open or event.interrupted:
                self.sink.write(f"{'' if self.open else 'assistant:'}{' [interrupted]' if event.interrupted else ''}\n")
            self.open = False
        self.sink.flush()

    def show_published(self) -> None:
        while not self.replies.queue.empty():
            self.show(self.replies.queue.get_nowait())  # type: ignore[arg-type]

    async def print_replies(self) -> None:
        while True:
            self.show(await self.replies.get())  # type: ignore[arg-type]

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.current_thread() is self._loop_thread:
            self.show_published()
        if self.open:
            self.sink.write("\n")
            self.sink.flush()
            self.open = False
        return True


def _terminal_handlers() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(getattr(h, "stream", None), "isatty", bool)()]


async def run_text_mode(voice: VoiceLoop, bus: EventBus, source: TextIO = sys.stdin, sink: TextIO = sys.stdout) -> None:
    """Answer each typed line until end of input; at a terminal, Ctrl-C with nothing to interrupt raises
    KeyboardInterrupt."""
    if source.isatty() and sink.isatty() and not is_dumb_terminal():
        await _at_terminal(voice, bus, source, sink)
    else:
        await _read_plainly(voice, bus, source, sink)


async def _read_plainly(voice: VoiceLoop, bus: EventBus, source: TextIO, sink: TextIO) -> None:
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    # A daemon thread, not the default executor: a blocked readline must not hold up shutdown.
    threading.Thread(target=_read_lines, args=(source, asyncio.get_running_loop(), lines), daemon=True).start()
    interactive = source.isatty()
    log.info("ready: type a line and press Enter; Ctrl-D or Ctrl-C ends")

    async def prompt() -> None:
        if interactive:
            await asyncio.sleep(0)  # the turn's log line (a listener of its last event) comes out first
            sink.write(PROMPT)
            sink.flush()

    handlers = _terminal_handlers() if sink.isatty() else []
    with bus.subscribe(ReplyText) as replies:
        printed = ReplyLines(replies, sink)
        for handler in handlers:
            handler.addFilter(printed)
        try:
            await prompt()
            while (line := await lines.get()) is not None:
                if not (text := line.strip()):
                    await prompt()
                    continue
                printer = asyncio.create_task(printed.print_replies())
                try:
                    await voice.ask(text)
                finally:
                    printer.cancel()
                    printed.show_published()  # what the turn published last
                await prompt()
        finally:
            for handler in handlers:
                handler.removeFilter(printed)


class _Above(io.TextIOBase):
    """A stream for the log's handlers: its whole lines are printed above the prompt, in order, from any thread."""

    def __init__(self, print_above: Callable[[str], object]) -> None:
        super().__init__()
        self._print = print_above
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._lock = threading.Lock()
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._lock:
            lines, newline, self._partial = (self._partial + text).rpartition("\n")
            if newline and threading.get_ident() == self._thread:
                self._print(lines + newline)
            elif newline:
                with contextlib.suppress(RuntimeError):  # the loop has closed: the program is stopping
                    self._loop.call_soon_threadsafe(self._print, lines + newline)
        return len(text)


async def _at_terminal(voice: VoiceLoop, bus: EventBus, source: TextIO, sink: TextIO) -> None:
    live: dict[int, str] = {}  # the line of each reply being printed, shown above the prompt until it ends
    lines: asyncio.Queue[tuple[str, Callable[[], object]]] = asyncio.Queue()  # to print above the prompt, in order
    turns: set[asyncio.Task[Any]] = set()

    def above(text: str, then: Callable[[], object] = lambda: None) -> None:
        lines.put_nowait((text, then))

    def write(batch: list[tuple[str, Callable[[], object]]]) -> None:
        for text, then in batch:
            sink.write(text)
            sink.flush()
            then()

    async def print_above() -> None:  # a task of the prompt's app session, so that the prompt makes way
        while True:
            batch = [await lines.get()]
            while not lines.empty():
                batch.append(lines.get_nowait())
            try:
                await run_in_terminal(functools.partial(write, batch), in_executor=False)
            finally:
                for _ in batch:
                    lines.task_done()

    def show(event: ReplyText) -> None:
        if not event.final:
            live[event.turn] = f"{live.get(event.turn, 'assistant:')} {event.text}"
            session.app.invalidate()
        elif event.turn in live or event.interrupted:
            mark = " [interrupted]" if event.interrupted else ""
            above(f"{live.get(event.turn, 'assistant:')}{mark}\n", lambda: live.pop(event.turn, None))

    async def print_replies() -> None:
        while True:
            show(await replies.get())  # type: ignore[arg-type]

    def message() -> str:
        app = session.app
        if app.is_done or not live:  # an accepted line is left as `you: ...` alone
            return PROMPT
        size = app.output.get_size()
        width = max(1, size.columns)  # wrapped as the terminal wraps the line once printed
        rows = [line[i : i + width] for line in live.values() for i in range(0, len(line), width)]
        return "\n".join([*rows[-max(1, size.rows - 2) :], PROMPT])  # what fits on the screen, if not all

    keys = KeyBindings()

    @keys.add("c-c")
    def _interrupt_or_quit(event: KeyPressEvent) -> None:
        if voice.busy:
            voice.interrupt("key")
        else:
            event.app.exit(exception=KeyboardInterrupt, style="class:aborting")

    @keys.add("escape", eager=True, filter=Condition(lambda: voice.busy))  # eager: at once, not as a Meta prefix
    def _interrupt(event: KeyPressEvent) -> None:
        voice.interrupt("key")

    log.info("ready: type a line and press Enter; Esc or Ctrl-C interrupts a reply; Ctrl-D or Ctrl-C ends")
    handlers = [h for h in _terminal_handlers() if isinstance(h, logging.StreamHandler)]
    streams = [h.stream for h in handlers]
    with (
        bus.subscribe(ReplyText) as replies,
        create_app_session(input=create_input(source), output=create_output(sink)),
        patch_stdout(raw=True),  # anything else written to stdout or stderr comes above the prompt too
    ):
        session: PromptSession[str] = PromptSession(message, key_bindings=keys)
        tasks = [asyncio.create_task(print_above()), asyncio.create_task(print_replies())]
        for handler in handlers:
            handler.setStream(_Above(above))
        try:
            while True:
                try:
                    text = (await session.prompt_async()).strip()
                except EOFError:  # Ctrl-D: the turns sent are still answered
                    break
                except KeyboardInterrupt:  # an interrupted reply still ends its line
                    if turns:
                        await asyncio.wait(turns)
                    raise
                if text:
                    turn = voice.ask(text)
                    turns.add(turn)
                    turn.add_done_callback(turns.discard)
            if turns:
                await asyncio.wait(turns)
        finally:
            for handler, stream in zip(handlers, streams):
                handler.setStream(stream)
            while not replies.queue.empty():
                show(replies.queue.get_nowait())  # type: ignore[arg-type]
            try:
                await lines.join()
                sink.write("".join(f"{line} [interrupted]\n" for line in live.values()))  # cut short by a stop
                sink.flush()
            finally:
                for task in tasks:
                    task.cancel()
