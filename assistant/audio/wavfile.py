"""Mono float32 audio from the audio files people have (libsndfile through soundfile: wav of any PCM width, float
or WAVE_FORMAT_EXTENSIBLE, FLAC, OGG, AIFF, MP3), and to 16-bit PCM wav files (the stdlib `wave` module) or to the
format an output file's name asks for (`write_audio`)."""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from assistant.audio.resample import resample

T = TypeVar("T")


class WavError(ValueError):
    """An audio file that cannot be read, or whose audio cannot be used; the message names the file and why."""


def check_audio_file(path: str | Path) -> None:
    """Raise WavError naming the problem if `path` cannot be read as audio (only its header is read)."""
    _read(path, _header)


def read_wav(path: str | Path, rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 in [-1, 1] (channels averaged), resampled to `rate` if given."""
    import soundfile

    data, source_rate = _read(path, lambda p: soundfile.read(p, dtype="float32", always_2d=True))
    return _mono(data, source_rate, rate)


def read_audio_bytes(data: bytes, what: str = "the audio") -> tuple[np.ndarray, int]:
    """`read_wav` for a file's bytes (as an HTTP request carries them); WavError naming `what` when unreadable."""
    import soundfile

    if not data:
        raise WavError(f"{what} is empty")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
        raise WavError(f"{what} is not an audio file that can be read ({exc})") from None
    return _mono(samples, rate)


def _mono(data: np.ndarray, source_rate: int, rate: int | None = None) -> tuple[np.ndarray, int]:
    audio = data.mean(axis=1, dtype=np.float32)
    if rate is not None and rate != source_rate:
        return resample(audio, source_rate, rate), rate
    return audio, source_rate


def _header(path: str) -> object:
    import soundfile

    return soundfile.info(path)


def _read(path: str | Path, reader: Callable[[str], T]) -> T:
    import soundfile

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise WavError(f"{path}: the file is empty")
    try:
        return reader(str(path))
    except (soundfile.LibsndfileError, RuntimeError) as exc:
        raise WavError(f"{path}: not an audio file that can be read ({exc})") from None


def pcm16(audio: np.ndarray) -> bytes:
    """Float audio as 16-bit little-endian PCM samples (clipped to [-1, 1])."""
    return (np.clip(np.asarray(audio, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


def write_wav(path: str | Path, audio: np.ndarray, rate: int) -> None:
    """Write mono float audio as 16-bit PCM (clipped to [-1, 1])."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm16(audio))


WRITTEN_FORMATS = {  # an output's suffix -> soundfile's format and subtype; the first suffix of each is its name
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
    ".ogg": ("OGG", "VORBIS"),
    ".aiff": ("AIFF", "PCM_16"),
    ".mp3": ("MP3", "MPEG_LAYER_III"),
    ".wave": ("WAV", "PCM_16"),
    "": ("WAV", "PCM_16"),
    ".oga": ("OGG", "VORBIS"),
    ".aif": ("AIFF", "PCM_16"),
}


def output_format(path: str | Path) -> tuple[str, str]:
    """The format and subtype `write_audio` gives `path`, by its suffix; WavError for a suffix it cannot write."""
    import soundfile

    suffix = Path(path).suffix.lower()
    chosen = WRITTEN_FORMATS.get(suffix)
    if chosen is None or not soundfile.check_format(*chosen):
        named = {f: s for s, f in reversed(WRITTEN_FORMATS.items()) if s and soundfile.check_format(*f)}
        known = sorted(named.values(), key=list(WRITTEN_FORMATS).index)
        raise WavError(f"{path}: cannot write {suffix} audio; name it {', '.join(known[:-1])} or {known[-1]}")
    return chosen


def check_output_file(path: str | Path) -> None:
    """Raise WavError naming the problem unless an audio file can be written at `path` (a format its name gives, a
    place it can be created); nothing there is changed (a file this creates to try is removed)."""
    path = Path(path)
    if path.is_dir():
        raise WavError(f"{path}: is a folder; name the audio file to write")
    if not path.parent.is_dir():
        raise WavError(f"{path}: the folder {path.parent} does not exist")
    output_format(path)
    if path.exists() and not path.is_file():
        raise WavError(f"{path}: {what_is(path)}, not a file that audio can be written to")
    real, existed = path.resolve(), path.exists()
    try:
        with open(real, "ab"):  # appends nothing: an existing file is left as it is
            pass
    except OSError as exc:
        where = "cannot be written" if existed else f"cannot be created in {path.parent}"
        raise WavError(f"{path}: {where} ({exc.strerror or exc})") from None
    if not existed:
        real.unlink(missing_ok=True)


def what_is(path: str | Path) -> str:
    """What is at `path`, for a message about something that is not a regular file."""
    path = Path(path)
    if not os.path.lexists(path):
        return "no such file"
    if path.is_dir():
        return "a folder"
    if path.is_char_device() or path.is_block_device():
        return "a device"
    if path.is_fifo():
        return "a pipe"
    if path.is_socket():
        return "a socket"
    if not path.exists():
        return "a broken link"
    return "a file"


def write_audio(path: str | Path, audio: np.ndarray, rate: int) -> None:
    """Write mono float audio in the format `path`'s suffix names (16-bit PCM where the format has samples; clipped
    to [-1, 1]); a WavError naming the file when it cannot be written."""
    import soundfile

    form, subtype = output_format(path)
    clipped = np.clip(np.asarray(audio, np.float32), -1.0, 1.0)
    data = np.frombuffer(pcm16(clipped), "<i2") if subtype.startswith("PCM") else clipped
    try:
        soundfile.write(str(path), data, rate, format=form, subtype=subtype)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as exc:
        raise WavError(f"{path}: cannot be written ({exc})") from None
