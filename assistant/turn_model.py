"""An end-of-turn model that listens to the audio: Smart Turn v3 (pipecat-ai's, BSD-2), run with ONNX Runtime.

It reads the last 8 s of the user's turn as Whisper log-mel features and gives the probability that the turn is
complete. The weights ship inside the `pipecat-ai` wheel; `scripts/setup.sh` copies that one file into the
virtualenv's `share/csm-assistant/` (pipecat itself is not installed), so it works offline. Chosen with
`turn.detector: model`; see `assistant/turn_end.py` for the rules that read the words instead, and
docs/benchmarks.md for how each did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

RATE = 16_000
SECONDS = 8
SHIPPED = Path(sys.prefix) / "share" / "csm-assistant" / "smart-turn-v3.2-cpu.onnx"  # put there by scripts/setup.sh


class TurnModelError(RuntimeError):
    """The model file is missing or will not load."""


def shipped_model() -> Path | None:
    """The model file scripts/setup.sh placed in the virtualenv, if it is there."""
    return SHIPPED if SHIPPED.is_file() else None


class SmartTurn:
    """`complete(audio)`: the probability that a turn whose 16 kHz audio so far is `audio` has ended."""

    def __init__(self, path: str | Path | None = None):
        model = Path(path) if path is not None else shipped_model()
        if model is None or not model.is_file():
            where = f"no file at {model if model is not None else SHIPPED}"
            raise TurnModelError(f"the end-of-turn model is missing ({where}): run scripts/setup.sh, or set turn.model")
        try:
            import onnxruntime
            from transformers import WhisperFeatureExtractor
        except ImportError as error:
            raise TurnModelError(f"the end-of-turn model needs {error.name}: run scripts/setup.sh") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1  # a 30-100 ms call beside Whisper: one core is enough
        try:
            self._session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as error:
            raise TurnModelError(f"cannot load the end-of-turn model {model}: {error}") from None
        self._features = WhisperFeatureExtractor(chunk_length=SECONDS)

    def complete(self, audio: np.ndarray) -> float:
        samples = RATE * SECONDS
        audio = np.asarray(audio, np.float32)[-samples:]
        audio = np.pad(audio, (samples - len(audio), 0))  # the model was trained with silence before, not after
        features = self._features(
            audio,
            sampling_rate=RATE,
            return_tensors="np",
            padding="max_length",
            max_length=samples,
            truncation=True,
            do_normalize=True,
        ).input_features
        (probability,) = self._session.run(None, {"input_features": features.astype(np.float32)})
        return float(np.asarray(probability).reshape(-1)[0])
