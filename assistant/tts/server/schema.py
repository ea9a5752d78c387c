"""Request bodies: OpenAI's speech request with CSM's extensions, checked field by field (400 naming the field)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

import numpy as np
import torch
from aiohttp import web
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from assistant.audio.wavfile import WavError, read_audio_bytes
from assistant.segment import Segment

from .errors import ApiError

OPENAI_VOICES = (
    *("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer"),
    *("verse", "marin", "cedar"),
)
"""OpenAI's voice names, each standing for a CSM speaker: its place in this list, modulo 10 (alloy 0 ... shimmer 9,
verse 0, marin 1, cedar 2)."""
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-03-20", "gpt-4o-mini-tts-2025-12-15")
"""OpenAI's speech model names, taken for the served model so that clients written for OpenAI work unchanged."""
RATES = (8_000, 48_000)
"""The sample rates (Hz) of the audio a request may bring."""

Body = TypeVar("Body", bound=BaseModel)
Encoder = Callable[[np.ndarray, int], Awaitable[torch.Tensor]]


def _unicode(text: str) -> str:
    """Text the tokenizer can take: JSON's escapes can make lone surrogates, which are not Unicode text."""
    try:
        text.encode()
    except UnicodeEncodeError as error:
        raise ValueError(f"a lone surrogate {text[error.start]!r} at character {error.start} is not text") from None
    return text


