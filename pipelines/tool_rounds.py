"""The model's answer to one turn, over as many rounds of tool calls as it takes.

Each round streams the model's reply: its text goes out to be spoken as it comes; the tool calls it asks for run
once the round's stream ends, side by side, and their results go back to the model for the next round. After
`tools.max_rounds` rounds the model is asked once more without tools, so it must answer in words.

Speech around the calls: the text before a call is said at once (a `Flush`), and when nothing was said yet a
filler ("One moment.") is prepared as the calls start and heard if they are still running `tools.filler_ms` later.

What happened is kept for the conversation whatever way the reply ends: a call that completed keeps its result even
when the user interrupts (so the model never runs it twice), and a call still running is cancelled and recorded as
cancelled, so the history never holds a call without its result. No tool runs before `permission` (the floor's:
a turn that may still be taken back does not act yet); a speculative reply's stream (`first`) only asks for calls.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from assistant.config import ToolsConfig
from assistant.conversation import ToolRound
from assistant.events import EventBus, ToolCalled, ToolResult
from assistant.llm.backend import ChatBackend, Message, ToolCall
from assistant.tools.calls import ToolOutcome, run_call
from assistant.tools.registry import ToolRegistry
from pipelines.reply import Filler, Flush, Spoken
from pipelines.turn_clock import TurnClock

log = logging.getLogger(__name__)

LlmStream = Callable[[asyncio.Event], AsyncIterator[str | ToolCall]]
"""A model's reply stream already started (a pause's speculation): it must stop once the event is set."""


async def _granted() -> None:
    return None


@dataclass
class _Round:
    flush: Flush
    calls: list[ToolCall]
    outcomes: dict[str, ToolOutcome] = field(default_factory=dict)


class ToolRounds:
    """`deltas` is the reply's text stream (for `Reply`); after the reply, `rounds(spoken)` is what to remember."""

    def __init__(
        self,
        turn: int,
        backend: ChatBackend,
        messages: list[Message],
        registry: ToolRegistry,
        config: ToolsConfig,
        bus: EventBus,
        clock: TurnClock,
        *,
        first: LlmStream | None = None,
        permission: Callable[[], Awaitable[None]] = _granted,
        finished: Callable[[], object] = lambda: None,
    ) -> None:
        self.turn = turn
        self._backend = backend
        self._messages = list(messages)
        self._registry = registry
        self._config = config
        self._bus = bus
        self._clock = clock
        self._first = first
        self._permission = permission  # each round's calls wait for it
        self._finished = finished  # told when a round's calls are over
        self._rounds: list[_Round] = []
        self._said = False  # words went out in this reply (a filler is only for a silent wait)

    async def deltas(self, cancel: asyncio.Event) -> AsyncIterator[str | Flush | Filler]:
        for number in itertools.count():
            offered = self._registry.specs() if number < self._config.max_rounds else []
            if self._first is not None:
                stream, self._first = self._first(cancel), None
            else:
                stream = self._backend.stream(self._messages, cancel, offered)
            text: list[str] = []
            calls: list[ToolCall] = []
            async for item in stream:
                if isinstance(item, ToolCall):
                    calls.append(item)
                else:
                    text.append(item)
                    self._said |= bool(item.strip())
                    yield item
            if not calls or cancel.is_set():
                return
            if not offered:  # past max_rounds (or a speculation started before tools came and went)
                log.warning("turn %d: the model asked for tools after %d rounds; not called", self.turn, number)
                return
            round_ = _Round(Flush(), calls)
            yield round_.flush  # what it said before the calls is heard now
            await self._permission()
            self._rounds.append(round_)
            filler = self._filler()
            if filler is not None:
                yield filler
            await self._run(round_, filler)
            self._messages += ToolRound("".join(text), tuple(round_.outcomes[c.id] for c in calls)).messages()

    def rounds(self, spoken: Spoken) -> tuple[ToolRound, ...]:
        """The rounds as the conversation keeps them: each with the words of it the user heard before its calls.
        What was heard after the last round is `spoken.pieces[self.closing_from(spoken):]`."""
        kept, start = [], 0
        for round_ in self._rounds:
            end = self._end(round_, spoken)
            calls = tuple(round_.outcomes.get(c.id) or ToolOutcome.cancelled(c) for c in round_.calls)
            kept.append(ToolRound(" ".join(spoken.pieces[start:end]), calls))
            start = end
        return tuple(kept)

    def closing(self, spoken: Spoken) -> str:
        """What the user heard after the last round of calls (all of it when there was none)."""
        start = self._end(self._rounds[-1], spoken) if self._rounds else 0
        return " ".join(spoken.pieces[start:])

    @staticmethod
    def _end(round_: _Round, spoken: Spoken) -> int:
        at = round_.flush.at
        return len(spoken.pieces) if at is None else min(at, len(spoken.pieces))

    def _filler(self) -> Filler | None:
        if not self._config.filler or self._said:
            return None
        return Filler(self._config.filler, asyncio.get_running_loop().create_future())

    async def _run(self, round_: _Round, filler: Filler | None) -> None:
        """The round's calls side by side; on cancel (an interrupt), those still running are cancelled."""
        started = time.monotonic()
        tasks = [asyncio.create_task(self._call(call, round_)) for call in round_.calls]
        try:
            if filler is not None:
                _, running = await asyncio.wait(tasks, timeout=self._config.filler_ms / 1000)
                filler.release.set_result(bool(running))
                self._said |= bool(running)
            await asyncio.wait(tasks)
        finally:
            if filler is not None and not filler.release.done():
                filler.release.set_result(False)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)  # each records itself as cancelled
            self._clock.waited_on_tools(time.monotonic() - started)
            self._finished()

    async def _call(self, call: ToolCall, round_: _Round) -> None:
        self._bus.publish(ToolCalled(turn=self.turn, call_id=call.id, name=call.name, arguments=call.arguments))
        started = time.monotonic()
        try:
            outcome = await run_call(self._registry, call, self._config.timeout_s, self._config.max_result_chars)
        except asyncio.CancelledError:
            outcome = ToolOutcome.cancelled(call, time.monotonic() - started)
        round_.outcomes[call.id] = outcome
        log.info("turn %d: tool %s %s in %.2f s", self.turn, call.name, outcome.status, outcome.duration_s)
        self._bus.publish(
            ToolResult(
                turn=self.turn,
                call_id=call.id,
                name=call.name,
                status=outcome.status,
                duration_s=round(outcome.duration_s, 3),
                result=outcome.content,
            )
        )
