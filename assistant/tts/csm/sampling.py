"""Choosing a code from logits: greedy, or top-k with temperature, never a codec-special id."""

from __future__ import annotations

import torch


class TopKSampler:
    """Callable `logits [vocab] -> code [1]`; ids >= `bins` (the codec's special ids) are never chosen.

    `temperature <= 0` is greedy. Sampling uses the exponential race (argmax of p / Exp(1)), which draws
    exactly from `p` without a host sync, from `generator` so a seed reproduces the output.
    """

    def __init__(self, temperature: float, topk: int, bins: int, generator: torch.Generator | None = None):
        if topk < 1:
            raise ValueError(f"topk must be at least 1, got {topk}")
        self.temperature = temperature
        self.topk = min(topk, bins)
        self.bins = bins
        self.generator = generator

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits[..., : self.bins]
        if self.temperature <= 0:
            return logits.argmax(-1, keepdim=True)
        values, indices = torch.topk(logits.float() / self.temperature, self.topk)
        probs = torch.softmax(values, dim=-1)
        race = torch.empty_like(probs).exponential_(1, generator=self.generator)
        return indices.gather(-1, (probs / race).argmax(-1, keepdim=True))
