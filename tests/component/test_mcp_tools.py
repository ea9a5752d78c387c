"""MCP servers' tools through the official SDK, against real servers: the kiosk example and a test server with a
slow, a failing and a crashing tool (tests/support/mcp_test_server.py), each started over stdio by the assistant
or run over streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mcp import types

from assistant.config import McpServerConfig, ToolsConfig
from assistant.tools.mcp import McpServers, result_text
from assistant.tools.registry import ToolError, ToolRegistry

REPO = Path(__file__).resolve().parents[2]
KIOSK = str(REPO / "examples" / "kiosk_mcp_server.py")
TEST_SERVER = str(REPO / "tests" / "support" / "mcp_test_server.py")

pytestmark = [pytest.mark.timeout(60), pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")]


class Reports(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)

    def about(self, name: str) -> list[str]:
        return [line for line in self if f"MCP server {name!r}" in line]


@pytest.fixture(autouse=True)
def quiet(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Iterator[None]:
    """No tracebacks, no errors logged, no 'unhandled exception' from the SDK's task groups."""
    yield
    err = capfd.readouterr().err
    assert "Traceback" not in err and "unhandled" not in err.lower(), err
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= 30], "a warning with a traceback"


@pytest.fixture
def marks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """What the test server's slow tool did, a line each; servers started here inherit the variable."""
    path = tmp_path / "marks.txt"
    path.touch()
    monkeypatch.setenv("MCP_TEST_MARKS", str(path))
    return path


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def launch(transport: str, tmp_path: Path, marks: Path) -> Iterator[Callable[..., McpServerConfig]]:
    """`launch(name, script)`: the config of a server run by that script, over the test's transport (for HTTP the
    server runs here, its output in a file)."""
    processes: list[subprocess.Popen[bytes]] = []

    def launch(name: str, script: str = TEST_SERVER, **fields: object) -> McpServerConfig:
        if transport == "stdio":
            return McpServerConfig(name=name, command=sys.executable, args=[script], **fields)  # type: ignore[arg-type]
        port = free_port()
        with open(tmp_path / f"{name}.log", "wb") as output:
            process = subprocess.Popen(
                [sys.executable, script, "--http", str(port)], stdout=output, stderr=subprocess.STDOUT
            )
        processes.append(process)
        wait_for_port(port, process)
        return McpServerConfig(name=name, url=f"http://127.0.0.1:{port}/mcp", **fields)  # type: ignore[arg-type]

    yield launch
    for process in processes:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the HTTP server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.02)


