"""The assistant's voice with a tiny random CSM and Mimi: a reference that heads every prompt, cached clip codes, a
locked voice made once, and clear errors for clips that cannot be used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from assistant.audio.wavfile import read_wav
from assistant.config import Config
from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.prompt import audio_rows, text_rows
from assistant.tts.reference_voice import (
    GREETING,
    ReferenceVoice,
    VoiceError,
    cache_dir,
    check_voice_source,
    locked_voice,
    locked_voice_path,
    voice_from_clip,
)
from pipelines.components import StartupError, load_voice
from tests.support.speech import Clip

K = 8  # TINY_CSM's codebooks


@pytest.fixture(scope="module")
def engine(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json) -> CSMEngine:
    return CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)


@pytest.fixture
def encodes(engine: CSMEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of each audio the engine encodes."""
    seen: list[int] = []
    original = engine.encode

    async def counted(audio: np.ndarray, rate: int) -> torch.Tensor:
        seen.append(len(audio))
        return await original(audio, rate)

    monkeypatch.setattr(engine, "encode", counted)
    return seen


def codes(seed: int, frames: int) -> torch.Tensor:
    return torch.randint(0, 2048, (K, frames), generator=torch.Generator().manual_seed(seed))


def voice_rows(engine: CSMEngine, voice: Segment) -> torch.Tensor:
    text, _ = text_rows(engine.text.encode(voice.text, voice.speaker), K)
    assert voice.codes is not None
    return torch.cat([text, audio_rows(voice.codes)[0]])


def test_the_voice_heads_every_prompt_and_the_oldest_turns_make_room(engine: CSMEngine) -> None:
    voice = Segment(1, "This is how I sound.", codes=codes(0, 40))
    head = voice_rows(engine, voice)
    history = [Segment(turn % 2, f"Turn number {turn}.", codes=codes(turn + 1, 150)) for turn in range(14)]
    short, _ = engine.prompt("Hello.", context=history[-1:], reference=voice)
    assert torch.equal(short[: len(head)], head)
    long, _ = engine.prompt("Hello.", context=history, reference=voice)
    assert torch.equal(long[: len(head)], head)  # kept, though the conversation does not fit
    without, _ = engine.prompt("Hello.", context=history)
    assert len(long) <= len(without) and len(long) < len(head) + len(without)  # old turns went instead
    newest, text = voice_rows(engine, history[-1]), len(engine.text.encode("Hello.", 1))
    assert torch.equal(long[-len(newest) - text : -text], newest)  # the newest turn is still there


def test_voice_rows_are_prefilled_once_while_the_turns_after_them_change(engine: CSMEngine, monkeypatch) -> None:
    prefills: list[int] = []
    original = engine.steps.prefill
    monkeypatch.setattr(
        engine.steps, "prefill", lambda t, m, start=0: (prefills.append(start), original(t, m, start))[1]
    )
    voice = Segment(1, "This is how I sound.", codes=codes(0, 40))
    head = len(voice_rows(engine, voice))
    engine.forget_cache()  # as after the engine's warm-up: nothing of the voice is in the cache
    history: list[Segment] = []
    for turn in range(12):  # long enough that the oldest turns are dropped
        history.append(Segment(0, f"Question {turn}.", codes=codes(100 + turn, 150)))
        reply = engine.generate(f"Answer {turn}.", context=history, reference=voice, temperature=0, max_audio_ms=240)
        history.append(Segment(1, f"Answer {turn}.", codes=reply.codes))
    assert prefills[0] == 0 and all(start >= head for start in prefills[1:])
    assert len(engine.prompt("Next.", context=history)[0]) > 2048 - 512  # the turns did fill the window


async def test_a_clip_is_encoded_once_and_again_when_the_file_changes(
    engine: CSMEngine, encodes: list[int], speech_clips: list[Clip], tmp_path: Path
) -> None:
    audio, rate = read_wav(speech_clips[0].path)
    clip = tmp_path / "me.wav"
    soundfile.write(clip, audio, rate)
    first = await voice_from_clip(clip, speech_clips[0].text, 1, engine)
    again = await voice_from_clip(clip, speech_clips[0].text, 1, engine)
    assert len(encodes) == 1 and torch.equal(first.codes, again.codes)
    assert first.codes.shape == (K, round(len(audio) / rate / 0.08)) and list(cache_dir().iterdir())
    soundfile.write(clip, audio[: len(audio) // 2], rate)
    changed = await voice_from_clip(clip, speech_clips[0].text, 1, engine)
    assert len(encodes) == 2 and changed.codes.shape[1] < first.codes.shape[1]


async def test_a_stereo_44k_clip_with_its_transcript_beside_it(
    engine: CSMEngine, speech_clips: list[Clip], tmp_path: Path
) -> None:
    audio, _ = read_wav(speech_clips[1].path, 44_100)
    clip = tmp_path / "stereo.flac"
    soundfile.write(clip, np.stack([audio, 0.5 * audio], axis=1), 44_100)
    clip.with_suffix(".txt").write_text(speech_clips[1].text + "\n")
    check_voice_source(clip, None)
    voice = await voice_from_clip(clip, None, 0, engine)
    assert voice.text == speech_clips[1].text and voice.speaker == 0
    assert abs(voice.seconds - len(audio) / 44_100) < 0.1


async def test_the_locked_voice_is_made_once_then_read(engine: CSMEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    made = await locked_voice(1, engine, 0.9, 50)
    assert made.text == GREETING and made.codes.shape[1] > 0 and locked_voice_path().is_file()
    monkeypatch.setattr(engine, "generate", lambda *a, **k: pytest.fail("a second voice was made"))
    read = await locked_voice(1, engine, 0.9, 50)
    assert torch.equal(read.codes, made.codes) and read.codec == engine.codec.fingerprint


async def test_a_locked_voice_from_other_mimi_weights_is_refused(engine: CSMEngine) -> None:
    ReferenceVoice(1, "Hi.", codes(0, 10), "another-codec", "test").save(locked_voice_path())
    with pytest.raises(VoiceError, match="other Mimi weights.*--reset-voice"):
        await locked_voice(1, engine, 0.9, 50)


@pytest.mark.parametrize("problem", ["missing", "not audio", "no transcript", "not a voice file"])
def test_a_clip_that_cannot_be_used_is_named_before_anything_loads(problem: str, tmp_path: Path) -> None:
    clip = tmp_path / ("voice.safetensors" if problem == "not a voice file" else "voice.wav")
    if problem == "not audio":
        clip.write_text("hello")
    elif problem in ("no transcript", "not a voice file"):
        soundfile.write(clip, np.zeros(24_000, np.float32), 24_000, format="WAV")
    expected = {
        "missing": "no such voice file or clip",
        "not audio": "not an audio file",
        "no transcript": "needs its transcript.*voice.txt",
        "not a voice file": "not a voice file",
    }[problem]
    with pytest.raises(VoiceError, match=expected):
        check_voice_source(clip, None)


async def test_a_clip_too_long_for_the_window_is_refused_naming_the_limit(
    engine: CSMEngine, speech_clips: list[Clip], tmp_path: Path
) -> None:
    audio, rate = read_wav(speech_clips[0].path)
    clip = tmp_path / "long.wav"
    soundfile.write(clip, np.tile(audio, int(45 * rate / len(audio)) + 1), rate)  # over 45 s
    config = Config.model_validate({"voice": {"path": str(clip), "text": speech_clips[0].text}})
    with pytest.raises(StartupError, match=r"may take 512 .*at most 3\d\.\d s of audio"):
        await load_voice(config, engine)
