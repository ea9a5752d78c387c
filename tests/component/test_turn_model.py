"""The Smart Turn end-of-turn model (from the pipecat-ai wheel, placed by scripts/setup.sh) on real speech."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.audio.wavfile import read_wav
from assistant.turn_model import SmartTurn, TurnModelError, closed_up, shipped_model, speech_end
from tests.conftest import require
from tests.support.speech import Clip


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    require(shipped_model() is not None, "Smart Turn's weights not in place (scripts/setup.sh puts them there)")
    return SmartTurn()


def test_speech_cut_mid_sentence_is_heard_as_unfinished(model: SmartTurn, speech_clips: list[Clip]) -> None:
    whole, cut = [], []
    for clip in speech_clips:
        audio, _ = read_wav(clip.path, 16_000)
        whole.append(model.complete(audio))
        cut.append(model.complete(audio[: int(len(audio) * 0.55)]))
    assert all(0 <= p <= 1 for p in whole + cut)
    assert max(cut) < 0.5  # every clip cut off half-way
    assert sum(p >= 0.5 for p in whole) >= len(whole) // 2  # most whole sentences (read speech: not all)


def test_it_hears_the_last_eight_seconds_with_silence_before_a_shorter_turn(model: SmartTurn, speech_clips) -> None:
    audio, _ = read_wav(speech_clips[0].path, 16_000)
    eight = 16_000 * 8
    longer = np.concatenate([np.random.default_rng(0).standard_normal(eight).astype(np.float32) * 0.1, audio])
    kept = closed_up(longer[: speech_end(longer)])  # the speech, its pauses closed up
    assert len(kept) > eight and model.complete(longer) == model.complete(kept[-eight:], cut=False)
    short = audio[-eight // 2 :]
    assert model.complete(short) == model.complete(np.concatenate([np.zeros(eight - len(short), np.float32), short]))


def test_a_missing_model_file_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(TurnModelError, match="missing .*no file at .*nothing.onnx"):
        SmartTurn(tmp_path / "nothing.onnx")
