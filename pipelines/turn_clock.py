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

    def mark(self, stage: Stage) -> None:
        """Record the first time a stage is reached; later calls for it change nothing."""
        self.stages.setdefault(stage, time.monotonic() - self.origin)

    def latency(self, turn: int) -> TurnLatency:
        return TurnLatency(turn=turn, **{f"{stage}_s": seconds for stage, seconds in self.stages.items()})
