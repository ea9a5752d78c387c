"""Choosing the LLM is a config change: the CLI against a real chat server and with the local model, and the presets."""

from __future__ import annotations

from pathlib import Path

import pytest

from assistant.config import LlmConfig, load_config
from assistant.llm.backend import BackendUnavailable
from assistant.llm.factory import make_backend
from pipelines.components import StartupError, start_backend
from tests.conftest import REPO
from tests.e2e.test_cli import cli
from tests.support.chat_server import ChatServer, Script

TEXT_ONLY = ("--text", "--no-speech")
SERVER_PRESETS = ["openai", "ollama", "vllm", "llamacpp"]


def test_a_server_is_chosen_with_settings_alone_and_a_failed_turn_does_not_stop_it() -> None:
    scripts = (
        Script(first_delay_s=60),
        Script(reply="Hi! **Nice** to meet you."),
        Script(reply="See https://example.com/x."),
    )
    with ChatServer(*scripts, api_key="sk-test", models={"tiny"}) as server:
        result = cli(
            *TEXT_ONLY,
            "--set",
            "llm.backend=openai",
            "--set",
            f"llm.openai.base_url={server.url}",
            "--set",
            "llm.openai.model=tiny",
            "--set",
            "llm.openai.api_key_env=TEST_LLM_KEY",
            "--set",
            "llm.openai.timeout_s=5",
            "--set",
            "llm.openai.max_retries=0",
            stdin="hello\nhello again\nand then?\n",
            env={"TEST_LLM_KEY": "sk-test"},
        )
    assert result.returncode == 0, result.stderr
    said = [line.removeprefix("assistant: ") for line in result.stdout.splitlines()]
    assert said == [LlmConfig().apology, "Hi! Nice to meet you.", "See example.com."]  # cleaned for speech
    failures = [line for line in result.stderr.splitlines() if "the LLM failed" in line]
    assert len(failures) == 1 and failures[0].endswith(
        f"the LLM failed before replying: the LLM server at {server.url} "
        "sent no reply within 5 s (llm.openai.timeout_s)"
    )
    first, _, third = (request["messages"] for request in server.requests)
    assert first == [{"role": "system", "content": LlmConfig().system_prompt}, {"role": "user", "content": "hello"}]
    assert third[0] == first[0] and third[-3:] == [
        {"role": "user", "content": "hello again"},
        {"role": "assistant", "content": "Hi! Nice to meet you."},
        {"role": "user", "content": "and then?"},
    ]


def test_the_local_model_is_chosen_with_settings_alone(tiny_chat_model_dir: Path) -> None:
    result = cli(
        *TEXT_ONLY,
        "--set",
        "llm.backend=local",
        "--set",
        f"llm.local.model={tiny_chat_model_dir}",
        "--set",
        "llm.local.device=cpu",
        "--set",
        "llm.local.max_new_tokens=8",
        stdin="hello\n",
    )
    assert result.returncode == 0, result.stderr
    assert "local LLM: " in result.stderr  # loaded before the first turn
    assert "heard 'hello'" in result.stderr and "the LLM failed" not in result.stderr


@pytest.mark.parametrize("preset", SERVER_PRESETS)
async def test_each_server_preset_talks_to_its_server(preset: str, monkeypatch: pytest.MonkeyPatch) -> None:
    file = REPO / "configs" / f"{preset}.yaml"
    settings = load_config(file).llm.openai
    if settings.api_key_env:
        monkeypatch.setenv(settings.api_key_env, "sk-test")
    with ChatServer(
        Script(reply="Preset works."), api_key="sk-test" if settings.api_key_env else None, models={settings.model}
    ) as server:
        backend = make_backend(load_config(file, [f"llm.openai.base_url={server.url}"]).llm)
        try:
            reply = "".join([delta async for delta in backend.stream([{"role": "user", "content": "hello"}])])
        finally:
            await backend.aclose()
    assert reply == "Preset works."


def test_the_presets_point_at_each_server_s_usual_address() -> None:
    urls = {name: load_config(REPO / "configs" / f"{name}.yaml").llm.openai.base_url for name in SERVER_PRESETS}
    assert urls == {
        "openai": "https://api.openai.com/v1",
        "ollama": "http://localhost:11434/v1",
        "vllm": "http://localhost:8000/v1",
        "llamacpp": "http://localhost:8080/v1",
    }


def test_openai_without_its_key_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(BackendUnavailable) as caught:
        make_backend(load_config(REPO / "configs" / "openai.yaml").llm)
    assert str(caught.value) == (
        "https://api.openai.com/v1 needs an API key: put the key in the environment variable OPENAI_API_KEY "
        "(llm.openai.api_key_env)"
    )


async def test_a_local_model_that_cannot_be_loaded_stops_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    backend = make_backend(load_config(overrides=["llm.local.model=someone/not-downloaded"]).llm)
    with pytest.raises(StartupError, match="^cannot load the local LLM: someone/not-downloaded is not downloaded yet"):
        await start_backend(backend)
