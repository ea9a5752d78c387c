"""Text tokens and Mimi codes as the 33-column rows (K audio codes + 1 text token) the backbone reads."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer

BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"
BOS_ID, EOS_ID = 128_000, 128_001


class TextEncoder:
    """Sesame's text format: `[{speaker}]{text}` between exactly one bos and one eos."""

    def __init__(self, tokenizer: Tokenizer | str | Path):
        if not isinstance(tokenizer, Tokenizer):
            path = Path(tokenizer)
            if not path.is_file():
                raise FileNotFoundError(
                    f"no tokenizer.json at {path}: pass tokenizer= (a path or tokenizers.Tokenizer)"
                )
            tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer = tokenizer
        bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
        self.bos = BOS_ID if bos is None else bos
        self.eos = EOS_ID if eos is None else eos
        # Every sentence's prompt re-reads the conversation so far: its segments are tokenized once.
        self._ids = functools.lru_cache(maxsize=1024)(self._tokenize)

    def encode(self, text: str, speaker: int) -> list[int]:
        return list(self._ids(text, speaker))

    def _tokenize(self, text: str, speaker: int) -> tuple[int, ...]:
        # The tokenizer's own post-processor may or may not add bos/eos: add them here, exactly once.
        ids = self.tokenizer.encode(f"[{speaker}]{text}", add_special_tokens=False).ids
        return (self.bos, *ids, self.eos)


def text_rows(ids: list[int], num_codebooks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `[n, K+1]` and their mask for text tokens (text column only)."""
    tokens = torch.zeros(len(ids), num_codebooks + 1, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    tokens[:, -1] = torch.tensor(ids, dtype=torch.long)
    mask[:, -1] = True
    return tokens, mask


def audio_rows(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows `[frames + 1, K+1]` and their mask for codes `[K, frames]`, ended by the all-zero frame."""
    k, frames = codes.shape
    tokens = torch.zeros(frames + 1, k + 1, dtype=torch.long)
    tokens[:frames, :k] = codes.T.to("cpu", torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, :k] = True
    return tokens, mask
