"""Text mode: the user types, the assistant answers.

The reply streams to the terminal as the LLM produces it. Speaking it aloud joins this mode
once the CSM engine and the voice loop are wired in.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import TextIO

from assistant.config import Config
from assistant.events import EventBus, ReplyText, StateChanged, TurnLatency, UserTranscript, next_turn_id
from assistant.llm.backend import ChatBackend, Message


def _read_lines(source: TextIO, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
    for line in source:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


async def run_text_mode(
    config: Config, backend: ChatBackend, bus: EventBus, source: TextIO = sys.stdin, sink: TextIO = sys.stdout
) -> None:
    """Answer each typed line until end of input."""
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    # A daemon thread, not the default executor: a blocked readline must not hold up shutdown.
    threading.Thread(target=_read_lines, args=(source, asyncio.get_running_loop(), lines), daemon=True).start()
    history: list[Message] = [{"role": "system", "content": config.llm.system_prompt}]
    bus.publish(StateChanged(state="listening"))
    while (line := await lines.get()) is not None:
        text = line.strip()
        if not text:
            continue
        turn, start = next_turn_id(), time.monotonic()
        bus.publish(UserTranscript(text=text, turn=turn))
        bus.publish(StateChanged(state="thinking"))
        history.append({"role": "user", "content": text})
        reply, first_token = "", None
        async for delta in backend.stream(history):
            if first_token is None:
                first_token = time.monotonic() - start
                sink.write("assistant: ")
            reply += delta
            sink.write(delta)
            sink.flush()
        sink.write("\n")
        sink.flush()
        history.append({"role": "assistant", "content": reply})
        bus.publish(ReplyText(text=reply, turn=turn, final=True))
        bus.publish(TurnLatency(turn=turn, transcript_s=0.0, first_token_s=first_token))
        bus.publish(StateChanged(state="listening"))
    bus.publish(StateChanged(state="idle"))
