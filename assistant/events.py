"""Typed events and the in-process async bus they flow on.

Components publish; listeners (terminal log, MQTT bridge, metrics, tests) subscribe. Publishing
never blocks: each subscriber has its own queue, and a subscriber that falls too far behind loses
its oldest events rather than stalling the voice loop. Worker threads publish through
`publish_threadsafe`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

log = logging.getLogger(__name__)

State = Literal["idle", "waiting", "listening", "thinking", "speaking"]  # waiting: for the wake word

_ids = itertools.count(1)


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every event; `at` is time.monotonic() when it was created."""

    at: float = field(default_factory=time.monotonic)

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(frozen=True, kw_only=True)
class StateChanged(Event):
    state: State


@dataclass(frozen=True, kw_only=True)
class SpeechStarted(Event):
    """The VAD heard the user start speaking."""


@dataclass(frozen=True, kw_only=True)
class UtteranceEnded(Event):
    """The VAD closed a user turn; `duration_s` is the speech kept."""

    duration_s: float


@dataclass(frozen=True, kw_only=True)
class UserTranscript(Event):
    text: str
    turn: int


@dataclass(frozen=True, kw_only=True)
class ReplyText(Event):
    """Text the assistant is speaking (one chunk) or spoke (final=True, the whole reply)."""

    text: str
    turn: int
    final: bool = False
    interrupted: bool = False


@dataclass(frozen=True, kw_only=True)
class Interrupted(Event):
    source: str
    turn: int | None = None


@dataclass(frozen=True, kw_only=True)
class BargeInPaused(Event):
    """Speech came over the reply: playback paused (the LLM and CSM go on) until its words are known."""

    turn: int


@dataclass(frozen=True, kw_only=True)
class BargeInResumed(Event):
    """The speech over the reply brought no words within `barge_in.resume_ms`: playback goes on where it paused."""

    turn: int


@dataclass(frozen=True, kw_only=True)
class TurnTakenBack(Event):
    """The user went on speaking before hearing the reply to `turn`: that turn is withdrawn (its transcript and reply
    text are void, nothing of it is remembered) and its words start the turn now in progress."""

    turn: int


@dataclass(frozen=True, kw_only=True)
class TurnLatency(Event):
    """Seconds from the end of the user's speech (its last voiced frame) to each stage of the reply (None: stage not
    reached). `endpoint_s` is the silence the turn was given before it was judged over (None for typed turns); with a
    pause's speculation the transcript can be in before that."""

    turn: int
    endpoint_s: float | None = None
    transcript_s: float | None = None
    first_token_s: float | None = None
    first_chunk_s: float | None = None
    first_audio_s: float | None = None
    first_played_s: float | None = None
    tool_s: float | None = None  # the time the reply waited on tool calls, in all (None: it called none)


@dataclass(frozen=True, kw_only=True)
class ToolCalled(Event):
    """The model called a tool and the call began; `arguments` is the JSON text it wrote."""

    turn: int
    call_id: str
    name: str
    arguments: str
    phase: Literal["called"] = "called"


@dataclass(frozen=True, kw_only=True)
class ToolResult(Event):
    """A call ended: `ok`, `error` (the model reads why in `result`) or `cancelled` (the user interrupted)."""

    turn: int
    call_id: str
    name: str
    status: Literal["ok", "error", "cancelled"]
    duration_s: float
    result: str
    phase: Literal["result"] = "result"


@dataclass(frozen=True, kw_only=True)
class ErrorEvent(Event):
    source: str
    message: str
    recoverable: bool = True


@dataclass(frozen=True, kw_only=True)
class CommandRejected(ErrorEvent):
    """A remote command that was not carried out (malformed, oversized, unknown); nothing changed."""

    command: str


@dataclass(frozen=True, kw_only=True)
class MuteChanged(Event):
    """The microphone was muted (nothing said is heard or becomes a turn) or unmuted."""

    muted: bool


@dataclass(frozen=True, kw_only=True)
class ConversationReset(Event):
    """The conversation history was cleared: the next turn starts a new conversation. `reason`: asked for
    (`command`), or nobody spoke for `conversation.idle_reset_s` (`idle`)."""

    reason: Literal["command", "idle"] = "command"


@dataclass(frozen=True, kw_only=True)
class WakeDetected(Event):
    """The wake word was heard (`model`, with the detector's `score`): the assistant listens."""

    model: str
    score: float


def next_turn_id() -> int:
    """A process-wide increasing turn number."""
    return next(_ids)


class Subscription:
    """One subscriber's queue; iterate it with `async for`, or `await get()`."""

    def __init__(self, bus: EventBus, types: tuple[type[Event], ...], maxsize: int) -> None:
        self._bus = bus
        self.types = types
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def accepts(self, event: Event) -> bool:
        return not self.types or isinstance(event, self.types)

    def offer(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._bus.unsubscribe(self)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self.queue.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Fan-out of events to subscribers, on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._subscriptions: list[Subscription] = []

    def subscribe(self, *types: type[Event], maxsize: int = 1000) -> Subscription:
        """Receive events of the given types (all events when none given), from now on."""
        self._loop = self._loop or asyncio.get_running_loop()
        sub = Subscription(self, types, maxsize)
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def publish(self, event: Event) -> None:
        """Deliver to every matching subscriber; call on the bus's loop."""
        log.debug("event %s", event)
        for sub in list(self._subscriptions):
            if sub.accepts(event):
                sub.offer(event)

    def publish_threadsafe(self, event: Event) -> None:
        """Deliver from a worker thread (a no-op before any subscriber bound the bus to a loop)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.publish, event)
