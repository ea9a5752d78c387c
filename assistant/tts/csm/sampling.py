"""Choosing a code from logits: greedy, or top-k with temperature, never a codec-special id."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TopKSampler:
    """Callable `logits [1, vocab] -> code [1]`; ids >= `bins` (the codec's special ids) are never chosen.

    A `temperature` <= 0 is greedy. Sampling uses the exponential race (argmax of p / Exp(1)), which draws
    exactly from `p` with no host sync and no data-dependent shape, from `generator` so a seed reproduces the
    output. `temperature` may be a 0-dim device tensor, which a captured CUDA graph reads at each replay.
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

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[..., : self.bins]
        if self.greedy:
            return logits.argmax(-1)
        values, indices = torch.topk(logits.float(), self.topk)
        probs = torch.softmax(values / self.temperature, dim=-1)
        race = torch.empty_like(probs).exponential_(1, generator=self.generator)
        return indices.gather(-1, (probs / race).argmax(-1, keepdim=True)).squeeze(-1)
