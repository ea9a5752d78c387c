"""File mode's reply file as a user gets it (issue 31): in the format its name asks for, never a reply to a recording
without words, and long speech cut into turns with a line in the log."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from assistant.audio.streams import FileSink
from assistant.audio.wavfile import write_wav
from tests.conftest import REPO
from tests.e2e.test_cli import SCRIPT, cli, set_args
from tests.e2e.test_file_mode import model_settings
from tests.support.speech import Clip

RATE = 16_000


def wordless(seconds: float) -> np.ndarray:
    """A hum the VAD takes for speech and Whisper hears no words in (checked with tiny.en)."""
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 200 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


def test_a_reply_named_flac_is_flac_and_speech_longer_than_a_turn_is_cut_with_a_log_line(
    tmp_path: Path,
    speech_clips: list[Clip],
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    clip, out = max(speech_clips, key=lambda c: c.path.stat().st_size), tmp_path / "reply.flac"  # ~7 s of speech
    result = cli(
        "--input",
        str(clip.path),
        "--output",
        str(out),
        *set_args("vad.max_utterance_s=2", "csm.max_audio_ms=800"),
        *model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json),
        timeout_s=600,
    )
    assert result.returncode == 0, result.stderr
    info = soundfile.info(str(out))
    assert info.format == "FLAC" and info.samplerate == 24_000 and info.frames > 0
    cut = [line for line in result.stderr.splitlines() if "vad.max_utterance_s (2 s)" in line]
    turns = [line for line in result.stderr.splitlines() if "assistant.turns" in line]
    assert cut and len(turns) > len(cut), result.stderr


def test_an_ogg_reply_is_ogg(tmp_path: Path) -> None:
    sink = FileSink(tmp_path / "reply.ogg")
    sink.play(np.zeros(24_000, np.float32))
    asyncio.run(sink.aclose())
    info = soundfile.info(str(tmp_path / "reply.ogg"))
    assert info.format == "OGG" and info.subtype == "VORBIS" and info.frames == 24_000


def test_a_recording_whose_turns_have_no_words_is_an_error_and_leaves_no_reply(
    tmp_path: Path,
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    hums, out = tmp_path / "hums.wav", tmp_path / "reply.wav"
    silence = np.zeros(RATE, np.float32)
    write_wav(hums, np.concatenate([silence, wordless(2), silence, silence, wordless(2), silence]), RATE)
    out.write_bytes(b"an earlier reply")  # nothing lost: it stays as it was
    result = cli(
        "--input",
        str(hums),
        "--output",
        str(out),
        *model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json),
        timeout_s=600,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "no words heard in its 2 turns" in result.stderr and f"no {out} written" in result.stderr
    assert out.read_bytes() == b"an earlier reply"


def test_sigterm_while_the_models_load_stops_cleanly(
    tmp_path: Path,
    speech_clips: list[Clip],
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            SCRIPT,
            "--input",
            str(speech_clips[0].path),
            "--output",
            str(tmp_path / "reply.wav"),
            *model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json),
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stderr is not None
        seen = []
        while "ASR: faster-whisper" not in (line := process.stderr.readline()):  # the models are loading
            assert line, "".join(seen)
            seen.append(line)
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0 and "Traceback" not in rest, rest
    assert rest.rstrip().endswith("Stopped.")
