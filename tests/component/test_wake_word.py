"""The wake word with real parts: pymicro-wakeword's shipped models on espeak-ng renderings of the wake phrases and
on LibriVox speech, through the voice loop with the real VAD and Whisper tiny.en (the LLM is a fake)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from assistant.asr import WhisperTranscriber
from assistant.audio.wavfile import read_wav
from assistant.config import AsrConfig, Config
from assistant.events import (
    ConversationReset,
    EventBus,
    SpeechStarted,
    StateChanged,
    UserTranscript,
    UtteranceEnded,
    WakeDetected,
)
from assistant.vad import VadSegmenter
from assistant.wake_word import WakeWordDetector, WakeWordError
from pipelines.attention import AttentionError, load_attention
from pipelines.voice_loop import VoiceLoop
from tests.conftest import REPO, require
from tests.support.fakes import FakeBackend, QueueSource
from tests.support.speech import espeak, espeak_available, librivox_clips
from tests.unit.test_reply import until

RATE = 16_000


def spoken(text: str, tmp_path: Path, voice: str = "en-us") -> np.ndarray:
    require(espeak_available(), "espeak-ng not installed")
    name = "".join(c for c in text if c.isalnum())[:40]
    audio, _ = read_wav(espeak(text, tmp_path / f"{name}-{voice}.wav", voice), RATE)
    return audio


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.float32)


@pytest.fixture(scope="module")
def whisper(whisper_tiny_en: Path) -> WhisperTranscriber:
    return WhisperTranscriber(AsrConfig(model=str(whisper_tiny_en), device="cpu"), cpu_threads=1)


def settings(**listen: object) -> Config:
    return Config.model_validate({"listen": {"mode": "wake_word", **listen}, "conversation": {"idle_reset_s": None}})


def loop(config: Config, whisper: WhisperTranscriber, replies: list[list[str]] | None = None) -> VoiceLoop:
    attention = load_attention(config.listen)
    first, *then = replies or [["It is noon."]]
    return VoiceLoop(
        config,
        EventBus(),
        FakeBackend(first, then=then),
        transcriber=whisper,
        segmenter=VadSegmenter(config.vad),
        wake_word=attention.wake_word,
    )


async def hear(voice: VoiceLoop, *audio: np.ndarray) -> list[object]:
    """Play the audio into the loop as a microphone would (in 20 ms blocks), then end it; the events published."""
    source, events = QueueSource(), voice.bus.subscribe()
    listening = asyncio.create_task(voice.listen(source))
    for part in audio:
        source.put(part, block=320)
    source.end()
    await asyncio.wait_for(listening, 60)
    return [events.queue.get_nowait() for _ in range(events.queue.qsize())]


@pytest.mark.parametrize(
    "model, phrase, voice",
    [
        ("okay_nabu", "Okay Nabu", "en-us"),
        ("okay_nabu", "Okay Nabu", "en-gb"),
        ("hey_jarvis", "Hey Jarvis", "en-us+f3"),
    ],
)
async def test_a_question_in_the_same_breath_as_the_wake_word_is_one_turn_without_it(
    model: str, phrase: str, voice: str, whisper: WhisperTranscriber, tmp_path: Path
) -> None:
    said = spoken(f"{phrase}, what time is it?", tmp_path, voice)
    voice_loop = loop(settings(wake_word=model), whisper)
    events = await hear(voice_loop, silence(0.5), said, silence(1.5))
    wakes = [e for e in events if isinstance(e, WakeDetected)]
    assert len(wakes) == 1 and wakes[0].model == model and wakes[0].score > 0.5
    (heard,) = [e for e in events if isinstance(e, UserTranscript)]
    words = heard.text.lower()
    assert "time is it" in words and "nabu" not in words and "jarvis" not in words
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states.index("listening") < states.index("thinking")


async def test_a_question_after_a_pause_is_the_turn(whisper: WhisperTranscriber, tmp_path: Path) -> None:
    voice_loop = loop(settings(), whisper)
    wake, question = spoken("Okay Nabu.", tmp_path), spoken("What is the weather like today?", tmp_path)
    events = await hear(voice_loop, silence(0.3), wake, silence(1.0), question, silence(1.5))
    (heard,) = [e for e in events if isinstance(e, UserTranscript)]
    assert "weather" in heard.text.lower() and "nabu" not in heard.text.lower()


async def test_speech_without_the_wake_word_is_neither_heard_nor_kept(whisper: WhisperTranscriber) -> None:
    clips = librivox_clips()
    require(bool(clips), "pocketsphinx-testdata's LibriVox clips not installed")
    voice_loop = loop(settings(), whisper)
    audio = [read_wav(c.path, RATE)[0] for c in clips[:3]]
    events = await hear(voice_loop, *audio, silence(1.0))
    assert not [e for e in events if isinstance(e, WakeDetected | SpeechStarted | UtteranceEnded | UserTranscript)]
    assert voice_loop.conversation.turns == [] and not voice_loop.busy


async def test_the_follow_up_window_takes_a_turn_without_the_wake_word_and_then_closes(
    whisper: WhisperTranscriber, tmp_path: Path
) -> None:
    voice_loop = loop(settings(follow_up_s=1.0), whisper, [["It is noon."], ["It is sunny."], ["Never said."]])
    source, events = QueueSource(), voice_loop.bus.subscribe(UserTranscript, StateChanged)
    listening = asyncio.create_task(voice_loop.listen(source))
    source.put(spoken("Okay Nabu, what time is it?", tmp_path), block=320)
    source.put(silence(1.0), block=320)
    await until(lambda: len(voice_loop.conversation.turns) == 2, 30)
    source.put(spoken("And the weather?", tmp_path), block=320)  # within the window: no wake word needed
    source.put(silence(1.0), block=320)
    await until(lambda: len(voice_loop.conversation.turns) == 4, 30)
    await until(lambda: voice_loop.floor.user.value == "waiting", 5)  # the window closed a second after the reply
    source.put(spoken("What about tomorrow?", tmp_path), block=320)
    source.put(silence(1.0), block=320)
    source.end()
    await listening
    heard = [e.text for e in drain(events) if isinstance(e, UserTranscript)]
    assert len(heard) == 2 and "weather" in heard[1].lower()


def drain(subscription) -> list[object]:
    return [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())]


async def test_the_host_asks_it_to_listen_without_the_wake_word(whisper: WhisperTranscriber, tmp_path: Path) -> None:
    voice_loop = loop(settings(), whisper)
    source = QueueSource()
    listening = asyncio.create_task(voice_loop.listen(source))
    await asyncio.sleep(0.05)
    voice_loop.attend("mqtt")  # a face in front of the kiosk
    source.put(spoken("What time is it?", tmp_path), block=320)
    source.put(silence(1.0), block=320)
    source.end()
    await listening
    assert [t.role for t in voice_loop.conversation.turns] == ["user", "assistant"]


async def test_an_idle_conversation_is_forgotten(whisper: WhisperTranscriber, tmp_path: Path) -> None:
    config = Config.model_validate({"conversation": {"idle_reset_s": 0.5}})
    voice_loop = VoiceLoop(config, EventBus(), FakeBackend(["Hi."]))
    resets = voice_loop.bus.subscribe(ConversationReset)
    await voice_loop.ask("Hello.")
    assert len(voice_loop.conversation.turns) == 2
    reset = await asyncio.wait_for(resets.get(), 5)
    assert isinstance(reset, ConversationReset) and reset.reason == "idle"
    assert voice_loop.conversation.turns == []


def test_bad_wake_word_settings_are_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(AttentionError, match="listen.wake_word: 'hey_computer' is neither a built-in wake word"):
        load_attention(settings(wake_word="hey_computer").listen)
    models = Path(__import__("pymicro_wakeword").__file__).parent / "models"
    own = tmp_path / "own"
    own.mkdir()
    for name in ("okay_nabu.json", "okay_nabu.tflite"):
        shutil.copy(models / name, own / name)
    assert WakeWordDetector(str(own / "okay_nabu.json")).phrase == "Okay Nabu"  # the user's own pair loads
    (own / "okay_nabu.tflite").write_bytes(b"not a model at all")
    with pytest.raises(WakeWordError, match="is not a TensorFlow Lite model"):
        WakeWordDetector(str(own / "okay_nabu.json"))
    config = json.loads((models / "okay_nabu.json").read_text())
    config["micro"]["sample_rate"] = 8000
    (own / "eight.json").write_text(json.dumps(config))
    with pytest.raises(WakeWordError, match="a model for 8000 Hz audio"):
        WakeWordDetector(str(own / "eight.json"))
    with pytest.raises(AttentionError, match="listen.earcon: "):
        load_attention(settings(earcon=str(tmp_path / "missing.wav")).listen)


@pytest.mark.parametrize("setting", ["listen.wake_word=hey_computer", "listen.earcon=/no/such/ding.wav"])
def test_the_program_stops_at_once_with_one_line_for_a_bad_listen_setting(setting: str) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "run_assistant.py"), "--set", "listen.mode=wake_word", "--set", setting],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"config error: {setting.split('=')[0]}")
