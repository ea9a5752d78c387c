"""Tools as a user meets them: run_assistant.py in text mode with the openai backend against a real chat server that
calls tools, and the example kiosk MCP server started over stdio from `--set tools.mcp=...`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from assistant.config import ToolsConfig
from tests.conftest import REPO
from tests.e2e.test_cli import cli, set_args
from tests.support.chat_server import Call, ChatServer, Script

SERVER = json.dumps(str(REPO / "examples" / "kiosk_mcp_server.py"))  # quoted: a path may hold YAML's characters
KIOSK = f"[{{name: kiosk, command: {json.dumps(sys.executable)}, args: [{SERVER}]}}]"  # as a user writes it
QUESTION = "When are you open on Monday?"
ANSWER = "On Monday we are open from eight to six."


def ask(server: ChatServer, *settings: str) -> subprocess.CompletedProcess[str]:
    args = set_args("llm.backend=openai", f"llm.openai.base_url={server.url}", "llm.openai.api_key_env=TOOLS_KEY")
    result = cli(
        "--text", "--no-speech", *args, *set_args(*settings), stdin=f"{QUESTION}\n", env={"TOOLS_KEY": "sk-test"}
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    return result


def said(result: subprocess.CompletedProcess[str]) -> list[str]:
    filler = f"assistant: {ToolsConfig().filler}"  # heard only if the call outlasts tools.filler_ms
    return [line for line in result.stdout.splitlines() if line != filler]


def offered(request: dict[str, Any]) -> list[str]:
    assert all(tool["type"] == "function" for tool in request.get("tools", []))
    return [tool["function"]["name"] for tool in request.get("tools", [])]


def test_the_model_calls_a_kiosk_tool_and_answers_with_its_result() -> None:
    call = Call("opening_hours", json.dumps({"day": "monday"}), id="call_hours")
    with ChatServer(Script(reply="", calls=(call,)), Script(reply=ANSWER)) as server:  # arguments 4 chars a delta
        result = ask(server, f"tools.mcp={KIOSK}")
    assert said(result) == [f"assistant: {ANSWER}"]
    first, second = server.requests
    assert offered(first) == ["opening_hours", "find_room", "list_rooms", "events_today"]
    (hours,) = [tool["function"] for tool in first["tools"] if tool["function"]["name"] == "opening_hours"]
    assert hours["description"] == "When the building is open on a day."
    assert hours["parameters"]["type"] == "object" and "monday" in hours["parameters"]["properties"]["day"]["enum"]
    assert second["messages"][-2:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_hours",
                    "type": "function",
                    "function": {"name": "opening_hours", "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_hours", "content": "Monday: open from 08:00 to 18:00."},
    ]
    assert "tool opening_hours ok" in result.stderr


def test_tools_enabled_restricts_what_the_model_is_offered() -> None:
    with ChatServer(Script(reply=ANSWER)) as server:
        result = ask(server, f"tools.mcp={KIOSK}", "tools.enabled=[find_room]")
    assert said(result) == [f"assistant: {ANSWER}"]
    (request,) = server.requests
    assert offered(request) == ["find_room"]


@pytest.fixture(scope="module")
def ghost() -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """The assistant run with an MCP server whose command does not exist."""
    with ChatServer(Script(reply=ANSWER)) as server:
        result = ask(server, "tools.mcp=[{name: ghost, command: /no/such/mcp-server}]")
    return result, server.requests


def test_an_mcp_server_that_cannot_start_is_reported_and_the_assistant_answers_without_it(ghost: Any) -> None:
    result, requests = ghost  # exit 0 and no traceback: checked by ask()
    assert said(result) == [f"assistant: {ANSWER}"]
    assert "tools" not in requests[0]  # no tool at all: none offered
    reports = [line for line in result.stderr.splitlines() if "'ghost'" in line]
    assert reports and all("could not be started" in line and "/no/such/mcp-server" in line for line in reports)


def test_an_mcp_server_that_cannot_start_is_reported_once(ghost: Any) -> None:
    result, _ = ghost
    assert len([line for line in result.stderr.splitlines() if "'ghost'" in line]) == 1
