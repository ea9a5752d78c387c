"""run_assistant.py as a user runs it: a real subprocess, its exit status and what it prints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from assistant.audio.wavfile import write_wav
from tests.conftest import REPO
from tests.support.pulse import PulseAudio

SCRIPT = str(REPO / "run_assistant.py")


def cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


def set_args(*settings: str) -> list[str]:
    """`--set` before each setting, as the command line takes them."""
    return [arg for setting in settings for arg in ("--set", setting)]


def test_help_explains_every_option() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for option in (
        "--config",
        "--set",
        "--list-devices",
        "--input-device",
        "--output-device",
        "--text",
        "--input",
        "--output",
        "--log-level",
    ):
        assert option in result.stdout


def test_misspelt_key_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("csm:\n  temprature: 0.5\n")
    result = cli("--config", str(config), "--text")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"config error: {config}: unknown key 'csm.temprature'"]


def test_out_of_range_override_exits_2_with_one_line() -> None:
    result = cli("--set", "csm.topk=0", "--text")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "default.yaml (--set csm.topk=0): csm.topk = 0: Input should be greater than or equal to 1" in lines[0]


def test_an_input_that_is_not_audio_is_named_before_any_work(tmp_path: Path) -> None:
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio\n")
    result = cli("--input", str(notes), "--output", str(tmp_path / "a.wav"))
    assert result.returncode == 2 and f"--input {notes}: not an audio file that can be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path: Path) -> None:
    question = tmp_path / "q.wav"
    write_wav(question, np.zeros(1600, np.float32), 16_000)
    for output, why in ((tmp_path / "missing" / "a.wav", "does not exist"), (tmp_path, "is a folder")):
        result = cli("--input", str(question), "--output", str(output))
        assert result.returncode == 2 and why in result.stderr and "Traceback" not in result.stderr


def test_a_folder_as_config_is_a_config_error() -> None:
    result = cli("--config", "configs", "--text")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: configs: a folder, not a config file (the presets are the .yaml files in it)"
    ]


def test_offline_every_missing_model_is_listed_at_once_before_any_loads(tmp_path: Path) -> None:
    question = tmp_path / "q.wav"
    write_wav(question, np.zeros(1600, np.float32), 16_000)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hub-cache")}
    result = cli("--input", str(question), "--output", str(tmp_path / "a.wav"), env=offline)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "cannot start" in line]
    for setting in ("csm.model = sesame/csm-1b", "csm.mimi = ", "asr.model = tiny.en", "llm.local.model = "):
        assert setting in line, line
    csm = tmp_path / "csm"
    csm.mkdir()  # a folder without tokenizer.json
    result = cli(
        "--input",
        str(question),
        "--output",
        str(tmp_path / "a.wav"),
        "--set",
        f"csm.model={csm}",
        "--set",
        "asr.model=/no/such/whisper",
        "--set",
        "csm.mimi=/no/such/mimi.safetensors",
        "--set",
        "llm.backend=scripted",
        env=offline,
    )
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if "cannot start" in line]
    assert f"csm.tokenizer = null, so {csm / 'tokenizer.json'}: no such file or folder" in line
    assert "asr.model = /no/such/whisper: no such file or folder" in line and "csm.mimi = /no/such/mimi" in line
    assert "llm.local.model" not in line and "csm.model =" not in line


def test_mismatched_mode_arguments_are_usage_errors(tmp_path: Path) -> None:
    assert cli("--input", str(tmp_path / "q.wav")).returncode == 2
    missing = cli("--input", str(tmp_path / "q.wav"), "--output", str(tmp_path / "a.wav"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_list_devices_without_any_sound_system(tmp_path: Path) -> None:
    """No sound card and no sound server: a plain sentence, exit 0, no traceback."""
    nowhere = {"PULSE_SERVER": f"unix:{tmp_path}/none", "XDG_RUNTIME_DIR": str(tmp_path)}
    result = cli("--list-devices", env=nowhere)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("No audio devices")


def test_list_devices_shows_the_virtual_devices(pulse: PulseAudio) -> None:
    result = cli("--list-devices")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("Input devices:") < out.index("pulse") < out.index("Output devices:")
    assert "Hz]" in out


def test_text_mode_answers_each_line() -> None:
    result = cli(
        "--text",
        "--no-speech",
        "--set",
        "llm.backend=scripted",
        "--set",
        "llm.scripted.replies=[Hi there!, Goodbye now.]",
        stdin="hello\n\nbye\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["assistant: Hi there!", "assistant: Goodbye now."]
    turns = [line for line in result.stderr.splitlines() if "assistant.turns" in line]
    assert len(turns) == 2 and "heard 'hello' -> said 'Hi there!'" in turns[0]


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_stop_cleanly_without_a_traceback(stop: signal.Signals) -> None:
    """A stop the user asked for is no failure: exit 0 (as the README says), after "Stopped."."""
    process = subprocess.Popen(
        [sys.executable, SCRIPT, "--text", "--no-speech", "--set", "llm.backend=scripted"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        process.stdin.write("hello\n")
        process.stdin.flush()
        assert process.stdout.readline().startswith("assistant:")  # it is up and waiting for more
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert stderr.rstrip().endswith("Stopped.")


def _wait_until_mapped(pid: int, library: str, timeout_s: float = 30) -> None:
    maps = Path(f"/proc/{pid}/maps")
    deadline = time.monotonic() + timeout_s
    while library not in maps.read_text():
        assert time.monotonic() < deadline, f"{library} was never loaded"
        time.sleep(0.002)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("moment", ["at once", "while loading the config modules", "while importing torch"])
def test_ctrl_c_and_sigterm_during_start_up_are_clean(moment: str, stop: signal.Signals) -> None:
    """Before the event loop runs (its own SIGTERM handler is not there yet) a stop is as clean: "Stopped.", exit 0;
    only before Python has begun to run the program can the signal end it as it ends any process."""
    process = subprocess.Popen(
        [sys.executable, SCRIPT, "--text", "--no-speech", "--set", "llm.backend=scripted"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    if moment != "at once":  # our own imports have begun
        _wait_until_mapped(process.pid, "pydantic_core" if "config" in moment else "libtorch")
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=30)
    assert "Traceback" not in stderr
    assert process.returncode in ((0, -stop) if moment == "at once" else (0,)), stderr
    assert moment == "at once" or stderr.rstrip().endswith("Stopped.")
