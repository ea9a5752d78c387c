"""One utterance of the conversation, as the speech engine and the conversation memory share it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Segment:
    """`speaker` said `text`; `audio` is mono float32 at `sample_rate` (24 kHz unless stated).

    `codes` are Mimi codes `[num_codebooks, frames]`: when the assistant itself spoke, they are the
    codes it generated, so its turns never need re-encoding.
    """

    speaker: int
    text: str
    audio: np.ndarray | None = None
    codes: torch.Tensor | None = None
    sample_rate: int = 24_000
