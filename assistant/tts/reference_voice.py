"""The assistant's voice: a reference segment (Mimi codes and their transcript) that heads every CSM prompt.

CSM-1B's speaker ids carry no fixed voice: without audio in the context, each run speaks in another one. A
reference comes from a recording and its transcript (encoded once: the codes are cached on disk, keyed by the
file's content and the codec's weights), from a voice file the assistant saved, or is made once and kept: a
greeting generated with a fixed seed and saved in the user's data directory (the locked voice), so the
assistant sounds the same tomorrow.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from assistant.audio.wavfile import WavError, check_audio_file, read_wav
from assistant.conversation import FRAME_S
from assistant.segment import Segment

if TYPE_CHECKING:
    from assistant.tts.csm import CSMEngine
    from assistant.tts.remote import RemoteCSM

log = logging.getLogger(__name__)

FORMAT = "csm-assistant voice 1"
VOICE_FILE_SUFFIX = ".safetensors"
GREETING = "Hello! I'm your voice assistant. It's good to meet you, and I'm glad to help."
LOCK_SEED = 1
LOCK_MAX_AUDIO_MS = 8000.0


class VoiceError(ValueError):
    """A voice that cannot be used: a missing or unreadable clip or file, no transcript, codes of another codec."""


@dataclass(frozen=True)
class ReferenceVoice:
    speaker: int
    text: str
    codes: torch.Tensor  # [K, frames], on the CPU
    codec: str  # `MimiCodec.fingerprint` of the weights the codes come from
    origin: str  # where it came from, for messages

    @property
    def seconds(self) -> float:
        return self.codes.shape[-1] * FRAME_S

    def segment(self) -> Segment:
        return Segment(self.speaker, self.text, codes=self.codes)

    def save(self, path: Path) -> None:
        """Write it as a voice file (written aside, then renamed: a crash leaves no half file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        metadata = {"format": FORMAT, "speaker": str(self.speaker), "text": self.text, "codec": self.codec}
        save_file({"codes": self.codes.to(torch.int32).contiguous()}, str(partial), metadata=metadata)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> ReferenceVoice:
        try:
            with safe_open(str(path), "pt") as opened:
                metadata = opened.metadata() or {}
                codes = opened.get_tensor("codes").to(torch.long)
        except (OSError, SafetensorError, KeyError, ValueError) as error:
            raise VoiceError(
                f"{path}: not a voice file this assistant saved ({type(error).__name__}: {error})"
            ) from None
        if metadata.get("format") != FORMAT or codes.ndim != 2 or not metadata.get("text"):
            raise VoiceError(f"{path}: not a voice file this assistant saved (format {metadata.get('format')!r})")
        return cls(int(metadata["speaker"]), metadata["text"], codes, metadata.get("codec", ""), str(path))


def data_dir() -> Path:
    """Where the assistant keeps what it makes for this user ($XDG_DATA_HOME, else ~/.local/share)."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "csm-assistant"


def cache_dir() -> Path:
    """Where encoded clips are cached ($CSM_ASSISTANT_CACHE, else csm-assistant in $XDG_CACHE_HOME or ~/.cache)."""
    if named := os.environ.get("CSM_ASSISTANT_CACHE"):
        return Path(named) / "voices"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "csm-assistant" / "voices"


def locked_voice_path() -> Path:
    return data_dir() / f"voice{VOICE_FILE_SUFFIX}"


def is_voice_file(path: Path) -> bool:
    return path.suffix == VOICE_FILE_SUFFIX


def transcript_of(clip: Path, text: str | None) -> str:
    """The clip's transcript: `text`, else the .txt file beside the clip (same name)."""
    if text is not None and text.strip():
        return text.strip()
    beside = clip.with_suffix(".txt")
    try:
        words = beside.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        words = ""
    if not words:
        raise VoiceError(
            f"{clip}: the voice clip needs its transcript, word for word: set voice.text, or put it in {beside}"
        )
    return words


def check_voice_source(path: Path, text: str | None) -> None:
    """What can be checked before any model loads: the file is there and readable, a clip has its transcript."""
    if not path.is_file():
        raise VoiceError(f"{path}: no such voice file or clip")
    if is_voice_file(path):
        ReferenceVoice.load(path)
        return
    try:
        check_audio_file(path)
    except WavError as error:
        raise VoiceError(f"voice clip {error}") from None
    transcript_of(path, text)


async def voice_from_clip(path: Path, text: str | None, speaker: int, engine: CSMEngine | RemoteCSM) -> ReferenceVoice:
    """A clip's voice; its codes come from the cache when this file's content was encoded with this codec before."""
    words = transcript_of(path, text)
    content = await asyncio.to_thread(path.read_bytes)
    key = hashlib.sha256(content + engine.codec.fingerprint.encode()).hexdigest()[:32]
    cached = cache_dir() / f"{key}{VOICE_FILE_SUFFIX}"
    if cached.is_file():
        try:
            codes = ReferenceVoice.load(cached).codes
        except VoiceError as error:
            log.warning("voice: %s; encoding the clip again", error)
        else:
            return ReferenceVoice(speaker, words, codes, engine.codec.fingerprint, str(path))
    try:
        audio, rate = await asyncio.to_thread(read_wav, path)
    except WavError as error:
        raise VoiceError(f"voice clip {error}") from None
    if not audio.size:
        raise VoiceError(f"{path}: the voice clip holds no audio")
    voice = ReferenceVoice(speaker, words, await engine.encode(audio, rate), engine.codec.fingerprint, str(path))
    voice.save(cached)
    log.info("voice: encoded %s (%.1f s) once; the codes are cached in %s", path, voice.seconds, cached)
    return voice


async def locked_voice(speaker: int, engine: CSMEngine | RemoteCSM, temperature: float, topk: int) -> ReferenceVoice:
    """The voice made on this machine's first run, made now if there is none yet."""
    path = locked_voice_path()
    if path.is_file():
        voice = ReferenceVoice.load(path)
        if voice.codec != engine.codec.fingerprint:
            raise VoiceError(
                f"{path}: the locked voice was made with other Mimi weights than csm.mimi's; run with --reset-voice "
                "to make a new one"
            )
        return voice
    log.info("voice: making the assistant's voice (once, seed %d); it is kept in %s", LOCK_SEED, path)
    result = await asyncio.to_thread(
        engine.generate,
        GREETING,
        speaker,
        temperature=temperature,
        topk=topk,
        seed=LOCK_SEED,
        max_audio_ms=LOCK_MAX_AUDIO_MS,
    )
    if not result.codes.shape[-1]:
        raise VoiceError("the speech model ended the voice's greeting before it began; set voice.path to a clip")
    voice = ReferenceVoice(speaker, GREETING, result.codes, engine.codec.fingerprint, str(path))
    voice.save(path)
    return voice
