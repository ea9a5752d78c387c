"""When each stage of one turn first happened, counted from the end of the user's speech."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from assistant.events import TurnLatency

Stage = Literal["endpoint", "transcript", "first_token", "first_chunk", "first_audio", "first_played"]


@dataclass
class TurnClock:
    """`origin` is time.monotonic() at the end of the user's speech (the last voiced frame, or a typed line).

    The turn's `endpoint` is when it was judged over; with a pause's speculation, `transcript` may come before it.
    """

    origin: float = field(default_factory=time.monotonic)
    stages: dict[Stage, float] = field(default_factory=dict)
    tool_s: float | None = None  # seconds spent waiting on tool calls, all rounds together

    def waited_on_tools(self, seconds: float) -> None:
        self.tool_s = (self.tool_s or 0.0) + seconds

    def mark(self, stage: Stage) -> None:
        """Record the first time a stage is reached; later calls for it change nothing."""
        self.stages.setdefault(stage, time.monotonic() - self.origin)

    def latency(self, turn: int) -> TurnLatency:
        stages = {f"{stage}_s": seconds for stage, seconds in self.stages.items()}
        return TurnLatency(turn=turn, tool_s=self.tool_s, **stages)
