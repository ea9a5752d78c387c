"""File mode end to end: `run_assistant.py --input q.wav --output a.wav` with real Whisper and a tiny random CSM."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from assistant.audio.wavfile import read_wav, write_wav
from tests.e2e.test_cli import cli, set_args
from tests.support.speech import Clip


def model_settings(whisper: Path, csm: Path, mimi: Path, tokenizer: Path) -> list[str]:
    return set_args(
        f"asr.model={whisper}",
        f"csm.model={csm}",
        f"csm.mimi={mimi}",
        f"csm.tokenizer={tokenizer}",
        "csm.device=cpu",
        "csm.seed=0",
        "asr.device=cpu",
        "llm.backend=scripted",
    )


def test_a_recording_in_gives_a_spoken_reply_out(
    tmp_path: Path,
    speech_clips: list[Clip],
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    clip, out = speech_clips[0], tmp_path / "reply.wav"
    result = cli(
        "--input",
        str(clip.path),
        "--output",
        str(out),
        "--set",
        "llm.scripted.replies=['Sure, I can help with that.']",
        "--set",
        "csm.max_audio_ms=1600",
        *model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json),
        timeout_s=600,  # loads torch, Whisper and CSM in a fresh process
    )
    assert result.returncode == 0, result.stderr
    audio, rate = read_wav(out)
    frames = int(re.search(r"wrote (\d+) frames", result.stderr)[1])
    assert rate == 24_000 and 0 < frames <= 20 and len(audio) == frames * 1920
    turn = next(line for line in result.stderr.splitlines() if "assistant.turns" in line)
    assert max(clip.text.split(), key=len) in turn.lower() and "-> said 'Sure, I can help with that.'" in turn
    stages = re.search(r"asr (\S+), llm (\S+), csm-in (\S+), audio (\S+), played (\S+)", turn).groups()
    assert all(s.isdigit() for s in stages), turn  # every stage was reached and timed


def test_a_recording_without_speech_is_an_error_and_leaves_no_reply(
    tmp_path: Path,
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    silence, out = tmp_path / "silence.wav", tmp_path / "reply.wav"
    write_wav(silence, np.zeros(16_000 * 2, np.float32), 16_000)
    result = cli(
        "--input",
        str(silence),
        "--output",
        str(out),
        *model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json),
        timeout_s=600,
    )
    assert result.returncode == 2 and "no speech found" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_a_recording_honours_the_wake_word(
    tmp_path: Path,
    espeak_wav,
    speech_clips: list[Clip],
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    """`--input` with listen.mode wake_word: the speech before the wake word is not a turn, the question after it is."""
    before, _ = read_wav(speech_clips[0].path, 16_000)
    asked, _ = read_wav(espeak_wav("Okay Nabu, what time is it?"), 16_000)
    recording, out = tmp_path / "lobby.wav", tmp_path / "reply.wav"
    gap = np.zeros(16_000, np.float32)
    write_wav(recording, np.concatenate([before, gap, asked, gap, gap]), 16_000)
    result = cli(
        "--input",
        str(recording),
        "--output",
        str(out),
        "--set",
        "listen.mode=wake_word",
        "--set",
        "llm.scripted.replies=['It is noon.']",
        "--set",
        "csm.max_audio_ms=800",
        *model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json),
        timeout_s=600,
    )
    assert result.returncode == 0, result.stderr
    (turn,) = [line for line in result.stderr.splitlines() if "assistant.turns" in line]
    assert "time is it" in turn.lower() and "nabu" not in turn.lower() and "-> said 'It is noon.'" in turn
    assert "wake word 'Okay Nabu'" in result.stderr