Text = Annotated[str, AfterValidator(_unicode)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SegmentBody(_Strict):
    """One utterance of the conversation: its Mimi codes (K rows of frames), or audio (base64 of a WAV or any audio
    file), or neither (text only)."""

    speaker: int = Field(ge=0, le=9)
    text: Text
    codes: list[list[int]] | None = None
    audio: str | None = None

    @model_validator(mode="after")
    def _codes_or_audio(self) -> SegmentBody:
        if self.codes is not None and self.audio is not None:
            raise ValueError("give codes or audio, not both")
        return self


class VoiceId(_Strict):
    """OpenAI's custom voice object, `{"id": ...}`: here a voice name or speaker id like a plain `voice`."""

    id: str


class SpeechBody(_Strict):
    model: str
    input: Text
    voice: str | int | VoiceId
    instructions: Text | None = None  # gpt-4o-mini-tts's direction of the voice: CSM takes it as nothing
    response_format: Literal["pcm", "wav", "csm"] = "wav"
    stream_format: Literal["audio", "sse"] = "audio"
    speed: float = 1.0
    context: list[SegmentBody] = Field(default_factory=list)
    reference: SegmentBody | None = None
    temperature: float = Field(0.9, ge=0, le=5)
    topk: int = Field(50, ge=1, le=2051)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # torch's generators take these
    max_audio_ms: float | None = Field(None, gt=0, le=120_000)
    chunk_frames: int = Field(1, ge=1, le=50)


class CodesBody(_Strict):
    audio: str


class ReferenceBody(_Strict):
    reference: SegmentBody


async def parse_json(request: web.Request, model: type[Body]) -> Body:
    data = await request.read()
    try:
        value = json.loads(data)
    except RecursionError:
        field = _too_deep(data.decode(errors="replace"))
        where = f"'{field}' is" if field is not None else "the body is"
        raise ApiError(400, f"{where} nested too deeply to read", param=field) from None
    except ValueError as error:  # not JSON, not UTF-8, or a number too long to read
        raise ApiError(400, f"the body is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ApiError(400, f"unknown field '{where}'", param=where) from None
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None


def _too_deep(text: str) -> str | None:
    """The top-level field of a JSON object whose value is nested too deeply for Python's parser (None when it is
    not found), read field by field."""
    decoder, skip, colon = json.JSONDecoder(), re.compile(r"[\s,{]*"), re.compile(r"\s*:\s*")
    at = skip.match(text, 0).end()  # type: ignore[union-attr]  # the pattern matches the empty string
    try:
        while text[at : at + 1] == '"':
            key, at = decoder.raw_decode(text, at)
            at = colon.match(text, at).end()  # type: ignore[union-attr]
            try:
                at = decoder.raw_decode(text, at)[1]
            except RecursionError:
                return str(key)
            at = skip.match(text, at).end()  # type: ignore[union-attr]
    except (ValueError, AttributeError):
        pass
    return None


def speaker_of(voice: str | int | VoiceId) -> int:
    """A CSM speaker id ("0".."9") or an OpenAI voice name (`OPENAI_VOICES`)."""
    name = (voice.id if isinstance(voice, VoiceId) else str(voice)).strip().lower()
    if name in OPENAI_VOICES:
        return OPENAI_VOICES.index(name) % 10
    if name.isdigit() and int(name) <= 9:
        return int(name)
    raise ApiError(
        400,
        f"unknown voice {name!r}: use a CSM speaker id 0-9, or one of {', '.join(OPENAI_VOICES)} (each the speaker "
        f"of its place in this list, modulo 10)",
        param="voice",
    )


@dataclass(frozen=True)
class Clip:
    """An audio file a request brings: its header read and checked (`clip`), its samples not yet decoded."""

    data: bytes
    rate: int
    samples: int
    param: str

    @property
    def seconds(self) -> float:
        return self.samples / self.rate

    def read(self) -> np.ndarray:
        """Mono float32 at `rate`."""
        try:
            audio, _ = read_audio_bytes(self.data, self.param)
        except WavError as error:
            raise ApiError(400, str(error), param=self.param) from None
        if not audio.size:
            raise ApiError(400, f"{self.param}: the audio has no samples", param=self.param)
        return audio


def clip(data: bytes, param: str) -> Clip:
    """An audio file's bytes, checked by its header alone: readable, with samples, at 8-48 kHz (400 naming `param`
    otherwise)."""
    import soundfile

    if not data:
        raise ApiError(400, f"{param} is empty", param=param)
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as file:
            rate, samples = file.samplerate, file.frames
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as error:
        raise ApiError(400, f"{param} is not an audio file that can be read ({error})", param=param) from None
    if not RATES[0] <= rate <= RATES[1]:
        raise ApiError(
            400, f"{param}: audio at {rate} Hz; it must be {RATES[0]}-{RATES[1]} Hz", param=param, code="bad_rate"
        )
    if samples <= 0:
        raise ApiError(400, f"{param}: the audio has no samples", param=param)
    return Clip(data, rate, samples, param)


def clip_base64(text: str, param: str) -> Clip:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: not base64", param=param) from None
    return clip(data, param)


def bound_audio(clips: Sequence[Clip | None], limit_s: float, param: str, room: str = "the model's window") -> None:
    """400 naming `param` when `clips` hold more than `limit_s` seconds of audio together (what fits `room`)."""
    total = sum(c.seconds for c in clips if c is not None)
    if total > limit_s:
        raise ApiError(
            400,
            f"{param}: {total:.1f} s of audio; at most {limit_s:.1f} s fit {room}",
            param=param,
            code="audio_too_long",
        )


@dataclass(frozen=True)
class Pending:
    """A request's segment, checked: its codes as given, or its audio still to encode (`segment`)."""

    speaker: int
    text: str
    codes: torch.Tensor | None = None
    clip: Clip | None = None

    async def segment(self, encode: Encoder) -> Segment:
        """The engine's Segment, with codes: the clip decoded (on a worker thread) and encoded by `encode`."""
        if self.clip is None:
            return Segment(self.speaker, self.text, codes=self.codes)
        audio = await asyncio.to_thread(self.clip.read)
        return Segment(self.speaker, self.text, codes=await encode(audio, self.clip.rate))


def pending(body: SegmentBody, param: str, num_codebooks: int, bins: int) -> Pending:
    """A segment's body checked against the model (codes' shape and range, audio's header), before any work."""
    if body.audio is not None:
        return Pending(body.speaker, body.text, clip=clip_base64(body.audio, f"{param}.audio"))
    if body.codes is None:
        return Pending(body.speaker, body.text)
    rows = {len(row) for row in body.codes}
    if len(body.codes) != num_codebooks or len(rows) != 1:
        shape = f"{len(body.codes)} rows of {'/'.join(map(str, sorted(rows))) or 0} codes"
        raise ApiError(
            400,
            f"{param}.codes: must be {num_codebooks} rows (one per codebook) of equal length, got {shape}",
            param=f"{param}.codes",
        )
    flat = [code for row in body.codes for code in row]
    if flat and not (0 <= min(flat) and max(flat) < bins):  # before torch, which takes no integer beyond 64 bits
        raise ApiError(400, f"{param}.codes: codes must be in 0..{bins - 1}", param=f"{param}.codes")
    return Pending(body.speaker, body.text, codes=torch.tensor(body.codes, dtype=torch.long))
