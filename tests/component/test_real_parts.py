"""Each real part the later tests rely on works on this machine."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from assistant.audio.wavfile import read_wav
from tests.support.mosquitto import Mosquitto
from tests.support.pulse import PulseAudio
from tests.support.speech import Clip, word_error_rate


def test_word_error_rate() -> None:
    assert word_error_rate("he was not ill", "He was not ill.") == 0
    assert word_error_rate("he was not ill", "he was ill") == 0.25
    assert word_error_rate("a b", "a b c d") == 1.0
    assert word_error_rate(["a b c", "d"], ["a b c", "e"]) == 0.25


def test_whisper_tiny_en_transcribes_librivox(whisper_tiny_en: Path, speech_clips: list[Clip]) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_tiny_en), device="cpu", compute_type="int8", cpu_threads=1)
    heard = []
    for clip in speech_clips:
        audio, _ = read_wav(clip.path, 16000)
        heard.append(" ".join(s.text for s in model.transcribe(audio, language="en")[0]))
    wer = word_error_rate([c.text for c in speech_clips], heard)
    assert len(speech_clips) >= 5
    assert wer < 0.20, list(zip(heard, [c.text for c in speech_clips]))


def test_espeak_sentences_are_understood(whisper_tiny_en: Path, espeak_wav) -> None:
    from faster_whisper import WhisperModel

    model = WhisperModel(str(whisper_tiny_en), device="cpu", compute_type="int8", cpu_threads=1)
    sentences = ["Please turn on the kitchen lights.", "What time is it in London?"]
    heard = []
    for sentence in sentences:
        audio, rate = read_wav(espeak_wav(sentence), 16000)
        assert rate == 16000 and 1.0 < len(audio) / rate < 4.0
        heard.append(" ".join(s.text for s in model.transcribe(audio, language="en")[0]))
    assert word_error_rate(sentences, heard) < 0.2, heard


def _record_while_playing(sd, rate: int, tone: np.ndarray) -> np.ndarray:
    recorded: list[np.ndarray] = []
    started = threading.Event()

    def on_input(block, frames, time, status) -> None:
        recorded.append(block[:, 0].copy())
        started.set()

    with sd.InputStream(device="pulse", samplerate=rate, channels=1, dtype="float32", blocksize=320, callback=on_input):
        assert started.wait(10), "the monitor delivered no audio"
        # A device buffer like the Speaker's: with PortAudio's default a busy machine underruns and chops the tone.
        sd.play(tone, rate, device="pulse", blocking=True, latency=0.4)
        sd.sleep(300)
    return np.concatenate(recorded)


def test_tone_played_to_the_null_sink_comes_back_from_its_monitor(pulse: PulseAudio) -> None:
    from assistant.audio.devices import sounddevice

    sd = sounddevice()
    pulse.use_source(f"{PulseAudio.SPEAKER}.monitor")
    rate = 16000
    t = np.arange(int(0.5 * rate)) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    recorded = _record_while_playing(sd, rate, tone)
    loud = np.flatnonzero(np.abs(recorded) > 0.1)
    assert loud.size > 0, "nothing came back from the monitor"
    heard = recorded[loud[0] : loud[0] + len(tone) - 800]
    spectrum = np.abs(np.fft.rfft(heard))
    assert abs(np.argmax(spectrum) * rate / len(heard) - 440) < 5
    assert 0.3 < np.max(np.abs(heard)) < 0.7


def test_virtual_microphone_delivers_what_is_fed(pulse: PulseAudio) -> None:
    from assistant.audio.devices import sounddevice

    sd = sounddevice()
    rate = 16000
    mic = pulse.microphone()
    recorded: list[np.ndarray] = []
    stream = sd.InputStream(
        device="pulse",
        samplerate=rate,
        channels=1,
        dtype="float32",
        blocksize=320,
        callback=lambda block, *_: recorded.append(block[:, 0].copy()),
    )
    stream.start()
    try:
        sd.sleep(1500)  # the first input callback can take a while to arrive
        t = np.arange(rate // 2) / rate
        mic.send((0.4 * np.sin(2 * np.pi * 300 * t)).astype(np.float32))
        sd.sleep(1500)
    finally:
        stream.abort()  # a pipe source only produces while written to: stop() could hang
        stream.close()
    audio = np.concatenate(recorded)
    loud = np.abs(audio) > 0.2
    assert 0.35 * rate < loud.sum() * 2 < 0.65 * rate * 2


async def test_mqtt_round_trip_through_mosquitto(mosquitto: Mosquitto) -> None:
    import aiomqtt

    async with aiomqtt.Client(mosquitto.host, mosquitto.port, identifier="fixture-test") as client:
        await client.subscribe("fixture/echo", qos=1)
        await client.publish("fixture/echo", b'{"hello": "world"}', qos=1)
        message = await asyncio.wait_for(anext(aiter(client.messages)), 5)
    assert message.topic.matches("fixture/echo")
    assert message.payload == b'{"hello": "world"}'


async def test_mosquitto_with_a_password_rejects_a_wrong_one() -> None:
    import aiomqtt

    from tests.conftest import require

    require(Mosquitto.available(), "mosquitto not installed")
    broker = Mosquitto(users={"kiosk": "s3cret"}).start()
    try:
        async with aiomqtt.Client(broker.host, broker.port, username="kiosk", password="s3cret"):
            pass
        with pytest.raises(aiomqtt.MqttError, match="[Nn]ot authorized|[Bb]ad user name or password"):
            async with aiomqtt.Client(broker.host, broker.port, username="kiosk", password="wrong"):
                pass
    finally:
        broker.close()
