"""The wake word: microWakeWord models (`pymicro-wakeword`, as Home Assistant's voice satellites use) on the
microphone's 16 kHz audio, a built-in model by name or the user's own json+tflite pair.

The detector sees only the audio the floor sends it (while it waits for the wake word), a 10 ms feature per
10 ms of audio and one model step per three features: about 1 % of one core on this project's CPUs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000
BUILT_IN = ("okay_nabu", "hey_jarvis", "hey_mycroft", "alexa")
_SPELLINGS = {"okay": r"(?:okay|ok|o\.\s?k\.?)"}  # how Whisper may write a wake phrase's words


class WakeWordError(ValueError):
    """A wake-word model that cannot be used; the message names the setting and what is wrong."""


@dataclass(frozen=True)
class Detection:
    model: str
    phrase: str  # as the model's json writes it, e.g. "Okay Nabu"
    score: float


class WakeWordDetector:
    """`feed(block)` with float32 mono 16 kHz audio; a Detection when the phrase was heard. `reset()` before feeding
    audio that does not follow what came before."""

    def __init__(self, spec: str, threshold: float | None = None, setting: str = "listen.wake_word") -> None:
        from pymicro_wakeword import MicroWakeWord, MicroWakeWordFeatures, Model

        if spec in BUILT_IN:
            self._model = MicroWakeWord.from_builtin(Model(spec))
        else:
            config = _model_file(spec, setting)
            try:
                self._model = MicroWakeWord.from_config(config)
            except (OSError, KeyError, ValueError) as error:
                raise WakeWordError(f"{setting}: {spec!r} is not a microWakeWord model ({error})") from None
        self._features = MicroWakeWordFeatures()
        self.name = self._model.id
        self.phrase = self._model.wake_word
        self.threshold = threshold if threshold is not None else self._model.probability_cutoff

    def feed(self, block: np.ndarray) -> Detection | None:
        pcm = (np.clip(block, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        for features in self._features.process_streaming(pcm):
            score = self._model.process_streaming_prob(features)
            if score is not None and score > self.threshold:
                self.reset()
                return Detection(self.name, self.phrase, round(float(score), 3))
        return None

    def reset(self) -> None:
        self._model.reset()
        self._features.reset()

    def strip_phrase(self, text: str) -> str:
        """The transcript without a leading wake phrase (should the detector have fired late, Whisper hears it):
        'Okay Nabu, what time is it?' -> 'what time is it?'."""
        words = [_SPELLINGS.get(w, re.escape(w)) for w in re.findall(r"\w+", self.phrase.lower())]
        if not words:
            return text
        pattern = r"^\W*" + r"\W+".join(words) + r"\b\W*"
        stripped = re.sub(pattern, "", text, flags=re.IGNORECASE)
        return stripped[:1].upper() + stripped[1:] if stripped != text else text


def _model_file(spec: str, setting: str) -> Path:
    path = Path(spec).expanduser()
    if not path.suffix and not path.exists():
        raise WakeWordError(
            f"{setting}: {spec!r} is neither a built-in wake word ({', '.join(BUILT_IN)}) nor a model file"
        )
    if path.is_dir():
        raise WakeWordError(f"{setting}: {spec} is a folder; name the model's .json file (its .tflite beside it)")
    if not path.is_file():
        raise WakeWordError(f"{setting}: {spec}: no such file")
    if path.suffix != ".json":
        raise WakeWordError(f"{setting}: {spec}: name the model's .json file (its .tflite beside it), not {path.name}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WakeWordError(f"{setting}: {spec} is not a model's json ({error})") from None
    if not isinstance(config, dict) or config.get("type") != "micro" or "micro" not in config:
        raise WakeWordError(f'{setting}: {spec} is not a microWakeWord model\'s json (no "type": "micro")')
    rate = config.get("sample_rate", config["micro"].get("sample_rate", SAMPLE_RATE))
    if rate != SAMPLE_RATE:
        raise WakeWordError(f"{setting}: {spec} is a model for {rate} Hz audio; microWakeWord listens at 16 kHz")
    tflite = path.parent / str(config.get("model", ""))
    if not tflite.is_file():
        raise WakeWordError(f"{setting}: {spec} names {config.get('model')!r}, which is not beside it")
    with tflite.open("rb") as file:
        if file.read(8)[4:] != b"TFL3":  # TensorFlow Lite crashes the process on a file that is not its own
            raise WakeWordError(f"{setting}: {tflite} is not a TensorFlow Lite model")
    return path
