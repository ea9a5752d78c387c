"""Mimi through moshi: encode context audio, decode generated frames with moshi's streaming state."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from assistant.audio.resample import resample

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920  # one 80 ms Mimi frame


def load_mimi(mimi: Any, num_codebooks: int, device: torch.device | str) -> Any:
    """A moshi Mimi module as is, or loaded from a weights path (None: moshi's default hub repo)."""
    from moshi.models import loaders

    if mimi is None or isinstance(mimi, (str, Path)):
        if mimi is None:
            from huggingface_hub import hf_hub_download

            from .weights import CheckpointError

            try:
                mimi = hf_hub_download(loaders.DEFAULT_REPO, loaders.MIMI_NAME)
            except Exception as e:  # offline, gated or missing: say what to do
                raise CheckpointError(
                    f"cannot fetch Mimi from {loaders.DEFAULT_REPO} ({type(e).__name__}: {e}); connect once, "
                    f"or pass mimi= a local weights file or a moshi Mimi module"
                ) from e
        mimi = loaders.get_mimi(str(mimi), device=device)
    mimi.set_num_codebooks(num_codebooks)
    return mimi.eval()


class MimiCodec:
    """Encode 24 kHz audio to codes `[K, frames]`; decode frames one at a time as they are generated."""

    def __init__(self, mimi: Any):
        self.mimi = mimi
        self.device = next(mimi.parameters()).device
        # A second module tree over the same weights stays in streaming mode for good: entering moshi's
        # streaming mode allocates its states (tens to hundreds of ms), resetting them takes a few ms, and
        # one-shot encode/decode on `mimi` itself must not see streaming state.
        shared = {id(t): t for t in (*mimi.parameters(), *mimi.buffers())}
        self._streaming = copy.deepcopy(mimi, memo=shared)
        with torch.inference_mode():
            self._streaming.streaming_forever(1)

    @torch.inference_mode()
    def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Codes `[K, frames]` (on the CPU) of mono audio at any sample rate."""
        audio = resample(np.asarray(audio, np.float32).reshape(-1), sample_rate, SAMPLE_RATE)
        pcm = torch.from_numpy(np.ascontiguousarray(audio)).to(self.device)[None, None]
        return self.mimi.encode(pcm)[0].cpu()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """One-shot decode of codes `[K, frames]` to float32 audio."""
        if codes.shape[-1] == 0:
            return np.zeros(0, np.float32)
        return self.mimi.decode(codes.to(self.device)[None])[0, 0].float().cpu().numpy()

    @contextmanager
    def stream(self) -> Iterator[Any]:
        """Within this context, `decode_frame(codes [K])` turns each frame into 1920 samples at once.

        One stream at a time (the engine's lock sees to that); each starts from a fresh decoder state.
        """
        with torch.inference_mode():
            self._streaming.reset_streaming()
            yield self._decode_frame

    def _decode_frame(self, codes: torch.Tensor) -> np.ndarray:
        # Always one frame per call: on CUDA moshi graphs its streaming calls, which needs a fixed shape.
        return self._streaming.decode(codes.to(self.device).view(1, -1, 1))[0, 0].float().cpu().numpy()
