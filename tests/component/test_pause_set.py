"""The real-speech pause set (bench/pause_set.py), built from a few real recordings: its manifest tells the truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from assistant.asr import WhisperTranscriber
from assistant.audio.wavfile import read_wav
from assistant.config import AsrConfig
from bench import pause_set
from tests.conftest import require
from tests.support.speech import normalize_words, word_error_rate

RATE = pause_set.RATE
PROMPTS = 8  # the first Asterisk prompts: each gives a complete turn, and cut and paused ones


def dbfs(audio: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(audio, dtype=np.float64)) + 1e-12))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory, whisper_tiny_en: Path) -> tuple[Path, dict[str, Any]]:
    require(pause_set.available(), "asterisk-core-sounds-en-wav (with its core-sounds-en.txt) not installed")
    directory = tmp_path_factory.mktemp("pause-set")
    return directory, pause_set.build(directory, limit=PROMPTS, quiet=True)


def turns(small_set: tuple[Path, dict[str, Any]], kind: str) -> list[tuple[dict[str, Any], np.ndarray]]:
    directory, manifest = small_set
    found = []
    for turn in manifest["turns"]:
        if turn["kind"] == kind:
            audio, rate = read_wav(directory / turn["file"])
            assert rate == RATE and len(audio) == turn["samples"]
            found.append((turn, audio))
    return found


def test_the_manifest_lists_each_kind_and_is_written(small_set):
    directory, manifest = small_set
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert all(manifest["counts"][kind] >= 3 for kind in pause_set.KINDS), manifest["counts"]
    assert {t["filler"] for t in manifest["turns"]} == set(pause_set.FILLERS)


def check_silence_after_speech(turn: dict[str, Any], audio: np.ndarray, at: int, until: int) -> None:
    """Speech in the 300 ms before `at`; from `at` to `until` only the room: zeros, or noise at about -60 dBFS."""
    assert dbfs(audio[at - RATE * 3 // 10 : at]) > -40, turn["file"]
    quiet = audio[at:until]
    if turn["filler"] == "zeros":
        assert not quiet.any(), turn["file"]
    else:  # not digital silence: a policy cannot key on zeros
        assert np.count_nonzero(quiet) > 0.9 * len(quiet), turn["file"]
        assert -63 < dbfs(quiet) < -57, (turn["file"], dbfs(quiet))


def test_complete_and_cut_turns_end_where_the_manifest_says(small_set):
    for kind in ("complete", "cut"):
        for turn, audio in turns(small_set, kind):
            end = turn["speech_end"]
            assert len(audio) - end >= pause_set.TAIL_S * RATE
            check_silence_after_speech(turn, audio, end, len(audio))


def test_cut_turns_stop_in_the_middle_of_a_sentence(small_set):
    prompts = {p.name: p for p in pause_set.asterisk_prompts()}
    for turn, _ in turns(small_set, "cut"):
        said = prompts[turn["prompt"]].text.split()
        kept = turn["words"].split()
        assert kept == said[: len(kept)] and turn["rest"].split() == said[len(kept) :]
        assert len(kept) >= 2 and turn["rest"]
        assert not kept[-1].endswith((".", "?", "!")), turn["words"]


def test_paused_turns_pause_where_the_manifest_says_and_go_on(small_set):
    for turn, audio in turns(small_set, "paused"):
        first, end = turn["pause"]
        assert end - first == round(pause_set.PAUSE_S * RATE)
        check_silence_after_speech(turn, audio, first, end)
        assert dbfs(audio[end : end + RATE * 3 // 10]) > -40, turn["file"]  # the words go on after it
        assert turn["rest"] and turn["words"].endswith(turn["rest"])


def test_whisper_hears_the_cut_turns_words_and_not_the_rest(small_set, whisper_tiny_en: Path):
    whisper = WhisperTranscriber(AsrConfig(model=str(whisper_tiny_en), device="cpu", window="fitted"))
    cut = turns(small_set, "cut")[:3]
    heard = [whisper.transcribe(audio).text for _, audio in cut]
    assert word_error_rate([t["words"] for t, _ in cut], heard) < 0.35, heard
    for (turn, _), text in zip(cut, heard):
        rest = normalize_words(turn["rest"])
        assert normalize_words(text)[-len(rest) :] != rest, (turn["words"], text)


def test_the_set_is_the_same_each_time_it_is_built(small_set, tmp_path: Path):
    directory, manifest = small_set
    again = pause_set.build(tmp_path, limit=2, quiet=True)
    first = [t for t in manifest["turns"] if t["prompt"] in {t["prompt"] for t in again["turns"]}]
    assert again["turns"] == first
    for turn in again["turns"]:
        assert (tmp_path / turn["file"]).read_bytes() == (directory / turn["file"]).read_bytes()
