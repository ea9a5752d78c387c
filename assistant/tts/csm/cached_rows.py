"""Which prompt rows the backbone's KV cache holds, so that a new prompt prefills only what it does not share.

A conversation's prompts grow at the end: the next sentence of a reply re-reads the one before it, the next turn
re-reads the whole exchange. Positions keep their keys and values until they are written again, so rows that
equal the cache's, from the first position on, need not run again. When the budget drops the oldest segments
the prompts differ from the first row, and everything is prefilled anew.
"""

from __future__ import annotations

import torch

from .prompt import audio_rows


class CachedRows:
    """The rows `[n, K+1]` (tokens and mask) whose keys and values fill the cache's first n positions."""

    def __init__(self, width: int):
        self._tokens = torch.zeros(0, width, dtype=torch.long)
        self._mask = torch.zeros(0, width, dtype=torch.bool)
        self._frames: list[torch.Tensor] = []  # fed back after the rows, one `[K]` each: made rows at the next prompt

    def clear(self) -> None:
        """Nothing in the cache can be trusted (it was written by something other than these rows)."""
        self.hold(self._tokens[:0], self._mask[:0])

    def hold(self, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """A prompt's rows were just prefilled at positions 0.. ."""
        self._tokens, self._mask, self._frames = tokens, mask, []

    def append(self, codes: torch.Tensor) -> None:
        """A generated frame `[K]` was fed back at the next position."""
        self._frames.append(codes)

    def shared(self, tokens: torch.Tensor, mask: torch.Tensor) -> int:
        """How many of a prompt's first rows the cache already holds. The prompt's last row is never counted:
        its hidden state, which the cache does not keep, is what generation starts from."""
        held_tokens, held_mask = self._rows()
        n = min(held_tokens.shape[0], tokens.shape[0] - 1)
        if n <= 0:
            return 0
        differs = ((held_tokens[:n] != tokens[:n]) | (held_mask[:n] != mask[:n])).any(dim=1).nonzero()
        return int(differs[0]) if len(differs) else n

    def _rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._frames:
            frames, mask = audio_rows(torch.stack(self._frames, dim=1).cpu())  # ends with the end frame: not held
            self.hold(torch.cat([self._tokens, frames[:-1]]), torch.cat([self._mask, mask[:-1]]))
        return self._tokens, self._mask
