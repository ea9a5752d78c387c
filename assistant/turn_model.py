"""An end-of-turn model that listens to the audio: Smart Turn v3 (pipecat-ai's, BSD-2), run with ONNX Runtime.

It reads the last 8 s of the user's turn, up to where its speech ends by level (`speech_end`) and with the pauses
inside it closed up to `PAUSE_KEPT_MS` (`closed_up`), as Whisper log-mel features and gives the probability that
the turn is complete. Both matter on real speech (docs/benchmarks.md, "End of turn on real speech"): Smart Turn
calls a turn complete the more readily the more silence follows it, and in a noisy room the VAD hears the noise
after the words as speech for a while, so its utterances carry that noise (the cut halves the cut-off turns it
ends); and a pause inside a turn makes it doubt the turn's real end (closing it up ends 58 % of such turns soon
instead of 41 %, and cuts off no more).

The weights ship inside the `pipecat-ai` wheel; `scripts/setup.sh` copies that one file into the virtualenv's
`share/csm-assistant/` (pipecat itself is not installed), so it works offline. Used by `turn.detector: model` and
`both`; see `assistant/turn_end.py` for the rules that read the words.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

RATE = 16_000
SECONDS = 8
PAUSE_KEPT_MS = 200  # of a longer pause inside the turn, for the model
FRAME = RATE // 100  # 10 ms frames for the levels
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

    def complete(self, audio: np.ndarray, *, cut: bool = True) -> float:
        """`cut`: score the audio up to where its speech ends (`speech_end`), not the VAD's trailing frames, with its
        pauses closed up (`closed_up`)."""
        samples = RATE * SECONDS
        audio = np.asarray(audio, np.float32)
        if cut:
            audio = closed_up(audio[: speech_end(audio)])
        audio = audio[-samples:]
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


def _loud(audio: np.ndarray) -> np.ndarray | None:
    """Which 10 ms frames of `audio` are speech by their level: within 35 dB of its loud frames and 10 dB over its
    quiet ones (digital silence, such as padding, is not counted among them); None when nothing is audible."""
    frames = np.asarray(audio[: len(audio) // FRAME * FRAME], np.float64).reshape(-1, FRAME)
    levels = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    audible = levels[levels > -100]
    if not len(audible):
        return None
    threshold = max(float(np.percentile(audible, 95)) - 35, float(np.percentile(audible, 10)) + 10)
    return levels > threshold


def speech_end(audio: np.ndarray) -> int:
    """Where the speech in `audio` ends by its level: after its last loud 10 ms frame (`_loud`)."""
    loud = _loud(audio)
    frames = np.flatnonzero(loud) if loud is not None else np.zeros(0, int)
    return (int(frames[-1]) + 1) * FRAME if len(frames) else len(audio)


def closed_up(audio: np.ndarray, kept_ms: int = PAUSE_KEPT_MS) -> np.ndarray:
    """`audio` with each quiet stretch between two loud frames (`_loud`) longer than `kept_ms` cut to its first and
    last `kept_ms / 2`."""
    loud = _loud(audio)
    if loud is None:
        return audio
    kept, half = kept_ms // 10, kept_ms // 20
    spoken = np.flatnonzero(loud)
    pieces, start = [], 0
    for before, after in zip(spoken[:-1], spoken[1:]):  # a quiet stretch: the frames between two loud ones
        if after - before - 1 > kept:
            pieces.append(audio[start : (before + 1 + half) * FRAME])
            start = (after - (kept - half)) * FRAME
    pieces.append(audio[start:])
    return np.concatenate(pieces)
