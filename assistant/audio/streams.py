"""What the voice loop reads audio from and plays audio to, and the wav-file pair of them.

A source yields mono float32 blocks at 16 kHz. A sink takes mono float32 at 24 kHz and keeps a
count of the samples that have actually gone out (`played`), which is how an interrupted reply
knows what the user heard. Live audio (sounddevice) and wav files implement the same contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import numpy as np

from assistant.audio.wavfile import read_wav, write_audio

CAPTURE_RATE = 16_000
PLAYBACK_RATE = 24_000


class AudioSource(Protocol):
    def blocks(self) -> AsyncIterator[np.ndarray]:
        """Mono float32 blocks at 16 kHz, of any size, until the source ends or is closed."""
        ...

    async def aclose(self) -> None: ...


class AudioSink(Protocol):
    def play(self, audio: np.ndarray) -> int:
        """Queue mono float32 audio at 24 kHz without blocking; returns the `played` count at which it ends."""
        ...

    @property
    def played(self) -> int:
        """24 kHz samples that have gone out since the sink opened (never counts dropped audio)."""
        ...

    def interrupt(self) -> None:
        """Drop everything queued and go silent at once."""
        ...

    def pause(self) -> None:
        """Go silent at once, keeping what was not heard yet."""
        ...

    def resume(self) -> None:
        """Play on from where pause() stopped."""
        ...

    async def wait_played(self, position: int) -> bool:
        """Wait until `played` reaches `position`; False when an interrupt or close dropped it first."""
        ...

    async def aclose(self) -> None: ...


class FileSource:
    """A wav file (any rate, mixed to mono) as one pass of 16 kHz blocks, then `tail_s` of silence.

    The silence lets the VAD close the last utterance; the blocks come as fast as they are read.
    """

    def __init__(self, path: str | Path, block_ms: int = 20, tail_s: float = 1.5) -> None:
        audio, _ = read_wav(path, CAPTURE_RATE)
        self._audio = np.concatenate([audio, np.zeros(int(tail_s * CAPTURE_RATE), np.float32)])
        self._block = CAPTURE_RATE * block_ms // 1000

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        for start in range(0, len(self._audio), self._block):
            yield self._audio[start : start + self._block]
            await asyncio.sleep(0)  # let the rest of the loop run between blocks

    async def aclose(self) -> None:
        return None


class FileSink:
    """Everything played goes into one 24 kHz audio file (wav, or the format its name gives: `write_audio`), written
    on close; playing is instantaneous."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._parts: list[np.ndarray] = []
        self._played = 0

    def play(self, audio: np.ndarray) -> int:
        audio = np.asarray(audio, np.float32)
        self._parts.append(audio)
        self._played += len(audio)
        return self._played

    @property
    def played(self) -> int:
        return self._played

    def interrupt(self) -> None:
        return None

    def pause(self) -> None:  # a file is written at once: there is no playback to hold
        return None

    def resume(self) -> None:
        return None

    async def wait_played(self, position: int) -> bool:
        return self._played >= position

    async def aclose(self) -> None:
        audio = np.concatenate(self._parts) if self._parts else np.zeros(0, np.float32)
        write_audio(self.path, audio, PLAYBACK_RATE)
