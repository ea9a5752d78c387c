"""What goes over the wire between the speech server and its clients, besides JSON.

The "csm" response format is a stream of records, each an 8-byte little-endian header `kind: u8, codebooks: u8,
frames: u16, size: u32` and a payload:

- kind 1, audio: `codebooks x frames` int16 Mimi codes (codebook-major, as `codes[k, t]`), then `size` float32
  samples at 24 kHz: the chunk's frames and their audio exactly as the engine made them.
- kind 2, error: `size` bytes of UTF-8 JSON, OpenAI's error shape: the stream failed (or the server shut down)
  after it had begun, so the HTTP status could no longer say it.
- kind 0, end (all fields 0): the utterance is complete. A stream that stops without it was cut short.

Float32 audio keeps a remote engine's audio identical to a local one's at 96 kB/s per stream, next to nothing
beside the model's cost; codes fit int16 (Mimi's codebooks have 2048 entries).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

SAMPLE_RATE = 24_000
CSM_CONTENT_TYPE = "application/x-csm-records"
RECORD = struct.Struct("<BBHI")
END, AUDIO, ERROR = 0, 1, 2
STREAMING_SIZE = 0xFFFFFFFF
"""A streamed WAV's RIFF and data sizes: unknown while it is sent, so the largest (as OpenAI's streamed WAV)."""


@dataclass(frozen=True)
class Record:
    kind: int
    codes: torch.Tensor | None = None  # LongTensor [codebooks, frames] (audio records)
    audio: np.ndarray | None = None  # float32, 24 kHz (audio records)
    error: dict[str, Any] | None = None  # {"error": {...}} (error records)


def audio_record(codes: torch.Tensor, audio: np.ndarray) -> bytes:
    k, frames = codes.shape
    samples = np.ascontiguousarray(audio, "<f4")
    return RECORD.pack(AUDIO, k, frames, samples.size) + codes.numpy().astype("<i2").tobytes() + samples.tobytes()


def error_record(error: dict[str, Any]) -> bytes:
    body = json.dumps(error).encode()
    return RECORD.pack(ERROR, 0, 0, len(body)) + body


def end_record() -> bytes:
    return RECORD.pack(END, 0, 0, 0)


async def read_record(read: Callable[[int], Awaitable[bytes]]) -> Record:
    """The next record, `read(n)` giving exactly n bytes (`asyncio.StreamReader.readexactly`, which raises
    IncompleteReadError at a premature end)."""
    kind, k, frames, size = RECORD.unpack(await read(RECORD.size))
    if kind == AUDIO:
        codes = np.frombuffer(await read(2 * k * frames), "<i2").reshape(k, frames)
        audio = np.frombuffer(await read(4 * size), "<f4").astype(np.float32)
        return Record(AUDIO, torch.from_numpy(codes.astype(np.int64)), audio)
    if kind == ERROR:
        return Record(ERROR, error=json.loads(await read(size)))
    if kind == END:
        return Record(END)
    raise ValueError(f"not a csm record stream (record kind {kind})")


def wav_header(rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono PCM WAV header for a stream of unknown length."""
    return (
        b"RIFF"
        + struct.pack("<I", STREAMING_SIZE)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
        + b"data"
        + struct.pack("<I", STREAMING_SIZE)
    )


def float_wav(audio: np.ndarray, rate: int) -> bytes:
    """Mono audio as a float32 WAV file's bytes: sent for encoding, it reaches Mimi unchanged."""
    import soundfile

    out = io.BytesIO()
    soundfile.write(out, np.asarray(audio, np.float32), rate, subtype="FLOAT", format="WAV")
    return out.getvalue()
