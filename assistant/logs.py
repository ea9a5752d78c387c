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
    """The turn's line; stages its kind of turn cannot reach are left out: a typed turn has no endpoint or
    transcript, and a reply that made no sound and was not cut off (`--no-speech`) no csm-in, audio or played."""
    said = reply.text if reply else ""
    mark = " [interrupted]" if reply and reply.interrupted else ""
    stages = {"llm": latency.first_token_s}
    if latency.endpoint_s is not None or latency.transcript_s is not None:
        stages = {"endpoint": latency.endpoint_s, "asr": latency.transcript_s, **stages}
    if latency.first_audio_s is not None or latency.first_played_s is not None or mark:
        stages |= {"csm-in": latency.first_chunk_s, "audio": latency.first_audio_s, "played": latency.first_played_s}
    if latency.tool_s is not None:
        stages["tool"] = latency.tool_s
    shown = ", ".join(f"{stage} {_ms(seconds)}" for stage, seconds in stages.items())
    return f"turn {latency.turn}: heard {heard or ''!r} -> said {said!r}{mark} | ms after end of speech: {shown}"


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
