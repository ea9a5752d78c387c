"""The HTTP API: routes, the API-key and error middlewares, and the handlers.

A speech response streams as the engine yields chunks. A client that goes away stops its stream within a frame:
the runner cancels the handler when the connection is lost (`handler_cancellation`, see `serve.py`), which closes
the engine's iterator, and a write to a closed connection ends it too.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from assistant.audio.wavfile import pcm16
from assistant.segment import Segment

from .errors import ApiError, unavailable
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .schema import (
    OPENAI_MODELS,
    CodesBody,
    ReferenceBody,
    SegmentBody,
    SpeechBody,
    decode_audio,
    parse_json,
    read_audio,
    speaker_of,
    to_segment,
)
from .service import Engine, SpeechService
from .wire import CSM_CONTENT_TYPE, SAMPLE_RATE, audio_record, end_record, error_record, wav_header

log = logging.getLogger(__name__)

SERVICE = web.AppKey("service", SpeechService)
OPEN_PATHS = ("/health", "/metrics")  # a load balancer's probes and a scraper need no key
MAX_BODY = 32 * 1024 * 1024  # context audio sent as base64 WAV can be large
OUTCOME = "csm.outcome"
"""Request key: the status a stream ended with when its headers had already said 200."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(service: SpeechService) -> web.Application:
    app = web.Application(middlewares=[_errors, _auth], client_max_size=MAX_BODY)
    app[SERVICE] = service
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/codes", codes)
    app.router.add_post("/v1/audio/reference", reference)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as OpenAI's error JSON, and every answer counted by path and status."""
    route = request.match_info.route.resource
    path = route.canonical if route is not None else "unmatched"
    counted = request.app[SERVICE].metrics.request
    try:
        response = await handler(request)
    except ApiError as error:
        response = error.response()
    except web.HTTPException as error:  # aiohttp's own: no such path, wrong method, a body too large
        detail = "" if error.text in (None, f"{error.status}: {error.reason}") else f" ({error.text})"
        allowed = {"Allow": error.headers["Allow"]} if "Allow" in error.headers else None
        message = f"{request.method} {request.path}: {error.reason}{detail}"
        response = ApiError(error.status, message, headers=allowed).response()
    except asyncio.CancelledError:
        counted(path, 499)  # nginx's "client closed request"
        raise
    except Exception as error:  # a bug or the engine failing: said in one line, the traceback logged
        log.exception("%s %s failed", request.method, request.path)
        response = ApiError(500, f"{type(error).__name__}: {error}", type="server_error").response()
    counted(path, request.get(OUTCOME, response.status))
    return response


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[SERVICE].settings.api_key
    if key is not None and request.path not in OPEN_PATHS:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise ApiError(
                401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", code="invalid_api_key"
            )
    return await handler(request)


@dataclass(frozen=True)
class _Format:
    content_type: str
    head: bytes  # before the first chunk
    chunk: Callable[[Any], bytes]
    end: bytes = b""  # after the last chunk of a complete utterance
    error: Callable[[dict[str, Any]], bytes] | None = None  # a failure after the headers; None: cut the connection


FORMATS = {
    "pcm": _Format("audio/pcm", b"", lambda chunk: pcm16(chunk.audio)),
    "wav": _Format("audio/wav", wav_header(SAMPLE_RATE), lambda chunk: pcm16(chunk.audio)),
    "csm": _Format(
        CSM_CONTENT_TYPE, b"", lambda chunk: audio_record(chunk.codes, chunk.audio), end_record(), error_record
    ),
}


async def speech(request: web.Request) -> web.StreamResponse:
    """OpenAI's `POST /v1/audio/speech`, streamed, with CSM's context, reference voice and sampling settings."""
    arrived = time.monotonic()
    service = request.app[SERVICE]
    engine = service.serving()
    body = await parse_json(request, SpeechBody)
    _check_model(body.model, service.settings.model_id)
    if body.speed != 1.0:
        raise ApiError(400, f"speed {body.speed}: CSM speaks at its own pace; only 1.0 is supported", param="speed")
    if not body.input.strip():
        raise ApiError(400, "input is empty: give the text to speak", param="input")
    if len(body.input) > service.settings.max_input_chars:
        raise ApiError(
            413,
            f"input is {len(body.input)} characters; this server takes at most {service.settings.max_input_chars}",
            param="input",
            code="input_too_long",
        )
    speaker = speaker_of(body.voice)
    context = [await _segment(engine, segment, f"context.{i}") for i, segment in enumerate(body.context)]
    voice = await _segment(engine, body.reference, "reference") if body.reference is not None else None
    if voice is not None:
        _fits(engine, voice)
    form = FORMATS[body.response_format]
    async with service.admission.slot():
        with service.stream() as cancel:
            async with aclosing(
                engine.stream(
                    body.input,
                    speaker,
                    context,
                    body.temperature,
                    body.topk,
                    body.seed,
                    body.max_audio_ms,
                    cancel,
                    body.chunk_frames,
                    voice,
                )
            ) as chunks:
                first = await _first(chunks)
                service.metrics.first_chunk(time.monotonic() - arrived)
                response = web.StreamResponse(headers={"Content-Type": form.content_type})
                await response.prepare(request)
                await _send(request, response, form, first, chunks, cancel, service)
    return response


