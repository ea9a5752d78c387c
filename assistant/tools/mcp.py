"""MCP servers' tools, through the official SDK: programs started over stdio, or servers reached over streamable HTTP.

`McpServers.start()` connects to every configured server side by side, lists its tools and registers each as a
`Tool` of source `mcp:<name>`. A server that cannot start, or that stops later (its process exits, its connection
is lost), is reported once through `report` and its tools are withdrawn; the assistant goes on without them.

Each connection lives in a task of its own that holds the SDK's context managers (anyio wants them entered and left
in one task); tools are called from the caller's task on that connection's session, so cancelling the caller
cancels the call on the server (the SDK sends `notifications/cancelled`, or over 2026 HTTP aborts the request).
A stdio server's stderr is logged at debug level and its last lines go into reports. Over HTTP, where a dead server
shows only when asked, the connection is probed every `probe_interval_s` (a tools/list).

A stdio server gets the assistant's environment when `env` is null, else `env` over a minimal one (PATH, HOME, ...:
the SDK's default). Tool names that OpenAI-style APIs refuse are given with `_` for each character they refuse.
A server is not restarted once it has gone, and a changed tool list is not fetched again.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import os
import re
import shlex
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TextIO

import anyio
import httpx2
from mcp import Client, MCPError, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from assistant.config import McpServerConfig, ToolsConfig
from assistant.llm.backend import ToolSpec
from assistant.tools.registry import ToolError, ToolRegistry

log = logging.getLogger(__name__)

CLIENT_INFO = types.Implementation(name="csm-voice-assistant", version="0.1.0")
MAX_PAGES = 100  # of a tools/list answer: a server whose cursor never ends cannot hang the start
STDERR_LINES = 20
CLOSE_TIMEOUT_S = 10.0  # for a polite close (an HTTP session's DELETE); a stdio server is stopped within ~6 s
PYTHON = ("python", "python3")  # the assistant's own interpreter: a Python server finds the packages it has
_NAME = re.compile(r"[^A-Za-z0-9_-]")  # what OpenAI-style function names may not contain


class McpServers:
    """The configured MCP servers: `await start()` once, `await aclose()` at the end (or `async with`)."""

    def __init__(
        self,
        servers: list[McpServerConfig],
        registry: ToolRegistry,
        report: Callable[[str], None],
        start_timeout_s: float = 20.0,
        *,
        probe_interval_s: float = 30.0,
    ) -> None:
        self.servers = [McpServer(config, registry, report, start_timeout_s, probe_interval_s) for config in servers]

    async def start(self) -> None:
        """Connect to every server at once and register their tools; one that fails is reported and skipped."""
        await asyncio.gather(*(server.start() for server in self.servers))

    async def aclose(self) -> None:
        """End every connection and stop every server process."""
        await asyncio.gather(*(server.aclose() for server in self.servers))

    @classmethod
    def from_config(cls, tools: ToolsConfig, registry: ToolRegistry, report: Callable[[str], None]) -> McpServers:
        return cls(tools.mcp, registry, report, tools.start_timeout_s)

    def connected(self) -> list[str]:
        """The names of the servers whose tools are registered now."""
        return [server.name for server in self.servers if server.connected]

    async def __aenter__(self) -> McpServers:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class McpTool:
    """One tool of an MCP server; the name the model sees may differ from the server's (see `_NAME`)."""

    def __init__(self, server: McpServer, tool: types.Tool) -> None:
        self.server, self.name, self.source = server, tool.name, server.source
        parameters = dict(tool.input_schema) or {"type": "object", "properties": {}}
        parameters.setdefault("type", "object")
        parameters.pop("title", None)
        description = inspect.cleandoc(tool.description or tool.title or tool.name)
        self.spec = ToolSpec(_NAME.sub("_", tool.name)[:64], description, parameters)

    async def call(self, arguments: dict[str, Any]) -> str:
        return await self.server.call(self.name, arguments)


