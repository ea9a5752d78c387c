"""Speech to text: the Transcriber protocol and its faster-whisper implementation.

Transcription blocks, so the pipeline calls `transcribe` through `asyncio.to_thread`. Transcripts that are
empty, punctuation only, or judged non-speech by Whisper itself come back as empty text, and an empty transcript
starts no reply.

Whisper's encoder always reads 30 s of audio: faster-whisper pads a 2 s turn with 28 s of silence, and on a CPU
that encoding is ~85 % of the time a short turn takes (tiny.en: 440 of ~500 ms on one core). With `asr.window:
fitted` (not the default) the encoder reads only the turn and `FITTED_PAD_S` of silence. Whisper then tends to
repeat the turn into the silence it was not trained to see, so the fitted path asks for timestamps and keeps only
the segments that start inside the audio, drops text that says again what the turn (or a segment) began with,
and caps the tokens by the audio's length. On the bench's speech (LibriVox and espeak-ng, 263 words) that gives
about the same word error rate in a tenth of the time (docs/benchmarks.md), but some last words come out
differently ("a coffee and" as "a coffee end."), and the last word decides when a turn ends.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from assistant.config import AsrConfig

if TYPE_CHECKING:
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import Segment

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Two calls at once: a pause's glance must not wait behind the full transcript of a pause the user talked through
# (a CTranslate2 call cannot be stopped; queued behind one, a glance took ~600 ms instead of ~115 here).
WORKERS = 2
FITTED_PAD_S = 3.0  # silence after the turn in a fitted window
MAX_FITTED_S = 27.0  # longer turns go through faster-whisper's 30 s windows
TOKENS_PER_S = 8  # a fitted decode stops after 10 + this many tokens per second of audio (speech is ~4)
MAX_TOKENS = 224  # Whisper's own limit for one window's text
TIMESTAMP_S = 0.02  # one step of Whisper's timestamp tokens
SEGMENT_SLACK_S = 0.2  # a segment that starts this close to the audio's end or later is Whisper filling silence
# Whisper's own verdicts: a segment it thinks holds no speech and did not decode confidently.
NO_SPEECH_PROB = 0.6
LOW_LOGPROB = -1.0


class AsrError(RuntimeError):
    """The speech recogniser could not be loaded or run."""


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    audio_s: float

    @property
    def is_empty(self) -> bool:
        return not re.search(r"\w", self.text)


class Transcriber(Protocol):
    def transcribe(self, audio: np.ndarray) -> Transcript:
        """Transcribe mono float32 audio at 16 kHz (blocking)."""
        ...

    def glance(self, audio: np.ndarray) -> Transcript:
        """A quick transcript for deciding a pause (Whisper: the fitted window, ~10x faster on a CPU); it may hear
        the last words differently, and is not the turn's transcript."""
        ...


