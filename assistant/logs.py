"""Logging set-up and the one-line-per-turn summary that listens on the event bus."""

from __future__ import annotations

import logging
import sys

from assistant.events import Event, EventBus, ReplyText, TurnLatency, UserTranscript

log = logging.getLogger("assistant.turns")


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def format_turn(heard: str | None, reply: ReplyText | None, latency: TurnLatency) -> str:
    said = reply.text if reply else ""
    tool = "" if latency.tool_s is None else f", tool {_ms(latency.tool_s)}"
    mark = " [interrupted]" if reply and reply.interrupted else ""
    return (
        f"turn {latency.turn}: heard {heard or ''!r} -> said {said!r}{mark} | ms after end of speech: "
        f"endpoint {_ms(latency.endpoint_s)}, asr {_ms(latency.transcript_s)}, llm {_ms(latency.first_token_s)}, "
        f"csm-in {_ms(latency.first_chunk_s)}, audio {_ms(latency.first_audio_s)}, "
        f"played {_ms(latency.first_played_s)}{tool}"
    )


async def log_turns(bus: EventBus) -> None:
    """Log one line per finished turn (run as a task; cancel it to stop)."""
    heard: dict[int, str] = {}
    replies: dict[int, ReplyText] = {}
    with bus.subscribe(UserTranscript, ReplyText, TurnLatency) as events:
        async for event in events:
            record_turn_event(event, heard, replies)


def record_turn_event(event: Event, heard: dict[int, str], replies: dict[int, ReplyText]) -> None:
    if isinstance(event, UserTranscript):
        heard[event.turn] = event.text
    elif isinstance(event, ReplyText) and event.final:
        replies[event.turn] = event
    elif isinstance(event, TurnLatency):
        log.info(format_turn(heard.pop(event.turn, None), replies.pop(event.turn, None), event))
