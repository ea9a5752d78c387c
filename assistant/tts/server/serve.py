"""Run the server: listen at once (503 while the model loads), load it, serve until `stop` is set, then drain."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_log import AccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from .app import OPEN_PATHS, access_line, create_app
from .service import Engine, SpeechService

log = logging.getLogger(__name__)


class RequestLog(AccessLogger):
    """The access log (`app.access_line`: the request's id and its outcome, 499 for a client that left) without the
    load balancer's and the scraper's probes (`/health`, `/metrics`), which would otherwise be most of it."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request.path not in OPEN_PATHS:
            access_line(request, response.status, response.body_length, time)


class ListenError(RuntimeError):
    """The address cannot be listened on (taken, or not this machine's)."""


async def serve(service: SpeechService, load: Callable[[], Engine], stop: asyncio.Event) -> None:
    """Serve `service` with the engine `load` returns (called on a worker thread; its errors propagate)."""
    # handler_cancellation: a lost connection cancels its handler, which stops the stream (see app.py)
    runner = web.AppRunner(
        create_app(service), handler_cancellation=True, shutdown_timeout=5.0, access_log_class=RequestLog
    )
    await runner.setup()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        try:
            await web.TCPSite(runner, service.settings.host, service.settings.port).start()
        except OSError as error:
            where = f"{service.settings.host}:{service.settings.port}"
            raise ListenError(f"cannot listen on {where}: {error.strerror or error}") from None
        loading = asyncio.ensure_future(asyncio.to_thread(load))
        await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not loading.done():
            log.info("stopped while the model was loading")
            return
        service.ready(loading.result())
        host, port = runner.addresses[0][:2]
        log.info(
            "speech server ready at http://%s:%d/v1 (model %s, %d stream(s) at once, up to %d waiting)",
            host,
            port,
            service.settings.model_id,
            service.admission.slots,
            service.settings.max_queue,
        )
        await stopping
        log.info("stopping: draining %d open stream(s)", service.admission.active)
        await service.drain(service.settings.drain_s)
    finally:
        stopping.cancel()
        await runner.cleanup()