def _resolve_device(device: str) -> str:
    if device == "cpu":
        return device
    import ctranslate2

    if device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise AsrError("asr.device = cuda: ctranslate2 finds no CUDA device here; set asr.device to cpu, or auto")
    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class WhisperTranscriber:
    """faster-whisper; `config.model` is a size name (tiny.en, small, ...), a hub id or a CT2 folder."""

    def __init__(self, config: AsrConfig, cpu_threads: int = 0) -> None:
        from faster_whisper import WhisperModel

        self.config = config
        device = _resolve_device(config.device)
        compute_type = config.compute_type
        if compute_type == "default":
            compute_type = "float16" if device == "cuda" else "int8"
        local = Path(config.model).expanduser()
        try:
            self.model = WhisperModel(
                str(local) if local.is_dir() else config.model,
                device=device,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                num_workers=WORKERS,
                download_root=config.download_root,
            )
        except Exception as exc:  # faster-whisper raises hub, OS and CT2 errors alike
            if device == "cuda" and "cuda" in str(exc).lower():
                hint = "Its CUDA could not be used: set asr.device to cpu."
            elif local.is_dir():
                hint = "asr.model must be a faster-whisper (CT2) folder (model.bin, config.json...)."
            else:
                hint = "Offline? Download it once while online, or set asr.model to a local faster-whisper folder."
            raise AsrError(f"cannot load Whisper model {config.model!r} ({type(exc).__name__}: {exc}). {hint}") from exc
        log.info("ASR: faster-whisper %s on %s (%s), %s window", config.model, device, compute_type, config.window)
        self._tokenizer: Tokenizer | None = None
        self._suppressed: list[int] = []
        if config.language or not self.model.model.is_multilingual:  # the fitted window: asr.window, and glances
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            self._tokenizer = Tokenizer(
                self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language=config.language
            )
            self._suppressed = list(get_suppressed_tokens(self._tokenizer, [-1]))  # faster-whisper's default set

    def transcribe(self, audio: np.ndarray) -> Transcript:
        audio = np.asarray(audio, np.float32)
        audio_s = len(audio) / SAMPLE_RATE
        if self.config.window == "fitted":
            return self.glance(audio)
        return self._full(audio, audio_s)

    def glance(self, audio: np.ndarray) -> Transcript:
        audio = np.asarray(audio, np.float32)
        audio_s = len(audio) / SAMPLE_RATE
        if self._tokenizer is None or audio_s > MAX_FITTED_S:
            return self._full(audio, audio_s)
        return Transcript(text=self._fitted(audio, audio_s), language=self.config.language or "en", audio_s=audio_s)

    def _full(self, audio: np.ndarray, audio_s: float) -> Transcript:
        segments, info = self.model.transcribe(
            audio,
            language=self.config.language,
            beam_size=self.config.beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        kept = [s.text for s in segments if not _no_speech(s.no_speech_prob, s.avg_logprob) and not _noise_words(s)]
        return Transcript(text=" ".join(t.strip() for t in kept).strip(), language=info.language, audio_s=audio_s)

    def _fitted(self, audio: np.ndarray, audio_s: float) -> str:
        """One decode over an encoder window of the audio plus FITTED_PAD_S (see the module's docstring)."""
        import ctranslate2

        tokenizer = self._tokenizer
        assert tokenizer is not None
        extractor = self.model.feature_extractor
        features = extractor(audio)
        frames = min(features.shape[1], extractor.nb_max_frames)
        pad = round(FITTED_PAD_S / extractor.time_per_frame)
        window = np.zeros((1, features.shape[0], min(frames + pad, extractor.nb_max_frames)), np.float32)
        window[0, :, :frames] = features[:, :frames]
        whisper = self.model.model
        encoded = whisper.encode(ctranslate2.StorageView.from_array(window), to_cpu=False)
        result = whisper.generate(
            encoded,
            [list(tokenizer.sot_sequence)],
            beam_size=self.config.beam_size,
            max_length=min(MAX_TOKENS, 10 + int(TOKENS_PER_S * audio_s)),
            suppress_blank=True,
            suppress_tokens=self._suppressed,
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        tokens = result.sequences_ids[0]
        if _no_speech(result.no_speech_prob, result.scores[0] * len(tokens) / (len(tokens) + 1)):
            return ""
        kept: list[str] = []
        for start, text in _segments(tokens, tokenizer):
            if start < audio_s - SEGMENT_SLACK_S and not _repeats(text, kept):
                kept.append(text.strip())
        return _unlooped(" ".join(kept))


def _segments(tokens: list[int], tokenizer: Tokenizer) -> list[tuple[float, str]]:
    """(start in seconds, text) of each segment of a timestamped decode; text after the last timestamp counts too."""
    first = tokenizer.timestamp_begin
    segments: list[tuple[float, str]] = []
    start = 0.0
    words: list[int] = []
    for token in tokens:
        if token >= first:  # a segment's end (when words came since its start) or the next one's start
            if words:
                segments.append((start, tokenizer.decode(words)))
                words = []
            start = (token - first) * TIMESTAMP_S
        elif token < tokenizer.eot:
            words.append(token)
    if words:
        segments.append((start, tokenizer.decode(words)))
    return segments


_WORD = re.compile(r"[\w']+")


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _repeats(text: str, before: list[str]) -> bool:
    """A segment that says again the start of one before it: Whisper looping over the silence after the turn."""
    words = _words(text)
    return bool(words) and any(_words(b)[: len(words)] == words for b in before)


def _unlooped(text: str, opening: int = 3) -> str:
    """`text` up to where its first `opening` words begin again: Whisper looping inside one segment."""
    words = list(_WORD.finditer(text))
    said = [w.group().lower() for w in words]
    for i in range(opening, len(said) - opening + 1):
        if said[i : i + opening] == said[:opening]:
            return text[: words[i].start()].rstrip()
    return text


def _no_speech(no_speech_prob: float, avg_logprob: float) -> bool:
    """Whisper's own verdict that a decode heard no speech."""
    return no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB


# What Whisper says on noise and silence (its training had subtitles), lower-case without punctuation.
NOISE_WORDS = frozenset(
    "you|thank you|thanks|thank you very much|thanks for watching|thank you for watching|thanks for listening|"
    "thank you for listening|bye|bye bye|please subscribe|subscribe".split("|")
)
NOISE_WORDS_NO_SPEECH = 0.5


def _noise_words(segment: Segment) -> bool:
    """One of Whisper's known noise outputs, decoded without confidence (3 s of brown noise comes out as "You" with
    no_speech_prob ~0.8; a spoken "Thank you." has ~0.3 and a logprob of ~-0.6)."""
    return " ".join(_words(segment.text)) in NOISE_WORDS and (
        segment.no_speech_prob > NOISE_WORDS_NO_SPEECH or segment.avg_logprob < LOW_LOGPROB
    )
