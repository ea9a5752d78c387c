"""What goes over MQTT: the topics, events as JSON, and commands parsed and validated from payloads.

Topics live under `{topic_prefix}/{site_id}/`: `status` (retained "online"/"offline"),
`event/<name>` (JSON, see EVENT_TOPICS) and `command/<name>` (JSON, see COMMANDS); a host's tools use `tool/...`
(`assistant.mqtt.tools`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from assistant.events import (
    BargeInPaused,
    BargeInResumed,
    ConversationReset,
    ErrorEvent,
    Event,
    Interrupted,
    MuteChanged,
    ReplyText,
    StateChanged,
    ToolCalled,
    ToolResult,
    TurnLatency,
    TurnTakenBack,
    UserTranscript,
    WakeDetected,
)

EVENT_TOPICS: dict[type[Event], str] = {
    StateChanged: "state",
    UserTranscript: "transcript",
    ReplyText: "reply",
    TurnLatency: "latency",
    Interrupted: "interrupted",
    BargeInPaused: "paused",
    BargeInResumed: "resumed",
    TurnTakenBack: "taken_back",
    MuteChanged: "muted",
    ConversationReset: "reset",
    WakeDetected: "wake",
    ToolCalled: "tool",  # phase "called", then phase "result" with the status
    ToolResult: "tool",
    ErrorEvent: "error",  # CommandRejected too: it is an ErrorEvent that names the command
}


class CommandError(ValueError):
    """A command payload that is not carried out; the message says why, for the error event."""


class _NoArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Text(_NoArguments):
    text: str = Field(min_length=1)

    @field_validator("text")
    @classmethod
    def _words(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain some words")
        return value


class _Interrupt(_NoArguments):
    all: bool = False  # also drop every turn queued


class _Listen(_NoArguments):
    release: bool = False  # push-to-talk: the button went up, the turn ends now


COMMANDS: dict[str, type[_NoArguments]] = {
    "interrupt": _Interrupt,
    "listen": _Listen,
    "say": _Text,
    "ask": _Text,
    "mute": _NoArguments,
    "unmute": _NoArguments,
    "reset": _NoArguments,
}


@dataclass(frozen=True)
class Command:
    name: str
    text: str | None = None
    all: bool = False  # interrupt: every queued turn too
    release: bool = False  # listen: the push-to-talk button went up


@dataclass(frozen=True)
class Topics:
    base: str  # "{topic_prefix}/{site_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def commands(self) -> str:
        """The subscription that receives every command, and anything deeper (answered as unknown commands)."""
        return f"{self.base}/command/#"

    @property
    def tool_manifest(self) -> str:
        return f"{self.base}/tool/manifest"

    @property
    def tool_result(self) -> str:
        return f"{self.base}/tool/result"

    def event(self, name: str) -> str:
        return f"{self.base}/event/{name}"

    def command_name(self, topic: str) -> str:
        return topic.removeprefix(f"{self.base}/command/")


def event_message(event: Event) -> tuple[str, bytes] | None:
    """The event's topic name and JSON payload; None for events that are not published."""
    name = next((EVENT_TOPICS[t] for t in type(event).__mro__ if t in EVENT_TOPICS), None)
    if name is None:
        return None
    fields = {k: v for k, v in dataclasses.asdict(event).items() if k != "at"}
    fields["time"] = round(time.time() - (time.monotonic() - event.at), 3)  # `at` is monotonic: make it wall-clock
    return name, json.dumps(fields, ensure_ascii=False).encode()


def utf8(payload: bytes) -> str:
    """A payload's text; ValueError naming the first byte that is not UTF-8 (json.loads(bytes) would take UTF-16 and
    UTF-32 too, and say so in codec terms)."""
    try:
        return payload.decode()
    except UnicodeDecodeError as error:
        raise ValueError(f"payload is not UTF-8 (byte {error.start} is 0x{payload[error.start]:02x})") from None


def parse_command(name: str, payload: bytes, max_bytes: int) -> Command:
    """Validate a command; raises CommandError with a reason a sender can act on.

    Commands without arguments take `{}` or an empty payload; `say` and `ask` take `{"text": "..."}`; `interrupt` may
    take `{"all": true}`.
    """
    model = COMMANDS.get(name)
    if model is None:
        raise CommandError(f"unknown command {name[:64]!r}; the commands are {', '.join(COMMANDS)}")
    if len(payload) > max_bytes:
        raise CommandError(f"payload of {len(payload)} bytes is over the limit of {max_bytes}")
    try:
        text = utf8(payload) or "{}"
    except ValueError as error:
        raise CommandError(str(error)) from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise CommandError(f"payload is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise CommandError(f"payload must be a JSON object, not {type(data).__name__}")
    try:
        parsed = model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "payload"
        message = "unexpected field" if first["type"] == "extra_forbidden" else first["msg"]
        raise CommandError(f"{where}: {message.removeprefix('Value error, ')}") from None
    return Command(
        name, getattr(parsed, "text", None), getattr(parsed, "all", False), getattr(parsed, "release", False)
    )
