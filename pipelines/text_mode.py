"""Text mode: the user types, the assistant answers, speaking the reply when it has a voice.

Each line is one turn, answered in order. A chunk of the reply is printed as it is handed to speech. A ready
line goes to the log once the assistant can answer; at a terminal, a `you: ` prompt asks for each line.
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


def _show(event: ReplyText, sink: TextIO, started: set[int]) -> None:
    if not event.final:
        sink.write(f"{' ' if event.turn in started else 'assistant: '}{event.text}")
        started.add(event.turn)
    elif event.turn in started:
        sink.write(" [interrupted]\n" if event.interrupted else "\n")
    sink.flush()


async def _print_replies(replies: Subscription, sink: TextIO, started: set[int]) -> None:
    while True:
        event = await replies.get()
        assert isinstance(event, ReplyText)
        _show(event, sink, started)


async def run_text_mode(voice: VoiceLoop, bus: EventBus, source: TextIO = sys.stdin, sink: TextIO = sys.stdout) -> None:
    """Answer each typed line until end of input."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    # A daemon thread, not the default executor: a blocked readline must not hold up shutdown.
    threading.Thread(target=_read_lines, args=(source, asyncio.get_running_loop(), lines), daemon=True).start()
    started: set[int] = set()
    interactive = source.isatty()
    log.info("ready: type a line and press Enter; Ctrl-D or Ctrl-C ends")

    async def prompt() -> None:
        if interactive:
            await asyncio.sleep(0)  # the turn's log line (a listener of its last event) comes out first
            sink.write(PROMPT)
            sink.flush()

    with bus.subscribe(ReplyText) as replies:
        await prompt()
        while (line := await lines.get()) is not None:
            if not (text := line.strip()):
                await prompt()
                continue
            printer = asyncio.create_task(_print_replies(replies, sink, started))
            try:
                await voice.ask(text)
            finally:
                printer.cancel()
                while not replies.queue.empty():  # what the turn published last
                    _show(replies.queue.get_nowait(), sink, started)  # type: ignore[arg-type]
            await prompt()
