"""A live start as a user sees it (issue 31): run_assistant.py on PulseAudio's virtual devices at a terminal, with
Whisper tiny.en and a tiny random CSM. The microphone opens before the models load, yet no warning about audio
nobody reads comes; a key the config turned off is named as off; SIGTERM ends it with "Stopped." and exit 0."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.e2e.test_cli import SCRIPT, set_args
from tests.e2e.test_file_mode import model_settings
from tests.support.pulse import PulseAudio


def test_a_live_start_at_a_terminal_with_the_interrupt_key_off(
    pulse: PulseAudio,
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    pulse.microphone()
    terminal, user_side = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            SCRIPT,
            *model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json),
            *set_args("audio.input_device=pulse", "audio.output_device=pulse", "barge_in.key=null"),
        ],
        stdin=user_side,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    os.close(user_side)
    try:
        assert process.stderr is not None
        seen: list[str] = []
        while "listening;" not in (line := process.stderr.readline()):
            assert line, "".join(seen)
            seen.append(line)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=60)
    finally:
        process.kill()
        os.close(terminal)
    log = "".join(seen) + line + rest
    assert "the interrupt key is off (barge_in.key is null)" in line and "no terminal" not in line
    assert "not read fast enough" not in log, log
    assert process.returncode == 0 and "Traceback" not in log and log.rstrip().endswith("Stopped."), log
