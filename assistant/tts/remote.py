"""RemoteCSM: the CSM engine's interface, served by a speech server (`python -m assistant.tts.server`) over HTTP.

Speech comes as the server's "csm" record stream (`assistant/tts/server/wire.py`): each chunk's codes and its
float32 audio, so replies keep their codes for the conversation as with a local engine. Context and reference
segments travel as codes; a segment with only audio is encoded by the server first (`/v1/audio/codes`).
Closing a stream (or setting its cancel event) closes its HTTP response, which frees the server's slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import aiohttp
import numpy as np
import torch

from assistant.segment import Segment
from assistant.tts.csm.budget import Budget
from assistant.tts.csm.engine import AudioChunk, CancelSignal, GenerationResult
from assistant.tts.server.wire import AUDIO, END, ERROR, Record, float_wav, read_record

T = TypeVar("T")


class SpeechServerError(RuntimeError):
    """The speech server could not be reached, or refused or failed a request; the message says which and why."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class RemoteCodec:
    fingerprint: str  # the server's `MimiCodec.fingerprint`


class RemoteCSM:
    """`await RemoteCSM(url).start()` (or `async with`) asks the server for its model's facts; then use it as a
    CSMEngine, on the event loop it started on (`generate` and `reference_positions` block, so call those from
    another thread, as `asyncio.to_thread` does)."""

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout_s = timeout_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.model_id = ""
        self.num_codebooks = 0
        self.codec = RemoteCodec("")
        self.budget = Budget()

    async def start(self) -> RemoteCSM:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s)
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=timeout)
        self._loop = asyncio.get_running_loop()
        try:
            async with self._request("GET", "/v1/models") as response:
                model = (await response.json())["data"][0]
            facts = model["csm"]
            self.model_id, self.num_codebooks = model["id"], facts["num_codebooks"]
            self.codec, self.budget = RemoteCodec(facts["codec"]), Budget(max_seq_len=facts["max_seq_len"])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            await self.aclose()
            raise SpeechServerError(f"{self.url}/v1/models is not a CSM speech server's answer ({error!r})") from None
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> RemoteCSM:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def stream(
        self,
        text: str,
        speaker: int = 1,
        context: Sequence[Segment] = (),
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        max_audio_ms: float | None = None,
        cancel: CancelSignal | None = None,
        chunk_frames: int = 1,
        reference: Segment | None = None,
    ) -> AsyncGenerator[AudioChunk, None]:
        """As `CSMEngine.stream`: chunks as the server generates them."""
        body: dict[str, Any] = {
            "model": self.model_id,
            "input": text,
            "voice": str(speaker),
            "response_format": "csm",
            "context": [await self._segment(s) for s in context],
            "temperature": temperature,
            "topk": topk,
            "seed": seed,
            "max_audio_ms": max_audio_ms,
            "chunk_frames": chunk_frames,
        }
        if reference is not None:
            body["reference"] = await self._segment(reference)
        async with self._request("POST", "/v1/audio/speech", json=body) as response:
            ended = False
            try:
                while not ended and (cancel is None or not cancel.is_set()):
                    record = await self._record(response)
                    if ended := record.kind == END:
                        await response.content.read()  # the body's end: the connection is kept for the next request
                    else:
                        assert record.codes is not None and record.audio is not None
                        yield AudioChunk(record.audio, record.codes)
            finally:
                if not ended:
                    response.close()  # the connection closes, and the server stops the stream within a frame

    async def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Mimi codes `[K, frames]` of mono audio at any rate, encoded by the server."""
        wav = float_wav(audio, sample_rate)
        async with self._request(
            "POST", "/v1/audio/codes", data=wav, headers={"Content-Type": "audio/wav"}
        ) as response:
            reply = await response.json()
        return torch.tensor(reply["codes"], dtype=torch.long).reshape(reply["num_codebooks"], reply["frames"])

    def generate(
        self,
        text: str,
        speaker: int = 1,
        context: Sequence[Segment] = (),
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        max_audio_ms: float | None = None,
        cancel: CancelSignal | None = None,
        reference: Segment | None = None,
    ) -> GenerationResult:
        """All of it at once (blocking). The audio is the streamed decode of the frames, where a local engine's
        `generate` decodes them in one go; the codes are the same. It still comes in pieces of a few frames: the
        timeout is between pieces, and a server on a slow CPU took over 10 s for 50 frames."""
        chunks = self.stream(
            text, speaker, context, temperature, topk, seed, max_audio_ms, cancel, chunk_frames=8, reference=reference
        )
        return self._blocking(self._whole(chunks))

    def reference_positions(self, reference: Segment) -> int:
        """The positions `reference` takes in every prompt, as the server counts them (blocking); ValueError with the
        server's reason when the voice is too long."""
        return self._blocking(self._positions(reference))

    async def _whole(self, stream: AsyncIterator[AudioChunk]) -> GenerationResult:
        chunks = [chunk async for chunk in stream]
        if not chunks:
            return GenerationResult(torch.zeros(self.num_codebooks, 0, dtype=torch.long), np.zeros(0, np.float32))
        return GenerationResult(torch.cat([c.codes for c in chunks], dim=1), np.concatenate([c.audio for c in chunks]))

    async def _positions(self, reference: Segment) -> int:
        try:
            body = {"reference": await self._segment(reference)}
            async with self._request("POST", "/v1/audio/reference", json=body) as response:
                return int((await response.json())["positions"])
        except SpeechServerError as error:
            if error.code == "reference_too_long":
                raise ValueError(error.detail.removeprefix("reference: ")) from None
            raise

    def _blocking(self, work: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            work.close()
            raise RuntimeError("RemoteCSM is not started: `await engine.start()` first")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            work.close()
            raise RuntimeError(
                "this RemoteCSM call blocks: make it from another thread (asyncio.to_thread), not its event loop"
            )
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _segment(self, segment: Segment) -> dict[str, Any]:
        codes = segment.codes
        if codes is None and segment.audio is not None:
            codes = await self.encode(segment.audio, segment.sample_rate)
        body: dict[str, Any] = {"speaker": segment.speaker, "text": segment.text}
        if codes is not None:
            body["codes"] = codes[: self.num_codebooks].tolist()
        return body

    async def _record(self, response: aiohttp.ClientResponse) -> Record:
        try:
            record = await read_record(response.content.readexactly)
        except asyncio.IncompleteReadError:
            raise SpeechServerError(f"the speech server at {self.url} cut the stream short") from None
        if record.kind == ERROR:
            error = (record.error or {}).get("error", {})
            raise SpeechServerError(f"the speech server at {self.url} failed mid-stream: {error.get('message')}")
        assert record.kind in (AUDIO, END)
        return record

    @asynccontextmanager
    async def _request(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """A 200 response, or SpeechServerError naming the server, the path and the reason."""
        if self._session is None:
            raise RuntimeError("RemoteCSM is not started: `await engine.start()` first")
        try:
            async with self._session.request(method, self.url + path, **kwargs) as response:
                if response.status != 200:
                    raise await _refusal(response, self.url + path)
                yield response
        except aiohttp.ClientConnectorError as error:
            raise SpeechServerError(f"cannot reach the speech server at {self.url}: {error}") from None
        except aiohttp.ClientError as error:  # the connection broke, or the response was malformed
            raise SpeechServerError(f"the speech server at {self.url}{path}: {type(error).__name__}: {error}") from None
        except asyncio.TimeoutError:
            raise SpeechServerError(
                f"the speech server at {self.url} did not answer within {self.timeout_s:g} s"
            ) from None


async def _refusal(response: aiohttp.ClientResponse, url: str) -> SpeechServerError:
    try:
        error = (await response.json(content_type=None))["error"]
        message, code = str(error["message"]), error.get("code")
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        message, code = (await response.text())[:200].strip() or response.reason or "", None
    said = f"the speech server refused {url} ({response.status}): {message}"
    return SpeechServerError(said, response.status, code, message)
