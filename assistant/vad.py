"""Turn a stream of 16 kHz audio into user turns with webrtcvad.

The segmenter classifies fixed frames as speech or not and runs a small state machine:
silence -> (a speech frame) -> candidate -> (enough voiced time) -> speaking -> (enough silence) -> turn.
A candidate that never gathers `min_speech_ms` of voiced frames (a click, a cough) is dropped.
`preroll_ms` of audio from before the first speech frame is kept, so the first syllable survives.

With `pause_ms`, a confirmed turn that falls silent that long is announced as a `Pause` (the turn so far, as it
would end there), and `SpeechResumed` follows if speech comes back before the turn ends. With `lull_ms` (less than
`pause_ms`), each silence that long in a confirmed turn is announced first as a `Lull`, so that a look at the turn
can begin before a pause is known; the turn as it would end is the same audio at both when `lull_ms` covers the
three frames of silence an utterance keeps. Whoever listens may then
`wait` a different silence for this turn (judged from its words), which ends it at once if that much has passed.

A turn that ended can be taken back with `reopen` while new speech is in progress: the user went on, so the new
speech continues the old turn, with everything heard in between.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from assistant.config import VadConfig

SpeechClassifier = Callable[[np.ndarray], bool]


@dataclass(frozen=True)
class SpeechOnset:
    """The user has been speaking for `min_speech_ms` (voiced); `at_sample` counts from the stream's start."""

    at_sample: int


@dataclass(frozen=True)
class Utterance:
    """A finished user turn: the audio from pre-roll to the end of speech, at the segmenter's rate.

    `end_sample` is where its last voiced frame ends, counted from the stream's start: the end of the user's speech.
    """

    audio: np.ndarray = field(repr=False)
    sample_rate: int
    voiced_ms: int
    end_sample: int
    truncated: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True)
class Pause:
    """The user has been silent `pause_ms` in a turn: `utterance` is the turn as it ends if the silence goes on."""

    utterance: Utterance


