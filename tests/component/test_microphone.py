"""The live microphone on PulseAudio's virtual microphone, with real sounddevice streams."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from assistant.audio.devices import AudioDeviceError
from assistant.audio.microphone import QUEUE_S, Microphone
from assistant.audio.streams import CAPTURE_RATE
from assistant.audio.wavfile import read_wav
from tests.support.pulse import PulseAudio
from tests.support.speech import Clip


def tone(seconds: float, frequency: float, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * CAPTURE_RATE)) / CAPTURE_RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


async def collect(mic: Microphone, blocks: list[np.ndarray]) -> None:
    async for block in mic.blocks():
        blocks.append(block)


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:g} s")
        await asyncio.sleep(0.05)


def best_alignment(recorded: np.ndarray, sent: np.ndarray) -> float:
    """Correlation coefficient of `sent` with the part of `recorded` it matches best."""
    size = 1 << int(np.ceil(np.log2(len(recorded) + len(sent))))
    scores = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(sent, size)), size)
    lag = int(np.argmax(scores[: len(recorded) - len(sent) + 1]))
    heard = recorded[lag : lag + len(sent)]
    return float(np.dot(heard, sent) / (np.linalg.norm(heard) * np.linalg.norm(sent)))


@pytest.mark.parametrize("capture_rate", [None, 48000])
async def test_fed_speech_comes_out_at_16_khz(
    pulse: PulseAudio, speech_clips: list[Clip], capture_rate: int | None
) -> None:
    speech, _ = read_wav(min(speech_clips, key=lambda c: c.path.stat().st_size).path, CAPTURE_RATE)
    feed = pulse.microphone()
    threads = set(threading.enumerate())
    blocks: list[np.ndarray] = []
    mic = Microphone("pulse", capture_rate=capture_rate)
    collecting = asyncio.create_task(collect(mic, blocks))
    await until(lambda: bool(blocks), 10, "the first block")
    assert mic.rate == (capture_rate or mic.device.default_samplerate) != CAPTURE_RATE
    feed.send(speech)
    await asyncio.sleep(len(speech) / CAPTURE_RATE + 1.0)
    await mic.aclose()
    await collecting  # blocks() ends on close
    assert set(threading.enumerate()) == threads
    recorded = np.concatenate(blocks)
    assert recorded.dtype == np.float32
    assert best_alignment(recorded, speech) > 0.9


async def test_an_unknown_device_is_named_in_the_error(pulse: PulseAudio) -> None:
    with pytest.raises(AudioDeviceError, match="no-such-mic"):
        async for _ in Microphone("no-such-mic").blocks():
            pass


async def test_a_rate_the_device_refuses_is_a_device_error(pulse: PulseAudio) -> None:
    mic = Microphone("pulse", capture_rate=1)
    with pytest.raises(AudioDeviceError, match="'pulse'.* 1 Hz"):
        await mic.start()
    await mic.aclose()


async def test_a_lost_microphone_is_reported_and_audio_flows_again_when_it_returns(pulse: PulseAudio) -> None:
    pulse.microphone()
    errors: list[str] = []
    blocks: list[np.ndarray] = []
    mic = Microphone("pulse", on_error=errors.append, retry_s=0.2)
    collecting = asyncio.create_task(collect(mic, blocks))
    await until(lambda: bool(blocks), 10, "the first block")
    # Without the speaker as well, PulseAudio would quietly move the stream to the speaker's
    # monitor; with no source left, the stream ends as with a lone USB microphone pulled out.
    with pulse.unplugged(PulseAudio.MICROPHONE, PulseAudio.SPEAKER):
        await until(lambda: bool(errors), 10, "a report of the lost microphone")
        await asyncio.sleep(0.5)  # a few failed attempts to open it again
    returned = len(blocks)
    feed = pulse.microphone()
    # What is said before the stream is open again is not recorded by anyone (it takes ~1 s on a
    # busy machine), so the tone comes once audio flows again.
    await until(lambda: len(blocks) > returned, 10, "audio after the return")
    reopened = len(blocks)
    feed.send(tone(0.5, 440))
    await until(lambda: any(np.max(np.abs(b)) > 0.2 for b in blocks[reopened:]), 10, "the tone after the return")
    await mic.aclose()
    await collecting
    assert len(errors) == 1, errors
    assert "microphone 'pulse'" in errors[0]


async def test_a_consumer_that_falls_behind_loses_the_oldest_audio(pulse: PulseAudio) -> None:
    feed = pulse.microphone()
    errors: list[str] = []
    mic = Microphone("pulse", on_error=errors.append)
    blocks = mic.blocks()
    await anext(blocks)
    feed.send(tone(0.3, 440))  # falls out of the queue while nobody reads
    await asyncio.sleep(QUEUE_S)
    feed.send(tone(0.3, 1000))
    await asyncio.sleep(1.0)
    kept: list[np.ndarray] = []
    while sum(map(len, kept)) < 0.9 * QUEUE_S * CAPTURE_RATE:  # what was queued
        kept.append(await anext(blocks))
    await blocks.aclose()
    await mic.aclose()
    assert len(errors) == 1 and "dropping the oldest" in errors[0], errors
    audio = np.concatenate(kept)
    spectrum = np.abs(np.fft.rfft(audio))
    hz = np.fft.rfftfreq(len(audio), 1 / CAPTURE_RATE)
    assert spectrum[np.abs(hz - 1000) < 20].max() > 10 * spectrum[np.abs(hz - 440) < 20].max()
