"""The HTTP API: routes, the API-key and error middlewares, and the handlers.

A speech response streams as the engine yields chunks. A client that goes away stops its stream within a frame:
the runner cancels the handler when the connection is lost (`handler_cancellation`, see `serve.py`), which closes
the engine's iterator, and a write to a closed connection ends it too.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.log import access_logger
from aiohttp.web_request import BaseRequest

from assistant.audio.wavfile import pcm16
from assistant.segment import Segment
from assistant.tts.csm.budget import FRAME_MS
from assistant.tts.csm.speech_plan import REFERENCE_SHARE

from .errors import ApiError, unavailable
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .schema import (
    OPENAI_MODELS,
    CodesBody,
    Pending,
    ReferenceBody,
    SegmentBody,
    SpeechBody,
    bound_audio,
    clip,
    clip_base64,
    parse_json,
    pending,
    speaker_of,
)
from .service import Engine, SpeechService
from .wire import CSM_CONTENT_TYPE, SAMPLE_RATE, audio_record, end_record, error_record, wav_header

log = logging.getLogger(__name__)

SERVICE = web.AppKey("service", SpeechService)
OPEN_PATHS = ("/health", "/metrics")  # a load balancer's probes and a scraper need no key
MAX_BODY = 32 * 1024 * 1024  # context audio sent as base64 WAV can be large
OUTCOME = "csm.outcome"
"""Request key: the status a stream ended with when its headers had already said 200."""
REQUEST_ID, ID_HEADER = "csm.request_id", "X-Request-Id"
CORS_ORIGIN = "csm.cors_origin"
"""Request key: the origin a CORS answer names (the request's, when `--cors-origins` allows it)."""
_GIVEN_ID = re.compile(r"[\x21-\x7e]{1,128}")  # a client's request id is kept when it is this: visible ASCII
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(service: SpeechService) -> web.Application:
    app = web.Application(middlewares=[_errors, _cors, _auth], client_max_size=MAX_BODY)
    app[SERVICE] = service
    app.router.add_post("/v1/audio/speech", speech)
    app.router.add_post("/v1/audio/codes", codes)
    app.router.add_post("/v1/audio/reference", reference)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{id:.+}", model)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.on_response_prepare.append(_headers)  # type: ignore[arg-type]  # aiosignal's generics confuse mypy
    return app


def access_line(request: BaseRequest, status: int, size: int | None, seconds: float) -> None:
    """The access log's line for a request (`serve.RequestLog`; a request whose client left, from `_errors`)."""
    access_logger.info(
        '%s "%s %s HTTP/%d.%d" %d %s %.3fs id=%s "%s"',
        request.remote,
        request.method,
        request.path_qs,
        *request.version,
        request.get(OUTCOME, status),
        "-" if size is None else size,
        seconds,
        request.get(REQUEST_ID, "-"),
        request.headers.get("User-Agent", "-"),
    )


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """On every answer: the request's id, and CORS's headers where its origin is allowed."""
    if REQUEST_ID in request:
        response.headers[ID_HEADER] = request[REQUEST_ID]
    if request.app[SERVICE].settings.cors_origins:
        response.headers["Vary"] = "Origin"  # the answer depends on it: caches must not give it to another origin
    if (origin := request.get(CORS_ORIGIN)) is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = f"{ID_HEADER}, Retry-After"


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every refusal as OpenAI's error JSON, every answer counted by path and status, every request given an id
    (the client's `X-Request-Id`, or a new one) and a line in the access log, one whose client left included."""
    started = time.monotonic()
    given = request.headers.get(ID_HEADER, "")
    request[REQUEST_ID] = given if _GIVEN_ID.fullmatch(given) else uuid.uuid4().hex
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
        if path not in OPEN_PATHS:
            access_line(request, 499, None, time.monotonic() - started)
        raise
    except Exception as error:  # a bug or the engine failing: said in one line, the traceback logged
        log.exception("%s %s failed", request.method, request.path)
        response = ApiError(500, f"{type(error).__name__}: {error}", type="server_error").response()
    counted(path, request.get(OUTCOME, response.status))
    return response


@web.middleware
async def _cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the origins `--cors-origins` allows (none by default): their preflights answered here, before the
    key is asked for (a browser sends none with them), and their answers marked (`_headers`)."""
    allowed, origin = request.app[SERVICE].settings.cors_origins, request.headers.get("Origin")
    if origin is None or not ("*" in allowed or origin in allowed):
        return await handler(request)
    request[CORS_ORIGIN] = origin
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        asked = request.headers.get("Access-Control-Request-Headers", "Authorization, Content-Type")
        headers = {"Access-Control-Allow-Methods": "GET, POST, OPTIONS", "Access-Control-Max-Age": "600"}
        return web.Response(status=204, headers={**headers, "Access-Control-Allow-Headers": asked})
    return await handler(request)


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[SERVICE].settings.api_key
    if key is not None and request.path not in OPEN_PATHS:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        given_bytes = given.strip().encode(errors="surrogateescape")  # as aiohttp decoded the header's bytes
        if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, key.encode()):
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
    """OpenAI's `POST /v1/audio/speech`, streamed, with CSM's context, reference voice and sampling settings.

    Everything a request brings is checked before any work (400 naming the field); its audio is decoded and encoded
    once it holds a slot, between the engine's frames (`BatchedCSMEngine.encode`)."""
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
    context = [_pending(engine, segment, f"context.{i}") for i, segment in enumerate(body.context)]
    bound_audio([segment.clip for segment in context], _window_s(engine), "context")
    voice = _pending(engine, body.reference, "reference") if body.reference is not None else None
    if voice is not None:
        limit_s = (engine.budget.max_seq_len // REFERENCE_SHARE - 1) * FRAME_MS / 1000
        bound_audio([voice.clip], limit_s, "reference", f"the {REFERENCE_SHARE}th of the window a voice may take")
    form = FORMATS[body.response_format]
    sse = body.stream_format == "sse"
    async with service.admission.slot():
        segments = [await segment.segment(engine.encode) for segment in context]
        reference = await voice.segment(engine.encode) if voice is not None else None
        if reference is not None:
            _fits(engine, reference)
        with service.stream(request[REQUEST_ID]) as cancel:
            async with aclosing(
                engine.stream(
                    body.input,
                    speaker,
                    segments,
                    body.temperature,
                    body.topk,
                    body.seed,
                    body.max_audio_ms,
                    cancel,
                    body.chunk_frames,
                    reference,
                )
            ) as chunks:
                first = await _first(chunks)
                service.metrics.first_chunk(time.monotonic() - arrived)
                kind = "text/event-stream" if sse else form.content_type
                response = web.StreamResponse(headers={"Content-Type": kind, "Cache-Control": "no-cache"})
                await response.prepare(request)
                tokens = len(engine.prompts.text.encode(body.input, speaker)) if sse else None
                await _send(request, response, form, first, chunks, cancel, service, tokens)
    return response


async def _first(chunks: AsyncIterator[Any]) -> Any | None:
    """The first chunk, before any header is sent: the engine's refusals (a sentence too long for the window) are
    still a 400."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None  # the model ended the utterance at once: an empty stream
    except ValueError as error:  # "topk 150 is above ..." names its field
        field = str(error).split(" ", 1)[0]
        raise ApiError(400, str(error), param=field if field in SpeechBody.model_fields else None) from None


def _event(kind: str, **fields: Any) -> bytes:
    """One server-sent event as OpenAI's speech stream sends them: `data: {"type": kind, ...}`."""
    return f"data: {json.dumps({'type': kind, **fields})}\n\n".encode()


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    form: _Format,
    first: Any | None,
    chunks: AsyncIterator[Any],
    cancel: asyncio.Event,
    service: SpeechService,
    sse_tokens: int | None,
) -> None:
    """The stream's bytes in `form`; with `sse_tokens` (the input's tokens), each piece as OpenAI's
    `speech.audio.delta` event (base64), then `speech.audio.done` with the usage (output tokens: frames)."""
    metrics, frames = service.metrics, 0

    async def out(data: bytes) -> None:
        if data:
            await response.write(
                _event("speech.audio.delta", audio=base64.b64encode(data).decode()) if sse_tokens is not None else data
            )

    try:
        await out(form.head)
        chunk = first
        while chunk is not None:
            await out(form.chunk(chunk))
            metrics.frames += chunk.codes.shape[1]
            frames += chunk.codes.shape[1]
            chunk = await anext(chunks, None)
        if cancel.is_set():
            raise unavailable("the speech server shut down before the end of this speech")
        await out(form.end)
        if sse_tokens is not None:
            usage = {"input_tokens": sse_tokens, "output_tokens": frames, "total_tokens": sse_tokens + frames}
            await response.write(_event("speech.audio.done", usage=usage))
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
            log.exception("a speech stream failed mid-way (request %s)", request[REQUEST_ID])
            failure = ApiError(500, f"{type(error).__name__}: {error}", type="server_error")
        request[OUTCOME] = failure.status
        if sse_tokens is not None:
            await response.write(_event("error", **failure.body()))
        elif form.error is not None:
            await response.write(form.error(failure.body()))
        elif request.transport is not None:
            request.transport.close()  # no final chunk: the client sees a cut stream, not a short complete one


async def codes(request: web.Request) -> web.Response:
    """Audio in (a WAV or other audio file as the body, or JSON `{"audio": base64}`), Mimi codes out; encoded once
    the request holds a slot, as a speech request's context."""
    service = request.app[SERVICE]
    engine = service.serving()
    if request.content_type == "application/json":
        audio = clip_base64((await parse_json(request, CodesBody)).audio, "audio")
    else:
        audio = clip(await request.read(), "the body")
    bound_audio([audio], _window_s(engine), audio.param)
    async with service.admission.slot():
        encoded = await Pending(0, "", clip=audio).segment(engine.encode)
    assert encoded.codes is not None
    return web.json_response(
        {
            "object": "audio.codes",
            "codec": engine.codec.fingerprint,
            "num_codebooks": encoded.codes.shape[0],
            "frames": encoded.codes.shape[1],
            "codes": encoded.codes.tolist(),
        }
    )


async def reference(request: web.Request) -> web.Response:
    """`{"reference": segment}` -> the positions the voice takes in every prompt; 400 when it takes too many."""
    service = request.app[SERVICE]
    engine = service.serving()
    voice = _pending(engine, (await parse_json(request, ReferenceBody)).reference, "reference")
    bound_audio([voice.clip], _window_s(engine), "reference")
    async with service.admission.slot():
        segment = await voice.segment(engine.encode)
    return web.json_response({"object": "audio.reference", "positions": _fits(engine, segment)})


async def models(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response(
        {"object": "list", "data": [_model(service, service.serving(), service.settings.model_id)]}
    )


async def model(request: web.Request) -> web.Response:
    """OpenAI's `GET /v1/models/{id}`: the served model, under its own id or an OpenAI name."""
    service = request.app[SERVICE]
    engine, name = service.serving(), request.match_info["id"]
    if name not in (service.settings.model_id, *OPENAI_MODELS):
        raise ApiError(404, f"the model {name!r} does not exist here", param="model", code="model_not_found")
    return web.json_response(_model(service, engine, name))


def _model(service: SpeechService, engine: Engine, name: str) -> dict[str, Any]:
    facts = {
        "num_codebooks": engine.model.config.num_codebooks,
        "max_seq_len": engine.budget.max_seq_len,
        "codec": engine.codec.fingerprint,
        "slots": service.admission.slots,
        "sample_rate": SAMPLE_RATE,
    }
    return {"id": name, "object": "model", "created": service.created, "owned_by": "csm", "csm": facts}


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


def _pending(engine: Engine, body: SegmentBody, param: str) -> Pending:
    return pending(body, param, engine.model.config.num_codebooks, engine.model.config.codec_bins)


def _window_s(engine: Engine) -> float:
    """The seconds of audio the model's window holds."""
    return engine.budget.max_seq_len * FRAME_MS / 1000


def _fits(engine: Engine, voice: Segment) -> int:
    try:
        return engine.reference_positions(voice)
    except ValueError as error:
        raise ApiError(400, f"reference: {error}", param="reference", code="reference_too_long") from None
