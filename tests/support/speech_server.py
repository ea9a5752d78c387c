"""The CSM speech server for tests: in this process on a thread of its own (over an engine already loaded), or the
real CLI, `python -m assistant.tts.server`, in a subprocess. Both listen on a free port on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from assistant.tts.server.serve import serve
from assistant.tts.server.service import Engine, Settings, SpeechService
from tests.support.processes import free_port, wait_until

MODEL_ID = "tiny-csm"


@dataclass(frozen=True)
class Answer:
    status: int  # 0: nothing answered
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(url: str, body: bytes | dict | None = None, timeout_s: float = 30, **headers: str) -> Answer:
    """One HTTP request, a GET without a body, else a POST (a dict goes as JSON); errors are answers too."""
    if isinstance(body, dict):
        body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout_s) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())
    except OSError:
        return Answer(0, {}, b"")


def get(url: str) -> tuple[int, bytes]:
    """A GET's status and body (errors included); 0 when nothing answers."""
    answer = request(url, timeout_s=5)
    return answer.status, answer.body


@contextmanager
def open_stream(url: str, body: dict) -> Iterator[http.client.HTTPResponse]:
    """A speech request whose response is read as the test wants; the connection closes when the block ends."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        connection.request("POST", parts.path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
        yield response
    finally:
        connection.close()


def metric(url: str, name: str) -> float:
    """One sample of the server's /metrics (0 when absent)."""
    for line in get(f"{url}/metrics")[1].decode().splitlines():
        if line.startswith(f"{name} ") or line.startswith(f"{name}{{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class ServerThread:
    """`with ServerThread(engine, max_queue=0) as server:` serves `engine` at `server.url` until the block ends."""

    def __init__(self, engine: Engine, **settings: Any) -> None:
        self.engine = engine
        self.port = free_port()
        self.service = SpeechService(Settings(MODEL_ID, port=self.port, **settings))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="speech-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        await serve(self.service, lambda: self.engine, self._stop)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        wait_until(lambda: get(f"{self.url}/health")[0] == 200, 30, "the speech server")
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


class ServerProcess:
    """The CLI with `args` (a free `--port` added); `with` waits until /health says ready, and stops it with SIGTERM."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.args = [sys.executable, "-m", "assistant.tts.server", *args, "--port", str(self.port)]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self.health: list[tuple[int, Any]] = []  # each status /health gave while it started, with its JSON

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        wait_until(self._ready, 300, f"the speech server ({self.log})")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"the speech server exited with {self.process.returncode}: {self.output()}")
        status, body = get(f"{self.url}/health")
        if status:
            self.health.append((status, json.loads(body)))
        return status == 200

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, and the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