async def _first(chunks: AsyncIterator[Any]) -> Any | None:
    """The first chunk, before any header is sent: the engine's refusals (a sentence too long for the window) are
    still a 400."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None  # the model ended the utterance at once: an empty stream
    except ValueError as error:
        raise ApiError(400, str(error)) from None


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    form: _Format,
    first: Any | None,
    chunks: AsyncIterator[Any],
    cancel: asyncio.Event,
    service: SpeechService,
) -> None:
    metrics = service.metrics
    try:
        await response.write(form.head)
        if first is not None:
            await response.write(form.chunk(first))
            metrics.frames += first.codes.shape[1]
            async for chunk in chunks:
                await response.write(form.chunk(chunk))
                metrics.frames += chunk.codes.shape[1]
        if cancel.is_set():
            raise unavailable("the speech server shut down before the end of this speech")
        await response.write(form.end)
    except asyncio.CancelledError:  # the client left (see the module's docstring)
        metrics.abandoned += 1
        raise
    except ConnectionResetError:  # written to a connection the client had closed
        metrics.abandoned += 1
        request[OUTCOME] = 499
    except Exception as error:  # after the headers: the status can no longer say it
        metrics.abandoned += 1
        if isinstance(error, ApiError):
            failure = error
        else:
            log.exception("a speech stream failed mid-way")
            failure = ApiError(500, f"{type(error).__name__}: {error}", type="server_error")
        request[OUTCOME] = failure.status
        if form.error is not None:
            await response.write(form.error(failure.body()))
        elif request.transport is not None:
            request.transport.close()  # no final chunk: the client sees a cut stream, not a short complete one


async def codes(request: web.Request) -> web.Response:
    """Audio in (a WAV or other audio file as the body, or JSON `{"audio": base64}`), Mimi codes out."""
    engine = request.app[SERVICE].serving()
    if request.content_type == "application/json":
        audio, rate = decode_audio((await parse_json(request, CodesBody)).audio, "audio")
    else:
        audio, rate = read_audio(await request.read(), "the body")
    encoded = await engine.encode(audio, rate)
    return web.json_response(
        {
            "object": "audio.codes",
            "codec": engine.codec.fingerprint,
            "num_codebooks": encoded.shape[0],
            "frames": encoded.shape[1],
            "codes": encoded.tolist(),
        }
    )


async def reference(request: web.Request) -> web.Response:
    """`{"reference": segment}` -> the positions the voice takes in every prompt; 400 when it takes too many."""
    engine = request.app[SERVICE].serving()
    voice = await _segment(engine, (await parse_json(request, ReferenceBody)).reference, "reference")
    return web.json_response({"object": "audio.reference", "positions": _fits(engine, voice)})


async def models(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    engine = service.serving()
    facts = {
        "num_codebooks": engine.model.config.num_codebooks,
        "max_seq_len": engine.budget.max_seq_len,
        "codec": engine.codec.fingerprint,
        "slots": service.admission.slots,
        "sample_rate": SAMPLE_RATE,
    }
    model = {
        "id": service.settings.model_id,
        "object": "model",
        "created": service.created,
        "owned_by": "csm",
        "csm": facts,
    }
    return web.json_response({"object": "list", "data": [model]})


async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    service.serving()
    admission = service.admission
    return web.json_response({"status": service.phase, "active": admission.active, "queued": admission.queued})


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    admission = service.admission
    text = service.metrics.render(admission.active, admission.queued, admission.slots)
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def _check_model(model: str, served: str) -> None:
    if model not in (served, *OPENAI_MODELS):
        raise ApiError(
            404,
            f"model {model!r} is not served here: this server speaks with {served!r} (OpenAI's "
            f"{', '.join(OPENAI_MODELS)} name it too)",
            param="model",
            code="model_not_found",
        )


async def _segment(engine: Engine, body: SegmentBody, param: str) -> Segment:
    config = engine.model.config
    return await to_segment(body, param, config.num_codebooks, config.codec_bins, engine.encode)


def _fits(engine: Engine, voice: Segment) -> int:
    try:
        return engine.reference_positions(voice)
    except ValueError as error:
        raise ApiError(400, f"reference: {error}", param="reference", code="reference_too_long") from None