class McpServer:
    """The connection to one server, held by a task of its own from `start()` to `aclose()` or the server's end."""

    def __init__(
        self,
        config: McpServerConfig,
        registry: ToolRegistry,
        report: Callable[[str], None],
        start_timeout_s: float,
        probe_interval_s: float = 30.0,
    ) -> None:
        self.config, self.registry, self._report = config, registry, report
        self.name, self.source = config.name, f"mcp:{config.name}"
        self.start_timeout_s, self.probe_interval_s = start_timeout_s, probe_interval_s
        where = config.url if config.command is None else shlex.join([config.command, *config.args])
        self.label = f"MCP server {config.name!r} ({where})"
        self.tools: list[McpTool] = []
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._scope: anyio.CancelScope | None = None
        self._wake = asyncio.Event()  # set to leave the connection: stopping, or the server closed it
        self._stopping = False
        self._server_closed = False  # its stdout (or the HTTP stream) ended without our asking
        self._stderr = _StderrTail(config.name)

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        """Connect, list and register the tools; returns when that is done or has failed (never raises)."""
        if self._task is not None:
            return
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(started), name=f"mcp {self.name}")
        await asyncio.shield(started)

    async def aclose(self) -> None:
        """Close the connection (a stdio server's stdin, then SIGTERM and SIGKILL as needed) and wait for it."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        if self._client is None and self._scope is not None:
            self._scope.cancel()  # a start still under way
        if not (await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S))[0] and self._scope is not None:
            log.warning("%s: not closed after %g s; cancelling", self.label, CLOSE_TIMEOUT_S)
            self._scope.cancel()
            await asyncio.wait({self._task})

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        client = self._client
        if client is None:
            raise ToolError(f"{self.label} is not connected")
        try:
            result = await client.call_tool(name, arguments)
        except MCPError as error:
            if error.code == types.CONNECTION_CLOSED:
                raise ToolError(f"{self.label} {'exited' if self._server_closed else 'lost its connection'}") from None
            raise ToolError(error.message) from None
        except Exception as error:  # a result the SDK refused (schema, shape): the call failed
            log.debug("%s: %s failed", self.label, name, exc_info=True)
            raise ToolError(f"{type(error).__name__}: {error}") from None
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or "the tool failed")
        return text

    async def _run(self, started: asyncio.Future[None]) -> None:
        running = False
        failure: BaseException | None = None
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + self.start_timeout_s) as self._scope:
                if self._stopping:
                    self._scope.cancel()
                async with Client(self._transport(), client_info=CLIENT_INFO, cache=None) as client:
                    tools = await _list_tools(client)
                    self._scope.deadline = math.inf
                    self._client = client
                    self._register(tools)
                    running = True
                    started.set_result(None)
                    await self._serve(client)
        except BaseException as error:  # ExceptionGroups from the SDK's task groups included
            if not isinstance(error, Exception) and not hasattr(error, "exceptions"):
                raise  # this task is cancelled: the loop is closing
            failure = _leaf(error)
            log.debug("%s: connection ended", self.label, exc_info=error)
        finally:
            self._client = None
            self.registry.withdraw(self.source)
            if not started.done():
                started.set_result(None)
        if self._stopping and (running or failure is None):
            log.info("%s: closed", self.label)
            return
        if running:
            what = "exited" if self._server_closed else "lost its connection"
            if failure is not None and not self._server_closed:
                what += f": {_describe(failure)}"
        elif failure is None:  # the deadline passed (a cancelled start raises nothing)
            what = f"did not start and list its tools within {self.start_timeout_s:g} s"
        elif self._server_closed or (isinstance(failure, MCPError) and failure.code == types.CONNECTION_CLOSED):
            what = "exited during start"
        elif isinstance(failure, OSError | httpx2.TransportError):
            what = f"could not be {'started' if self.config.command else 'reached'}: {_describe(failure)}"
        else:
            what = f"failed to start: {_describe(failure)}"
        await self._stderr.ended(0.5)
        tail = self._stderr.tail()
        line = f"{self.label} {what}" + (f"; stderr: {tail}" if tail else "")
        log.warning("%s", line)
        self._report(line)

    async def _serve(self, client: Client) -> None:
        """Wait for the end; over HTTP list the tools now and then, which fails once the server is gone."""
        probe = self.config.url is not None and self.probe_interval_s > 0
        while not self._wake.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), self.probe_interval_s if probe else None)
            except asyncio.TimeoutError:
                await client.list_tools()

    def _register(self, tools: list[types.Tool]) -> None:
        self.tools, refused = [], []
        for tool in tools:
            wrapped = McpTool(self, tool)
            try:
                self.registry.add(wrapped)
            except ValueError as error:  # another source has a tool of that name
                refused.append(str(error))
                continue
            self.tools.append(wrapped)
        log.info("%s: %d tools: %s", self.label, len(self.tools), ", ".join(t.spec.name for t in self.tools))
        if refused:
            line = f"{self.label}: {len(refused)} of its tools left out: {'; '.join(refused)}"
            log.warning("%s", line)
            self._report(line)

    def _closed_by_server(self) -> None:
        if self._stopping or self._server_closed:
            return
        self._server_closed = True
        self.registry.withdraw(self.source)  # at once: the model is no longer offered them
        self._wake.set()

    @asynccontextmanager
    async def _transport(self) -> AsyncIterator[tuple[Any, Any]]:
        if self.config.command is None:
            assert self.config.url is not None  # McpServerConfig checks that one of the two is given
            async with (
                httpx2.AsyncClient(headers=self.config.headers, timeout=httpx2.Timeout(30, read=300)) as http,
                streamable_http_client(self.config.url, http_client=http) as (read, write),
            ):
                yield _Watched(read, self._closed_by_server), write
            return
        parameters = StdioServerParameters(
            command=sys.executable if self.config.command in PYTHON else self.config.command,
            args=self.config.args,
            env=dict(os.environ) if self.config.env is None else self.config.env,
            cwd=self.config.cwd,
        )
        async with self._stderr.pipe() as errlog, stdio_client(parameters, errlog=errlog) as (read, write):
            errlog.close()  # the server holds its own copy; ours would keep the pipe from ending
            yield _Watched(read, self._closed_by_server), write


def result_text(result: types.CallToolResult) -> str:
    """A tool's result as the model reads it: the text, structured content as JSON when there is no text, and a
    short note for each image, audio clip or resource."""
    parts: list[str] = []
    if result.structured_content is not None and not any(isinstance(b, types.TextContent) for b in result.content):
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent | types.AudioContent):
            parts.append(f"[{block.type}, {block.mime_type}]")
        elif isinstance(block, types.ResourceLink):
            parts.append(f"[resource link: {block.uri}{f' ({block.name})' if block.name else ''}]")
        elif isinstance(block, types.EmbeddedResource):
            resource = block.resource
            if isinstance(resource, types.TextResourceContents):
                parts.append(f"[resource {resource.uri}]\n{resource.text}")
            else:
                parts.append(f"[resource {resource.uri}, {resource.mime_type or 'binary'}]")
        else:
            parts.append(f"[{getattr(block, 'type', type(block).__name__)}]")
    return "\n".join(parts)


async def _list_tools(client: Client) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        if (cursor := page.next_cursor) is None:
            break
    return tools


class _Watched:
    """A transport's read stream that tells when it ends: the server closed the connection (or exited)."""

    def __init__(self, inner: Any, on_end: Callable[[], None]) -> None:
        self._inner, self._on_end = inner, on_end

    @property
    def last_context(self) -> Any:  # the sender's contextvars, where the transport keeps them (HTTP)
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except anyio.EndOfStream:
            self._on_end()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _Watched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _Watched:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _StderrTail(asyncio.Protocol):
    """A stdio server's stderr through a pipe: each line logged at debug level, the last ones kept for reports."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=STDERR_LINES)
        self._partial = ""
        self._ended = asyncio.Event()
        self._ended.set()  # nothing to wait for until a pipe is open

    @asynccontextmanager
    async def pipe(self) -> AsyncIterator[TextIO]:
        """A pipe for the server's stderr (the write end); read here until the server and its children end."""
        read_fd, write_fd = os.pipe()
        errlog = os.fdopen(write_fd, "w")
        reading = os.fdopen(read_fd, "rb", buffering=0)
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: self, reading)
        except BaseException:
            errlog.close()
            reading.close()
            raise
        self._ended.clear()
        try:
            yield errlog
        finally:
            errlog.close()
            with anyio.move_on_after(0.5, shield=True):  # the server is gone by now: read what it left
                await self._ended.wait()
            transport.close()

    def data_received(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data.decode(errors="replace")).split("\n")
        for line in lines:
            self._line(line)

    def connection_lost(self, exc: Exception | None) -> None:
        self._line(self._partial)
        self._partial = ""
        self._ended.set()

    def _line(self, line: str) -> None:
        if line := line.rstrip():
            log.debug("MCP server %r: %s", self.name, line)
            self.lines.append(line)

    async def ended(self, timeout: float) -> None:
        """Wait a little for the pipe to end, so that a server's last words are in `tail()`."""
        try:
            await asyncio.wait_for(self._ended.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def tail(self, chars: int = 400) -> str:
        text = " | ".join(line.strip() for line in self.lines)
        return text if len(text) <= chars else "…" + text[-chars:]


def _leaf(error: BaseException) -> BaseException:
    """The first real error in an ExceptionGroup (what failed, not the cancellations it caused)."""
    while (inner := getattr(error, "exceptions", None)) is not None:
        real = [e for e in inner if not isinstance(e, asyncio.CancelledError | anyio.get_cancelled_exc_class())]
        error = (real or inner)[0]
    return error


def _describe(error: BaseException) -> str:
    if isinstance(error, MCPError):
        return error.message
    return str(error) or type(error).__name__
