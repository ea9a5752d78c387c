"""Choosing a code from logits: greedy, or top-k with temperature, never a codec-special id."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TopKSampler:
    """Callable `logits [1, vocab] -> code [1]`; ids >= `bins` (the codec's special ids) are never chosen.

    A `temperature` <= 0 is greedy. Sampling uses the exponential race (argmax of p / Exp(1), the Gumbel-max
    trick in another form), which draws exactly from `p` with no host sync and no data-dependent shape. The race's
    noise for a whole frame is drawn in one op by `race` from `generator`, so a seed reproduces the output and what
    runs per code is free of random state (which lets the per-frame work be compiled). `temperature` may be a 0-dim
    device tensor, which a captured CUDA graph reads at each replay.
    """

    temperature: float | torch.Tensor
    topk: int
    bins: int
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.topk < 1:
            raise ValueError(f"topk must be at least 1, got {self.topk}")
        self.topk = min(self.topk, self.bins)

    @property
    def greedy(self) -> bool:
        return not isinstance(self.temperature, torch.Tensor) and self.temperature <= 0

    def race(self, codes: int, device: torch.device) -> torch.Tensor | None:
        """Exp(1) noise `[codes, topk]` for one frame's codes, None when greedy."""
        if self.greedy:
            return None
        return torch.empty(codes, self.topk, device=device).exponential_(1, generator=self.generator)

    def __call__(self, logits: torch.Tensor, race: torch.Tensor | None) -> torch.Tensor:
        """One code from `logits [1, vocab]`, using its row of the frame's `race` noise `[topk]`."""
        logits = logits[..., : self.bins]
        if race is None:
            return logits.argmax(-1)
        values, indices = torch.topk(logits.float(), self.topk)
        probs = torch.softmax(values / self.temperature, dim=-1)
        return indices.gather(-1, (probs / race).argmax(-1, keepdim=True)).squeeze(-1)
