"""The README's embedding example, run from another folder with fakes for the models and the audio devices: it finds
its preset, answers, and Ctrl-C stops it with no traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CALL = 'Assistant.from_config("configs/kiosk.yaml", ["mqtt.enabled=false"])'
FAKES = """from assistant.audio.streams import FileSink
from tests.support.fakes import FakeSpeechEngine, FakeTranscriber, QueueSource

PARTS = {"engine": FakeSpeechEngine(), "transcriber": FakeTranscriber(), "source": QueueSource()}
PARTS["sink"] = FileSink("a.wav")
FAKE_SETTINGS = ["mqtt.enabled=false", "llm.backend=scripted", "listen.mode=always"]  # no LLM, no wake-word model
"""


def readme_example() -> str:
    """The README's embedding example, its models and devices replaced by fakes and its LLM by scripted replies."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"\*\*Embedding it\.\*\*.*?```python\n(.*?)```", readme, re.S)
    assert example is not None and CALL in example.group(1)
    fake = 'Assistant.from_config("configs/kiosk.yaml", FAKE_SETTINGS, **PARTS)'
    return FAKES + example.group(1).replace(CALL, fake)


def test_the_readme_example_runs_from_another_folder_and_stops_on_ctrl_c_without_a_traceback(tmp_path: Path) -> None:
    script = tmp_path / "kiosk.py"
    script.write_text(readme_example())
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}  # PATH: the fakes
    process = subprocess.Popen(
        [sys.executable, str(script)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        answer = process.stdout.readline()
        assert answer == "Hello! This is a scripted reply.\n", process.stderr.read()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert (process.returncode, out) == (0, ""), err
    assert "Traceback" not in err and "never retrieved" not in err, err
    assert re.search(r"\d\d:\d\d:\d\d I assistant.tools.mcp: MCP server 'kiosk' .*: 4 tools", err), err  # logged
