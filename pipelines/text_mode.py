"""Text mode: the user types, the assistant answers, speaking the reply when it has a voice.

Each line is one turn, answered in order. A chunk of the reply is printed as it is handed to speech. A ready
line goes to the log once the assistant can answer; at a terminal, a `you: ` prompt asks for each line, and a
log line that comes while a reply is being printed ends the reply's line first (the reply goes on below it).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import TextIO

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
    """Answer each typed line until end of input."""
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
