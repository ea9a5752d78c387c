"""What a request is spoken from: its prompts, one per piece of text, each after the pieces spoken before it.

Shared by the one-at-a-time engine (`engine.py`) and the batched one (`batched_engine.py`), so that both build
the same prompts and stop at the same lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from assistant.segment import Segment

from .budget import FRAME_MS, Budget, split_sentences
from .codec import MimiCodec
from .prompt import TextEncoder, audio_rows, text_rows

REFERENCE_SHARE = 4
"""A reference voice may take at most 1/4 of the window (512 positions, ~40 s of audio, at csm-1b's 2048)."""


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    speaker: int
    context: Sequence[Segment]
    temperature: float
    topk: int
    seed: int | None
    max_audio_ms: float | None
    reference: Segment | None = None


@dataclass(frozen=True)
class Piece:
    """One prompt: the backbone's rows `[T, K+1]`, their mask, and the most frames its speech may take."""

    text: str
    tokens: torch.Tensor
    mask: torch.Tensor
    frames: int


class Prompts:
    """Builds prompts: the reference's rows, the newest context that fits, then the text (see `prompt`)."""

    def __init__(self, text: TextEncoder, codec: MimiCodec, budget: Budget, num_codebooks: int):
        self.text = text
        self.codec = codec
        self.budget = budget
        self.num_codebooks = num_codebooks

    def plan(self, request: SpeechRequest) -> SpeechPlan:
        return SpeechPlan(self, request)

    def room(self, ids: list[int], max_audio_ms: float | None) -> int:
        """Positions left for reference and context before `ids` and the frames they may take."""
        return self.budget.max_seq_len - len(ids) - self.budget.frames(len(ids), max_audio_ms)

    def prompt(
        self, reference: Segment | None, context: Sequence[Segment], ids: list[int], room: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's rows, the newest context segments that fit in what is left of `room` positions (oldest
        dropped first), then the text."""
        head = self.segment_rows(reference) if reference is not None else []
        parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        used = sum(rows.shape[0] for rows, _ in head)
        if used > room:
            raise ValueError(f"the voice takes {used} positions and this sentence leaves {room}: use a shorter clip")
        for segment in reversed(context):
            rows = self.segment_rows(segment)
            used += sum(r.shape[0] for r, _ in rows)
            if used > room:
                break
            parts = rows + parts
        parts = head + parts + [text_rows(ids, self.num_codebooks)]
        return torch.cat([t for t, _ in parts]), torch.cat([m for _, m in parts])

    def segment_rows(self, segment: Segment) -> list[tuple[torch.Tensor, torch.Tensor]]:
        k = self.num_codebooks
        rows = [text_rows(self.text.encode(segment.text, segment.speaker), k)]
        codes = segment.codes
        if codes is None and segment.audio is not None:
            codes = self.codec.encode(segment.audio, segment.sample_rate)
        if codes is not None:
            if codes.ndim != 2 or codes.shape[0] < k:
                raise ValueError(
                    f"a context segment's codes must be [>= {k} codebooks, frames], got {tuple(codes.shape)}"
                )
            rows.append(audio_rows(codes[:k]))
        return rows

    @property
    def reference_limit(self) -> int:
        """The most positions a reference voice may take (its transcript's tokens and its frames, each ended)."""
        return self.budget.max_seq_len // REFERENCE_SHARE

    def reference_positions(self, reference: Segment) -> int:
        """The positions `reference` takes in every prompt; ValueError beyond `reference_limit`, naming it."""
        rows = [r.shape[0] for r, _ in self.segment_rows(reference)]
        if sum(rows) > self.reference_limit:
            text, audio = rows[0], sum(rows[1:])
            raise ValueError(
                f"the voice takes {sum(rows)} of the model's {self.budget.max_seq_len} positions ({text} for its "
                f"transcript, {audio} for {(audio - 1) * FRAME_MS / 1000:.1f} s of audio); it may take "
                f"{self.reference_limit} (a {REFERENCE_SHARE}th of the window), so with this transcript at most "
                f"{max(self.reference_limit - text - 1, 0) * FRAME_MS / 1000:.1f} s of audio: use a shorter clip "
                f"(5-15 s is best)"
            )
        return sum(rows)


@dataclass
class SpeechPlan:
    """A request's pieces in order: its text whole when it fits the window, else its sentences packed into pieces
    that do. Each piece is prompted after the pieces spoken before it, and all of them share the request's cap on
    audio. `next()` gives the next prompt (None when done); `spoke(frames)` tells what the last one produced."""

    prompts: Prompts
    request: SpeechRequest
    context: list[Segment] = field(init=False)
    pieces: list[str] = field(init=False)
    remaining: int = field(init=False)

    def __post_init__(self) -> None:
        budget, request = self.prompts.budget, self.request
        count = lambda piece: len(self.prompts.text.encode(piece, request.speaker))  # noqa: E731
        text = request.text
        self.pieces = [text] if budget.fits(count(text)) else split_sentences(text, count, budget.fits)
        self.context = list(request.context)
        self.remaining = budget.frames(0, request.max_audio_ms or budget.absolute_ms)

    def next(self) -> Piece | None:
        if not self.pieces or self.remaining <= 0:
            return None
        budget, request, text = self.prompts.budget, self.request, self.pieces[0]
        ids = self.prompts.text.encode(text, request.speaker)
        frames = min(self.remaining, budget.frames(len(ids), request.max_audio_ms), budget.max_seq_len - len(ids))
        tokens, mask = self.prompts.prompt(request.reference, self.context, ids, budget.max_seq_len - len(ids) - frames)
        return Piece(text, tokens, mask, frames)

    def spoke(self, frames: list[torch.Tensor]) -> None:
        """The frames `[K]` (on the CPU) the piece `next()` gave was spoken as; it joins the context of the next."""
        text = self.pieces.pop(0)
        self.remaining -= len(frames)
        codes = torch.stack(frames, dim=1) if frames else torch.zeros(self.prompts.num_codebooks, 0, dtype=torch.long)
        self.context.append(Segment(self.request.speaker, text, codes=codes))
