"""File mode with `csm.backend: server`: the assistant speaks through a real speech server (the CLI, over a tiny
random CSM), with no CSM weights of its own."""

from __future__ import annotations

import re
from pathlib import Path

from assistant.audio.wavfile import read_wav
from tests.e2e.test_cli import cli, set_args
from tests.support.processes import free_port
from tests.support.speech import Clip
from tests.support.speech_server import ServerProcess


def assistant_settings(whisper: Path, url: str) -> list[str]:
    """The server has the model, not the assistant."""
    return set_args(
        f"asr.model={whisper}",
        "asr.device=cpu",
        "llm.backend=scripted",
        "csm.seed=0",
        "csm.backend=server",
        f"csm.server.url={url}",
        "csm.model=/no/such/csm",
    )


def test_a_recording_is_answered_in_speech_from_the_server(
    tmp_path: Path,
    speech_clips: list[Clip],
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    clip, out = speech_clips[0], tmp_path / "reply.wav"
    server = ServerProcess(
        "--model",
        str(tiny_csm_dir),
        "--mimi",
        str(random_mimi_file),
        "--tokenizer",
        str(llama3_tokenizer_json),
        "--device",
        "cpu",
        "--api-key-env",
        "KIOSK_SPEECH_KEY",
        env={"KIOSK_SPEECH_KEY": "kiosk"},
        log=tmp_path / "server.log",
    )
    with server:
        result = cli(
            "--input",
            str(clip.path),
            "--output",
            str(out),
            "--set",
            "llm.scripted.replies=['Sure, I can help with that.']",
            "--set",
            "csm.max_audio_ms=1600",
            "--set",
            "csm.server.api_key_env=KIOSK_SPEECH_KEY",
            *assistant_settings(whisper_tiny_en, server.url),
            env={"KIOSK_SPEECH_KEY": "kiosk"},
            timeout_s=600,
        )
        assert server.stop() == 0
    assert result.returncode == 0, result.stderr
    assert f"CSM: speech server {server.url} (model {tiny_csm_dir.name})" in result.stderr
    audio, rate = read_wav(out)
    frames = int(re.search(r"wrote (\d+) frames", result.stderr)[1])
    assert rate == 24_000 and 0 < frames <= 20 and len(audio) == frames * 1920
    turn = next(line for line in result.stderr.splitlines() if "assistant.turns" in line)
    assert "-> said 'Sure, I can help with that.'" in turn
    served = server.output()
    for call in (
        'POST /v1/audio/speech HTTP/1.1" 200',
        'POST /v1/audio/codes HTTP/1.1" 200',  # the reply, the user's turn
        'POST /v1/audio/reference HTTP/1.1" 200',  # the locked voice, made by the server and checked
    ):
        assert call in served


def test_an_absent_speech_server_stops_the_start_with_one_line(
    tmp_path: Path, speech_clips: list[Clip], whisper_tiny_en: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli(
        "--input",
        str(speech_clips[0].path),
        "--output",
        str(tmp_path / "a.wav"),
        *assistant_settings(whisper_tiny_en, url),
        timeout_s=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"cannot start: csm.backend is server: cannot reach the speech server at {url}" in result.stderr
