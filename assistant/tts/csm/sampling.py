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
        return race_pick(values, indices, self.temperature, race)


def race_pick(
    values: torch.Tensor, indices: torch.Tensor, temperature: float | torch.Tensor, race: torch.Tensor
) -> torch.Tensor:
    """The winner of the exponential race among the top-k `values` and their `indices` `[..., k]`."""
    probs = torch.softmax(values / temperature, dim=-1)
    return indices.gather(-1, (probs / race).argmax(-1, keepdim=True)).squeeze(-1)


class RowSampling:
    """Each row of a batch sampled by its own `TopKSampler`, in one set of ops: `__call__(logits [n, vocab], i)`
    gives code i of each row's frame.

    A row's settings live in device tensors (what a CUDA graph captured over the batch reads at each replay):
    its temperature, which of the `topk_cap` best logits it may choose (its own top-k), whether it is greedy, and
    its race noise for the frame, drawn by `draw` from the row's own generator exactly as its sampler draws alone,
    so that a seeded row picks the codes it would pick unbatched.
    """

    def __init__(self, rows: int, num_codebooks: int, topk_cap: int, bins: int, device: torch.device):
        self.topk_cap, self.bins, self.num_codebooks = min(topk_cap, bins), bins, num_codebooks
        self.temperature = torch.ones(rows, 1, device=device)
        self.allowed = torch.ones(rows, self.topk_cap, dtype=torch.bool, device=device)
        self.greedy = torch.zeros(rows, dtype=torch.bool, device=device)
        self.race = torch.ones(rows, num_codebooks, self.topk_cap, device=device)
        self._ranks = torch.arange(self.topk_cap, device=device)

    def set_row(self, row: int, sampler: TopKSampler) -> None:
        """Sample row `row` as `sampler` would (ValueError when its top-k is beyond the cap)."""
        if sampler.topk > self.topk_cap:
            raise ValueError(f"topk {sampler.topk} is above this engine's limit of {self.topk_cap}")
        self.greedy[row] = sampler.greedy
        self.temperature[row] = 1.0 if sampler.greedy else sampler.temperature
        torch.lt(self._ranks, sampler.topk, out=self.allowed[row])

    def draw(self, row: int, sampler: TopKSampler) -> None:
        """The race noise of row `row` for its next frame (nothing for a greedy row)."""
        race = sampler.race(self.num_codebooks, self.race.device)
        if race is not None:
            self.race[row, :, : sampler.topk] = race

    def __call__(self, logits: torch.Tensor, code: int) -> torch.Tensor:
        n = logits.shape[0]
        logits = logits[:, : self.bins]
        values, indices = torch.topk(logits.float(), self.topk_cap)
        values = values.masked_fill(~self.allowed[:n], float("-inf"))
        picked = race_pick(values, indices, self.temperature[:n], self.race[:n, code])
        return torch.where(self.greedy[:n], logits.argmax(-1), picked)
