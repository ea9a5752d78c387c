"""The 2048-position window: how many frames an utterance may take, what context fits, where to split text."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

FRAME_MS = 80.0
_SENTENCE_END = re.compile(r"(?<=[.!?;:\u2026\u3002\uff01\uff1f])\s+")


@dataclass(frozen=True)
class Budget:
    """Length limits. Without an explicit limit an utterance may last `base_ms + ms_per_token * tokens`
    (a guard against CSM's never-ending audio), never more than `absolute_ms`."""

    max_seq_len: int = 2048
    base_ms: float = 2000.0
    ms_per_token: float = 400.0
    absolute_ms: float = 90_000.0

    def frames(self, text_positions: int, max_audio_ms: float | None = None) -> int:
        """Frames allowed for an utterance whose text takes `text_positions` rows."""
        ms = self.base_ms + self.ms_per_token * text_positions if max_audio_ms is None else max_audio_ms
        return max(1, int(min(ms, self.absolute_ms) // FRAME_MS))

    def fits(self, text_positions: int) -> bool:
        """Whether the text rows and their derived frame cap fit in the window at all."""
        return text_positions + self.frames(text_positions) <= self.max_seq_len


def split_sentences(text: str, positions: Callable[[str], int], fits: Callable[[int], bool]) -> list[str]:
    """Pack whole sentences, in order, into as few pieces as fit; a sentence that alone does not fit is an error."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text.strip()):
        if not fits(positions(sentence)):
            raise ValueError(
                f"a sentence of {positions(sentence)} text positions is too long to speak in the model's window; "
                f"split it into shorter sentences: {sentence[:60]!r}..."
            )
        if pieces and fits(positions(joined := f"{pieces[-1]} {sentence}")):
            pieces[-1] = joined
        else:
            pieces.append(sentence)
    return pieces or [text]
