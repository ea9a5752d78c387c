"""Speech to text: the Transcriber protocol and its faster-whisper implementation.

Transcription blocks for hundreds of milliseconds, so the pipeline calls `transcribe` through
`asyncio.to_thread`. Transcripts that are empty, punctuation only, or judged non-speech by
Whisper itself come back as empty text, and an empty transcript starts no reply.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from assistant.config import AsrConfig

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
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


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ctranslate2

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
                download_root=config.download_root,
            )
        except Exception as exc:  # faster-whisper raises hub, OS and CT2 errors alike
            raise AsrError(
                f"cannot load Whisper model {config.model!r} ({type(exc).__name__}: {exc}). Offline? "
                "Download it once while online, or set asr.model to a local faster-whisper (CT2) folder."
            ) from exc
        log.info("ASR: faster-whisper %s on %s (%s)", config.model, device, compute_type)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        audio = np.asarray(audio, np.float32)
        segments, info = self.model.transcribe(
            audio,
            language=self.config.language,
            beam_size=self.config.beam_size,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        kept = [
            s.text
            for s in segments
            if not (s.no_speech_prob > NO_SPEECH_PROB and s.avg_logprob < LOW_LOGPROB)
        ]
        text = " ".join(t.strip() for t in kept).strip()
        return Transcript(text=text, language=info.language, audio_s=len(audio) / SAMPLE_RATE)
