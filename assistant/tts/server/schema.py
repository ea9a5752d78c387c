"""Request bodies: OpenAI's speech request with CSM's extensions, checked field by field (400 naming the field)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import numpy as np
import torch
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from assistant.audio.wavfile import WavError, read_audio_bytes
from assistant.segment import Segment

from .errors import ApiError

OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer")
"""OpenAI's voice names, standing for CSM speakers 0 to 9 in this order."""
OPENAI_MODELS = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
"""OpenAI's speech model names, taken for the served model so that clients written for OpenAI work unchanged."""

Body = TypeVar("Body", bound=BaseModel)
Encoder = Callable[[np.ndarray, int], Awaitable[torch.Tensor]]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SegmentBody(_Strict):
    """One utterance of the conversation: its Mimi codes (K rows of frames), or audio (base64 of a WAV or any audio
    file), or neither (text only)."""

    speaker: int = Field(ge=0, le=9)
    text: str
    codes: list[list[int]] | None = None
    audio: str | None = None

    @model_validator(mode="after")
    def _codes_or_audio(self) -> SegmentBody:
        if self.codes is not None and self.audio is not None:
            raise ValueError("give codes or audio, not both")
        return self


class SpeechBody(_Strict):
    model: str
    input: str
    voice: str | int
    response_format: Literal["pcm", "wav", "csm"] = "wav"
    speed: float = 1.0
    context: list[SegmentBody] = Field(default_factory=list)
    reference: SegmentBody | None = None
    temperature: float = Field(0.9, ge=0, le=5)
    topk: int = Field(50, ge=1, le=2051)
    seed: int | None = None
    max_audio_ms: float | None = Field(None, gt=0, le=120_000)
    chunk_frames: int = Field(1, ge=1, le=50)


class CodesBody(_Strict):
    audio: str


class ReferenceBody(_Strict):
    reference: SegmentBody


async def parse_json(request: web.Request, model: type[Body]) -> Body:
    try:
        data = json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ApiError(400, f"unknown field '{where}'", param=where) from None
        raise ApiError(400, f"{where}: {first['msg']}", param=where) from None


def speaker_of(voice: str | int) -> int:
    """A CSM speaker id ("0".."9") or an OpenAI voice name (alloy = 0 ... shimmer = 9)."""
    name = str(voice).strip().lower()
    if name in OPENAI_VOICES:
        return OPENAI_VOICES.index(name)
    if name.isdigit() and int(name) <= 9:
        return int(name)
    raise ApiError(
        400,
        f"unknown voice {voice!r}: use a CSM speaker id 0-9, or one of {', '.join(OPENAI_VOICES)} (0-9 in this order)",
        param="voice",
    )


def decode_audio(text: str, param: str) -> tuple[np.ndarray, int]:
    """Base64 of an audio file -> mono float32 and its rate."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: not base64", param=param) from None
    return read_audio(data, param)


def read_audio(data: bytes, param: str) -> tuple[np.ndarray, int]:
    try:
        return read_audio_bytes(data, param)
    except WavError as error:
        raise ApiError(400, str(error), param=param) from None


async def to_segment(body: SegmentBody, param: str, num_codebooks: int, bins: int, encode: Encoder) -> Segment:
    """The engine's Segment, with codes: given ones checked against the model, audio encoded by `encode`."""
    if body.audio is not None:
        codes = await encode(*decode_audio(body.audio, f"{param}.audio"))
        return Segment(body.speaker, body.text, codes=codes)
    if body.codes is None:
        return Segment(body.speaker, body.text)
    rows = {len(row) for row in body.codes}
    if len(body.codes) != num_codebooks or len(rows) != 1:
        shape = f"{len(body.codes)} rows of {'/'.join(map(str, sorted(rows))) or 0} codes"
        raise ApiError(
            400,
            f"{param}.codes: must be {num_codebooks} rows (one per codebook) of equal length, got {shape}",
            param=f"{param}.codes",
        )
    codes = torch.tensor(body.codes, dtype=torch.long)
    if codes.numel() and not (0 <= int(codes.min()) and int(codes.max()) < bins):
        raise ApiError(400, f"{param}.codes: codes must be in 0..{bins - 1}", param=f"{param}.codes")
    return Segment(body.speaker, body.text, codes=codes)