def children() -> list[str]:
    """This process's child processes (zombies included: a child not waited for shows here)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if int(ppid) == os.getpid():
            found.append(f"{stat.parent.name} ({state}) {text[text.index('(') : text.rindex(')') + 1]}")
    return found


def stdio(name: str, *args: str, command: str = sys.executable) -> McpServerConfig:
    return McpServerConfig(name=name, command=command, args=list(args))


async def test_kiosk_tools_are_registered_and_answer(launch: Callable[..., McpServerConfig]) -> None:
    registry, reports = ToolRegistry(), Reports()
    async with McpServers([launch("kiosk", KIOSK)], registry, reports, 15.0) as servers:
        assert servers.connected() == ["kiosk"]
        assert sorted(registry.names("mcp:kiosk")) == ["events_today", "find_room", "list_rooms", "opening_hours"]
        find_room = registry.get("find_room")
        assert find_room is not None and find_room.source == "mcp:kiosk"
        spec = find_room.spec
        assert spec.description == "Where a room is in the building and how to get there."
        assert spec.parameters["type"] == "object" and spec.parameters["required"] == ["name"]
        assert "library" in spec.parameters["properties"]["name"]["description"]
        hours = registry.get("opening_hours")
        assert hours is not None and "sunday" in hours.spec.parameters["properties"]["day"]["enum"]

        assert await find_room.call({"name": "Library"}) == (
            "The library is on floor 1: up the stairs, first door on the right."
        )
        assert await hours.call({"day": "sunday"}) == "Sunday: closed."
        rooms = registry.get("list_rooms")
        assert rooms is not None and (await rooms.call({})).splitlines()[:2] == ["cafeteria", "first aid"]
        with pytest.raises(ToolError, match="no room called 'the moon'"):
            await find_room.call({"name": "the moon"})
    assert reports == []
    assert registry.names() == []


async def test_an_error_result_raises_tool_error(launch: Callable[..., McpServerConfig]) -> None:
    registry, reports = ToolRegistry(), Reports()
    async with McpServers([launch("test")], registry, reports, 15.0):
        fail = registry.get("fail")
        assert fail is not None
        with pytest.raises(ToolError, match="the printer is on fire"):
            await fail.call({"message": "the printer is on fire"})
        with pytest.raises(ToolError):  # arguments the server refuses
            await fail.call({})
        picture, numbers = registry.get("picture"), registry.get("numbers")
        assert picture is not None and numbers is not None
        assert await picture.call({}) == "[image, image/png]\n[resource file:///notes.txt]\nhello"
        assert await numbers.call({}) == '{"one": 1, "two": [2, 2]}'
    assert reports == []


async def test_cancelling_a_call_cancels_it_on_the_server(launch: Callable[..., McpServerConfig], marks: Path) -> None:
    registry = ToolRegistry()
    async with McpServers([launch("test")], registry, Reports(), 15.0):
        slow = registry.get("slow")
        assert slow is not None
        call = asyncio.create_task(slow.call({"seconds": 30}))
        await eventually(lambda: "slow started" in marks.read_text())
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await eventually(lambda: "slow cancelled" in marks.read_text())
        assert await slow.call({"seconds": 0.01}) == "waited 0.01 s"  # the connection carries on
    assert marks.read_text().splitlines() == ["slow started", "slow cancelled", "slow started", "slow finished"]


async def test_a_server_that_exits_is_reported_once_and_its_tools_withdrawn(
    launch: Callable[..., McpServerConfig], marks: Path, transport: str
) -> None:
    registry, reports = ToolRegistry(), Reports()
    other = stdio("paged", TEST_SERVER, "--paged")
    async with McpServers([other, launch("test")], registry, reports, 15.0) as servers:
        slow, exit_now = registry.get("slow"), registry.get("exit_now")
        assert slow is not None and exit_now is not None
        in_flight = asyncio.create_task(slow.call({"seconds": 30}))
        await eventually(lambda: "slow started" in marks.read_text())
        started = time.monotonic()
        with pytest.raises(ToolError, match="MCP server 'test'"):
            await exit_now.call({})
        with pytest.raises(ToolError, match="MCP server 'test'"):
            await in_flight
        assert time.monotonic() - started < 5
        await eventually(lambda: bool(reports))
        assert registry.names("mcp:test") == []
        assert servers.connected() == ["paged"]
        with pytest.raises(ToolError, match="not connected"):
            await slow.call({"seconds": 1})
        echo = registry.get("echo_1")  # the other server is not touched
        assert echo is not None and await echo.call({}) == "echo_1 {}"
    assert len(reports) == 1, reports
    if transport == "stdio":
        assert reports[0].startswith(f"MCP server 'test' ({sys.executable} {TEST_SERVER}) exited")
        assert "exiting on request" in reports[0]  # its stderr
    else:
        assert reports[0].startswith("MCP server 'test' (http://127.0.0.1:") and "lost its connection" in reports[0]


async def test_an_http_server_that_goes_away_while_idle_is_noticed(tmp_path: Path) -> None:
    port = free_port()
    with open(tmp_path / "server.log", "wb") as output:
        process = subprocess.Popen([sys.executable, KIOSK, "--http", str(port)], stdout=output, stderr=output)
    try:
        wait_for_port(port, process)
        registry, reports = ToolRegistry(), Reports()
        config = McpServerConfig(name="far", url=f"http://127.0.0.1:{port}/mcp")
        async with McpServers([config], registry, reports, 15.0, probe_interval_s=0.1):
            assert len(registry) == 4
            process.kill()
            process.wait()
            await eventually(lambda: bool(reports))
            assert registry.names() == []
        assert reports == [
            f"MCP server 'far' (http://127.0.0.1:{port}/mcp) lost its connection: All connection attempts failed"
        ]
    finally:
        process.kill()
        process.wait()


async def test_servers_that_cannot_start_are_reported_and_skipped(tmp_path: Path) -> None:
    registry, reports = ToolRegistry(), Reports()
    configs = [
        stdio("kiosk", KIOSK),
        stdio("ghost", "--flag", command="no-such-mcp-server"),
        stdio("broken", TEST_SERVER, "--crash"),
        McpServerConfig(name="away", url=f"http://127.0.0.1:{free_port()}/mcp"),
        McpServerConfig(name="wrong", command=sys.executable, args=[KIOSK], cwd=str(tmp_path / "missing")),
    ]
    servers = McpServers(configs, registry, reports, 15.0)
    stuck = McpServers([stdio("stuck", TEST_SERVER, "--hang")], registry, reports, 1.0)  # a shorter wait for it
    started = time.monotonic()
    await asyncio.gather(servers.start(), stuck.start())  # neither raises
    assert time.monotonic() - started < 10
    assert servers.connected() == ["kiosk"] and len(registry.names()) == 4
    assert sorted(line.split("'")[1] for line in reports) == ["away", "broken", "ghost", "stuck", "wrong"]
    (ghost,) = reports.about("ghost")
    assert ghost.startswith("MCP server 'ghost' (no-such-mcp-server --flag) could not be started: ")
    assert "No such file or directory" in ghost
    (broken,) = reports.about("broken")
    assert broken == (
        f"MCP server 'broken' ({sys.executable} {TEST_SERVER} --crash) exited during start; "
        "stderr: kiosk database not found: /srv/kiosk.db"
    )
    (stuck_line,) = reports.about("stuck")
    assert stuck_line == (
        f"MCP server 'stuck' ({sys.executable} {TEST_SERVER} --hang) did not start and list its tools within 1 s"
    )
    (away,) = reports.about("away")
    assert "could not be reached: All connection attempts failed" in away
    (wrong,) = reports.about("wrong")
    assert "could not be started" in wrong and "missing" in wrong
    await asyncio.gather(servers.aclose(), stuck.aclose())
    assert len(reports) == 5
    assert children() == []


async def test_close_leaves_no_child_process() -> None:
    registry = ToolRegistry()
    servers = McpServers([stdio("kiosk", KIOSK), stdio("test", TEST_SERVER)], registry, Reports(), 15.0)
    await servers.start()
    assert len(children()) == 2
    slow = registry.get("slow")
    assert slow is not None
    call = asyncio.create_task(slow.call({"seconds": 30}))  # a call in flight when the assistant stops
    await asyncio.sleep(0.3)
    await servers.aclose()
    with pytest.raises(ToolError):
        await call
    assert children() == []
    assert registry.names() == []
    await servers.aclose()  # twice is harmless


async def test_all_pages_of_tools_are_listed() -> None:
    registry, reports = ToolRegistry(), Reports()
    async with McpServers([stdio("paged", TEST_SERVER, "--paged")], registry, reports, 15.0):
        assert registry.names() == [f"echo_{i}" for i in range(5)]
        echo = registry.get("echo_3")
        assert echo is not None and await echo.call({"a": 1}) == "echo_3 {'a': 1}"
    assert reports == []


@pytest.mark.parametrize("transport", ["http"])
async def test_http_headers_are_sent(launch: Callable[..., McpServerConfig]) -> None:
    registry = ToolRegistry()
    config = launch("test", headers={"Authorization": "Bearer kiosk-secret", "X-Kiosk": "hall"})
    async with McpServers([config], registry, Reports(), 15.0):
        header = registry.get("header")
        assert header is not None
        assert await header.call({"name": "Authorization"}) == "Bearer kiosk-secret"
        assert await header.call({"name": "X-Kiosk"}) == "hall"


async def test_a_tool_name_taken_by_another_server_is_left_out() -> None:
    registry, reports = ToolRegistry(), Reports()
    tools = ToolsConfig(mcp=[stdio("kiosk", KIOSK), stdio("test", TEST_SERVER)], start_timeout_s=15.0)
    async with McpServers.from_config(tools, registry, reports):
        kiosk = set(registry.names("mcp:kiosk"))
        test = set(registry.names("mcp:test"))
        assert kiosk & test == set() and len(kiosk | test) == 4 + 6
    (line,) = reports
    assert "4 of its tools left out" in line


def test_result_text_describes_what_is_not_text() -> None:
    result = types.CallToolResult(
        content=[
            types.TextContent(type="text", text="two rooms"),
            types.ResourceLink(type="resource_link", uri="file:///map.png", name="map"),
            types.AudioContent(type="audio", data="", mime_type="audio/wav"),
        ],
        structured_content={"ignored": "there is text"},
    )
    assert result_text(result) == "two rooms\n[resource link: file:///map.png (map)]\n[audio, audio/wav]"
    assert result_text(types.CallToolResult(content=[])) == ""