@dataclass(frozen=True)
class Lull:
    """The user has been silent `lull_ms` in a turn: a `Pause` may follow; `utterance` is the turn as it would end."""

    utterance: Utterance


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back after a `Pause`: the turn goes on."""


SegmenterEvent = SpeechOnset | Lull | Pause | SpeechResumed | Utterance


def webrtc_classifier(aggressiveness: int, sample_rate: int, min_level_db: float = -120.0) -> SpeechClassifier:
    """webrtcvad's verdict on a frame, for frames at least `min_level_db` (dBFS, RMS) loud."""
    import webrtcvad

    vad = webrtcvad.Vad(aggressiveness)
    floor = 10 ** (min_level_db / 10)  # mean square

    def is_speech(frame: np.ndarray) -> bool:
        if np.mean(np.square(frame, dtype=np.float64)) < floor:
            return False
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
        self._is_speech = classifier or webrtc_classifier(config.aggressiveness, sample_rate, config.min_level_db)
        self._pending: np.ndarray = np.zeros(0, np.float32)
        self._preroll: deque[np.ndarray] = deque(maxlen=config.preroll_ms // config.frame_ms)
        self.pause_ms = 0  # 0: no Pause events (the voice loop sets its turn.speculate_ms)
        self.lull_ms = 0  # 0: no Lull events (the voice loop sets its turn.look_ms)
        self.samples_seen = 0
        self.reset()

    def reset(self) -> None:
        """Forget any turn in progress (e.g. after the assistant muted the microphone), and the last one that ended."""
        self._closed: tuple[list[np.ndarray], int] | None = None  # the last turn's frames and voiced frames, for reopen
        self._since_close: list[np.ndarray] = []  # every frame heard after it ended
        self._forget_turn()

    def _forget_turn(self) -> None:
        self._frames: list[np.ndarray] = []
        self._voiced = 0
        self._silent_run = 0
        self._onset_sent = False
        self._paused = False
        self._end_ms = self.config.end_silence_ms
        self._last_voiced_end = 0
        self._preroll.clear()

    @property
    def in_speech(self) -> bool:
        return bool(self._frames)

    @property
    def voiced_ms(self) -> int:
        """Voiced time in the turn now in progress (0 outside speech)."""
        return self._voiced * self.config.frame_ms if self._frames else 0

    @property
    def silence_ms(self) -> int:
        """Silence so far in the turn now in progress (0 outside speech)."""
        return self._silent_run * self.config.frame_ms if self._frames else 0

    @property
    def can_reopen(self) -> bool:
        """Whether `reopen` would take back the turn that ended last (the speech in progress would continue it)."""
        return self._closed is not None and bool(self._frames)

    def so_far(self) -> Utterance | None:
        """The turn in progress as it is now (None outside speech)."""
        return self._utterance(truncated=False) if self._frames else None

    def wait(self, silence_ms: int) -> Utterance | None:
        """End the turn in progress after `silence_ms` of silence instead (until speech resumes after a pause).
        If it is in a pause that has lasted that long already, it ends now and is returned."""
        self._end_ms = silence_ms
        if self._paused and self.silence_ms >= silence_ms:
            return self._close(truncated=False)
        return None

    def reopen(self) -> bool:
        """Take back the turn that ended last: the speech in progress continues it, with everything heard since (the
        pause included), as if the turn had never ended. False when there is no speech in progress, or no turn to
        take back (a reset since, or too long ago to fit `max_utterance_s`)."""
        if not self.can_reopen:
            return False
        assert self._closed is not None
        frames, voiced = self._closed
        self._frames = frames + self._since_close  # the speech in progress, pre-roll included, is the tail of it
        self._voiced += voiced
        self._onset_sent, self._paused, self._end_ms = True, False, self.config.end_silence_ms
        self._closed, self._since_close = None, []
        return True

    def feed(self, audio: np.ndarray) -> list[SegmenterEvent]:
        self._pending = np.concatenate([self._pending, np.asarray(audio, np.float32)])
        events: list[SegmenterEvent] = []
        while len(self._pending) >= self.frame:
            frame, self._pending = self._pending[: self.frame], self._pending[self.frame :]
            self.samples_seen += self.frame
            events += self._step(frame)
        return events

    def _step(self, frame: np.ndarray) -> list[SegmenterEvent]:
        cfg = self.config
        speech = self._is_speech(frame)
        if self._closed is not None:
            self._since_close.append(frame)
            if (len(self._closed[0]) + len(self._since_close)) * cfg.frame_ms >= cfg.max_utterance_s * 1000:
                self._closed, self._since_close = None, []
        if not self._frames:
            if not speech:
                self._preroll.append(frame)
                return []
            self._frames = [*self._preroll, frame]
            self._preroll.clear()
            self._voiced, self._silent_run = 1, 0
        else:
            self._frames.append(frame)
            self._voiced += speech
            self._silent_run = 0 if speech else self._silent_run + 1
        events: list[SegmenterEvent] = []
        if speech:
            self._last_voiced_end = self.samples_seen
            if self._paused:
                self._paused, self._end_ms = False, cfg.end_silence_ms
                events.append(SpeechResumed())
        voiced_ms = self._voiced * cfg.frame_ms
        if not self._onset_sent and voiced_ms >= cfg.min_speech_ms:
            self._onset_sent = True
            events.append(SpeechOnset(at_sample=self.samples_seen))
        silence_ms = self._silent_run * cfg.frame_ms
        lull_frames = -(-self.lull_ms // cfg.frame_ms)  # the first frame at or past lull_ms
        if self.lull_ms and self._onset_sent and not self._paused and self._silent_run == lull_frames:
            if not self.pause_ms or silence_ms < self.pause_ms:
                events.append(Lull(self._utterance(truncated=False)))
        if self.pause_ms and self._onset_sent and not self._paused and silence_ms >= self.pause_ms:
            self._paused = True
            events.append(Pause(self._utterance(truncated=False)))
        too_long = len(self._frames) * cfg.frame_ms >= cfg.max_utterance_s * 1000
        if silence_ms >= self._end_ms or too_long:
            if (utterance := self._close(truncated=too_long and self._silent_run == 0)) is not None:
                events.append(utterance)
        return events

    def _utterance(self, truncated: bool) -> Utterance:
        keep = len(self._frames) - self._silent_run + min(self._silent_run, 3)  # a little trailing silence
        return Utterance(
            audio=np.concatenate(self._frames[:keep]),
            sample_rate=self.sample_rate,
            voiced_ms=self._voiced * self.config.frame_ms,
            end_sample=self._last_voiced_end,
            truncated=truncated,
        )

    def _close(self, truncated: bool) -> Utterance | None:
        utterance, confirmed, closed = self._utterance(truncated), self._onset_sent, (self._frames, self._voiced)
        self._forget_turn()
        if not confirmed:
            return None
        self._closed, self._since_close = closed, []
        return utterance
