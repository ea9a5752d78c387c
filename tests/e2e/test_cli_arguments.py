"""run_assistant.py's refusals before anything loads, as a user meets them (issue 31): one clear line, exit 2, and
nothing lost (a recording is never overwritten, no file is left behind)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from assistant.audio.wavfile import write_wav
from tests.e2e.test_cli import cli, set_args


@pytest.fixture
def question(tmp_path: Path) -> Path:
    path = tmp_path / "qa.wav"
    write_wav(path, np.zeros(1600, np.float32), 16_000)
    return path


def refused(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The reason line of a usage error, checked: exit 2, no traceback, the reason first, then one line to --help."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 2 and "--help" in lines[1], lines
    assert all(text in lines[0] for text in expected), lines[0]
    return lines[0]


@pytest.mark.parametrize("output", ["same", "hard link", "symlink"])
def test_the_reply_never_overwrites_the_recording_it_answers(question: Path, output: str) -> None:
    target = {"same": question, "hard link": question.with_name("hard.wav"), "symlink": question.with_name("sym.wav")}
    if output == "hard link":
        os.link(question, target[output])
    elif output == "symlink":
        target[output].symlink_to(question.name)
    before = question.read_bytes()
    result = cli("--input", str(question), "--output", str(target[output]))
    refused(result, f"--output {target[output]}", "is the --input recording itself")
    assert question.read_bytes() == before


def test_an_output_that_cannot_be_created_is_refused_before_any_work(question: Path, tmp_path: Path) -> None:
    refused(cli("--input", str(question), "--output", "/proc/x.wav"), "--output /proc/x.wav", "cannot be created")
    refused(cli("--input", str(question), "--output", str(tmp_path / "a.m4a")), "cannot write .m4a audio", ".flac")
    kept = tmp_path / "kept.wav"
    kept.write_bytes(b"an earlier reply")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    refused(cli("--input", str(question), "--output", str(fifo)), "a pipe")
    refused(cli("--input", str(question), "--output", str(kept), "--input-device", "1"), "--input-device 1")
    assert kept.read_bytes() == b"an earlier reply"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.wav", "pipe.wav", "qa.wav"]  # nothing left behind


@pytest.mark.parametrize(("given", "what"), [("folder", "a folder, not an audio file"), ("/dev/null", "a device")])
def test_an_input_that_is_not_a_file_says_what_it_is(tmp_path: Path, given: str, what: str) -> None:
    path = str(tmp_path) if given == "folder" else given
    line = refused(cli("--input", path, "--output", str(tmp_path / "a.wav")), f"--input {path}: {what}")
    assert "no such file" not in line


def test_help_names_the_audio_files_it_reads_and_writes() -> None:
    result = cli("--help")
    assert result.returncode == 0
    assert "--input AUDIO" in result.stdout and "--output AUDIO" in result.stdout and "WAV" not in result.stdout
    assert "FLAC" in result.stdout and ".flac" in result.stdout


def test_options_that_would_be_dropped_are_refused(question: Path, tmp_path: Path) -> None:
    files = ("--input", str(question), "--output", str(tmp_path / "a.wav"))
    refused(cli(*files, "--input-device", "2"), "--input-device 2", "file mode reads --input")
    refused(cli(*files, "--output-device", "USB"), "--output-device USB", "file mode writes --output")
    refused(cli("--text", "--input-device", "2"), "--input-device 2", "--text reads what you type")
    refused(cli("--text", "--no-speech", "--output-device", "1"), "--no-speech prints the replies")
    refused(
        cli("--config", "configs/kiosk.yaml", "--config", "configs/scripted.yaml", "--text"),
        "--config is given twice (configs/kiosk.yaml and configs/scripted.yaml)",
        "--set",
    )
    refused(cli("--show-voice", "--reset-voice"), "--show-voice and --reset-voice: choose one")
    refused(cli("--input", str(question)), "--input and --output go together")
    assert not (tmp_path / "a.wav").exists()


def test_no_audio_devices_names_the_ways_forward(tmp_path: Path) -> None:
    """No sound card and no sound server: the live mode says how to go on without one."""
    nowhere = {"PULSE_SERVER": f"unix:{tmp_path}/none", "XDG_RUNTIME_DIR": str(tmp_path)}
    result = cli(*set_args("llm.backend=scripted"), env=nowhere)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "no audio input devices found" in line]
    for way in ("--list-devices", "--text", "--no-speech", "--input", "--output"):
        assert way in line, line


class TestShowVoice:
    """`--show-voice` refuses what a run refuses, with the run's own line."""

    def test_a_missing_clip(self, tmp_path: Path) -> None:
        clip = tmp_path / "me.wav"
        result = cli("--show-voice", "--voice", str(clip))
        assert result.returncode == 2 and result.stderr.startswith(f"--voice: {clip}: no such voice file or clip")
        assert "in use" not in result.stdout and f"voice: {clip}" not in result.stdout

    def test_a_file_that_is_not_audio_and_a_clip_without_its_transcript(self, tmp_path: Path) -> None:
        notes = tmp_path / "notes.wav"
        notes.write_text("not audio\n")
        result = cli("--show-voice", "--voice", str(notes))
        assert result.returncode == 2 and "not an audio file that can be read" in result.stderr
        clip = tmp_path / "me.wav"
        write_wav(clip, np.zeros(24_000, np.float32), 24_000)
        result = cli("--show-voice", *set_args(f"voice.path={clip}"))
        assert result.returncode == 2 and result.stderr.startswith("config error: voice.path: ")
        assert "needs its transcript" in result.stderr

    def test_a_clip_too_long_for_the_window(
        self, tmp_path: Path, tiny_csm_dir: Path, llama3_tokenizer_json: Path
    ) -> None:
        clip = tmp_path / "me.wav"
        write_wav(clip, np.zeros(24_000 * 45, np.float32), 24_000)
        clip.with_suffix(".txt").write_text("Hello there.")
        model = set_args(f"csm.model={tiny_csm_dir}", f"csm.tokenizer={llama3_tokenizer_json}")
        result = cli("--show-voice", "--voice", str(clip), *model)
        assert result.returncode == 2 and "positions" in result.stderr and "use a shorter clip" in result.stderr
        short = tmp_path / "short.wav"
        write_wav(short, np.zeros(24_000 * 5, np.float32), 24_000)
        short.with_suffix(".txt").write_text("Hello there.")
        result = cli("--show-voice", "--voice", str(short), *model)
        assert result.returncode == 0 and f"voice: {short} (voice.path)" in result.stdout, result.stderr
