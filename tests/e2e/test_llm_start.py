"""The LLM server's key and address as a user meets them: run_assistant.py against a real chat server, or none."""

from __future__ import annotations

import re

from tests.e2e.test_cli import cli, set_args
from tests.support.chat_server import ChatServer, Script


def test_openai_without_its_key_stops_the_start_with_one_line_and_no_password() -> None:
    url = "llm.openai.base_url=https://me:s3cret@api.openai.com/v1"
    result = cli("--text", "--no-speech", "--config", "configs/openai.yaml", *set_args(url), env={"OPENAI_API_KEY": ""})
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith(
        " E assistant: https://me:***@api.openai.com/v1 needs an API key: put the key in the environment variable "
        "OPENAI_API_KEY (llm.openai.api_key_env)"
    )


def test_a_local_server_without_a_key_is_said_at_start_and_its_password_never_shown() -> None:
    failing = Script(status=500)
    with ChatServer(failing, failing, Script(reply="Hi there.")) as server:  # the first turn fails, after a retry
        settings = ["llm.backend=openai", "llm.openai.api_key_env=UNSET_E2E_LLM_KEY"]
        url = server.url.replace("http://", "http://kiosk:s3cret@")
        result = cli("--text", "--no-speech", *set_args(*settings, f"llm.openai.base_url={url}"), stdin="one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "assistant: Hi there."
    shown = server.url.replace("http://", "http://kiosk:***@")
    log = result.stderr
    assert f"$UNSET_E2E_LLM_KEY (llm.openai.api_key_env) is not set, so no API key is sent to {shown}" in log
    assert f"the LLM server at {shown} answered 500" in log and "s3cret" not in log
    turns = [line.split(" | ")[1] for line in log.splitlines() if "assistant.turns" in line]
    assert len(turns) == 2 and turns[0] == "ms after end of speech: llm -"  # typed, and no speech: no other stage
    assert re.fullmatch(r"ms after end of speech: llm \d+", turns[1])
