"""Turn a stream of 16 kHz audio into user turns with webrtcvad.

The segmenter classifies fixed frames as speech or not and runs a small state machine:
silence -> (a speech frame) -> candidate -> (enough voiced time) -> speaking -> (enough silence) -> turn.
A candidate that never gathers `min_speech_ms` of voiced frames (a click, a cough) is dropped.
`preroll_ms` of audio from before the first speech frame is kept, so the first syllable survives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from assistant.config import VadConfig

SpeechClassifier = Callable[[np.ndarray], bool]


@dataclass(frozen=True)
class SpeechOnset:
    """The user has been speaking for `min_speech_ms` (voiced); `at_sample` counts from the stream's start."""

    at_sample: int


@dataclass(frozen=True)
class Utterance:
    """A finished user turn: the audio from pre-roll to the end of speech, at the segmenter's rate."""

    audio: np.ndarray
    sample_rate: int
    voiced_ms: int
    truncated: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


def webrtc_classifier(aggressiveness: int, sample_rate: int) -> SpeechClassifier:
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)

    def is_speech(frame: np.ndarray) -> bool:
        pcm = (np.clip(frame, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        return vad.is_speech(pcm, sample_rate)

    return is_speech


class VadSegmenter:
    """Feed audio of any length with `feed`; it returns the onsets and utterances it completed."""

    SUPPORTED_RATES = (8000, 16000, 32000, 48000)

    def __init__(self, config: VadConfig, sample_rate: int = 16000, classifier: SpeechClassifier | None = None):
        if sample_rate not in self.SUPPORTED_RATES:
            raise ValueError(f"webrtcvad needs one of {self.SUPPORTED_RATES} Hz, got {sample_rate}")
        self.config = config
        self.sample_rate = sample_rate
        self.frame = sample_rate * config.frame_ms // 1000
        self._is_speech = classifier or webrtc_classifier(config.aggressiveness, sample_rate)
        self._pending = np.zeros(0, np.float32)
        self._preroll: deque[np.ndarray] = deque(maxlen=config.preroll_ms // config.frame_ms)
        self._samples_seen = 0
        self.reset()

    def reset(self) -> None:
        """Forget any turn in progress (e.g. after the assistant muted the microphone)."""
        self._frames: list[np.ndarray] = []
        self._voiced = 0
        self._silent_run = 0
        self._onset_sent = False
        self._preroll.clear()

    @property
    def in_speech(self) -> bool:
        return bool(self._frames)

    @property
    def voiced_ms(self) -> int:
        """Voiced time in the turn now in progress (0 outside speech)."""
        return self._voiced * self.config.frame_ms if self._frames else 0

    def feed(self, audio: np.ndarray) -> list[SpeechOnset | Utterance]:
        self._pending = np.concatenate([self._pending, np.asarray(audio, np.float32)])
        events: list[SpeechOnset | Utterance] = []
        while len(self._pending) >= self.frame:
            frame, self._pending = self._pending[: self.frame], self._pending[self.frame :]
            self._samples_seen += self.frame
            event = self._step(frame)
            if event is not None:
                events.append(event)
        return events

    def _step(self, frame: np.ndarray) -> SpeechOnset | Utterance | None:
        cfg = self.config
        speech = self._is_speech(frame)
        if not self._frames:
            if not speech:
                self._preroll.append(frame)
                return None
            self._frames = [*self._preroll, frame]
            self._preroll.clear()
            self._voiced, self._silent_run = 1, 0
        else:
            self._frames.append(frame)
            self._voiced += speech
            self._silent_run = 0 if speech else self._silent_run + 1
        voiced_ms = self._voiced * cfg.frame_ms
        if not self._onset_sent and voiced_ms >= cfg.min_speech_ms:
            self._onset_sent = True
            return SpeechOnset(at_sample=self._samples_seen)
        too_long = len(self._frames) * cfg.frame_ms >= cfg.max_utterance_s * 1000
        if self._silent_run * cfg.frame_ms >= cfg.end_silence_ms or too_long:
            return self._close(truncated=too_long and self._silent_run == 0)
        return None

    def _close(self, truncated: bool) -> Utterance | None:
        keep = len(self._frames) - self._silent_run + min(self._silent_run, 3)  # a little trailing silence
        audio = np.concatenate(self._frames[:keep])
        voiced_ms, confirmed = self._voiced * self.config.frame_ms, self._onset_sent
        self.reset()
        if not confirmed:
            return None
        return Utterance(audio=audio, sample_rate=self.sample_rate, voiced_ms=voiced_ms, truncated=truncated)
