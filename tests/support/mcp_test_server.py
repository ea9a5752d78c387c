"""The kiosk's MCP server (examples/kiosk_mcp_server.py) with tools that only tests need: a slow tool that records
its cancellation, a tool that fails, one that ends the process, one that reads a request header, and results that
are not plain text.

What happens to the slow tool is appended, one line each, to the file named by $MCP_TEST_MARKS. `--crash` exits at
once with a message on stderr, `--hang` never answers (a server that does not start), `--paged` serves a low-level
server that lists its tools two to a page; `--http PORT` serves streamable HTTP as the kiosk server does.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import anyio
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.stdio import stdio_server
from mcp_types import (
    CallToolRequestParams,
    CallToolResult,
    EmbeddedResource,
    ImageContent,
    ListToolsResult,
    PaginatedRequestParams,
    TextContent,
    TextResourceContents,
    Tool,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from kiosk_mcp_server import build, main


def mark(line: str) -> None:
    if path := os.environ.get("MCP_TEST_MARKS"):
        with open(path, "a") as file:
            file.write(line + "\n")


def build_test_server() -> MCPServer:
    server = build()

    @server.tool()
    async def slow(seconds: float) -> str:
        """Wait, then answer."""
        mark("slow started")
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            mark("slow cancelled")
            raise
        mark("slow finished")
        return f"waited {seconds} s"

    @server.tool()
    def fail(message: str) -> str:
        """Fail with the message."""
        raise ToolError(message)

    @server.tool()
    def exit_now(code: int = 3) -> str:
        """End the server process at once, as a crash would."""
        print("exiting on request", file=sys.stderr, flush=True)
        os._exit(code)

    @server.tool()
    def header(name: str, ctx: Context) -> str:
        """A header of the HTTP request that called this tool."""
        return (ctx.headers or {}).get(name.lower(), "(none)")

    @server.tool()
    def picture() -> CallToolResult:
        """An image and a resource, no text."""
        return CallToolResult(
            content=[
                ImageContent(type="image", data="iVBORw0KGgo=", mime_type="image/png"),
                EmbeddedResource(
                    type="resource",
                    resource=TextResourceContents(uri="file:///notes.txt", text="hello", mime_type="text/plain"),
                ),
            ]
        )

    @server.tool()
    def numbers() -> CallToolResult:
        """Structured content only."""
        return CallToolResult(content=[], structured_content={"one": 1, "two": [2, 2]})

    return server


async def serve_paged(count: int = 5) -> None:
    """A low-level server whose tools/list answers two tools at a time."""
    tools = [
        Tool(name=f"echo_{i}", description=f"Echo number {i}.", input_schema={"type": "object"}) for i in range(count)
    ]

    async def list_tools(ctx: object, params: PaginatedRequestParams | None) -> ListToolsResult:
        start = int(params.cursor) if params is not None and params.cursor else 0
        more = start + 2 < len(tools)
        return ListToolsResult(tools=tools[start : start + 2], next_cursor=str(start + 2) if more else None)

    async def call_tool(ctx: object, params: CallToolRequestParams) -> CallToolResult:
        return CallToolResult(content=[TextContent(type="text", text=f"{params.name} {params.arguments}")])

    server: Server[object] = Server("paged", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    if "--crash" in sys.argv:
        sys.exit("kiosk database not found: /srv/kiosk.db")
    if "--hang" in sys.argv:
        time.sleep(3600)
    if "--paged" in sys.argv:
        anyio.run(serve_paged)
        sys.exit()
    main(build_test_server())
