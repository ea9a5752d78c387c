"""The wake word's cost and accuracy on this machine; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/wake_word.py

For each built-in model (`assistant.wake_word.WakeWordDetector`, fed 20 ms blocks as the microphone gives them):
- `cpu_share`: CPU seconds per second of audio (process time over the audio's duration), on the LibriVox clips.
- `false_wakes`: detections in the LibriVox clips (pocketsphinx-testdata: speech that must not wake it).
- `detected`: espeak-ng renderings of "<phrase>, what time is it?" detected, over its voices (en-us, en-gb,
  en-us+f3, en-us+m3), and at what time after the phrase began (`latency_ms` from the rendering's start).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.audio.wavfile import read_wav
from assistant.wake_word import BUILT_IN, WakeWordDetector
from tests.support.speech import espeak, librivox_clips

RATE, BLOCK = 16_000, 320
VOICES = ("en-us", "en-gb", "en-us+f3", "en-us+m3")


def first_detection(detector: WakeWordDetector, audio: np.ndarray) -> float | None:
    detector.reset()
    for start in range(0, len(audio), BLOCK):
        if detector.feed(audio[start : start + BLOCK]) is not None:
            return (start + BLOCK) / RATE
    return None


def main() -> None:
    clips = [read_wav(clip.path, RATE)[0] for clip in librivox_clips()]
    if not clips:
        sys.exit("needs pocketsphinx-testdata's LibriVox clips (scripts/setup.sh --test installs them)")
    speech = np.concatenate(clips)
    result: dict[str, object] = {"bench": "wake_word", "librivox_s": round(len(speech) / RATE, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in BUILT_IN:
            detector = WakeWordDetector(name)
            started = time.process_time()
            false_wakes = sum(first_detection(detector, clip) is not None for clip in clips)
            cpu = (time.process_time() - started) / (len(speech) / RATE)
            times = []
            for voice in VOICES:
                path = espeak(f"{detector.phrase}, what time is it?", Path(tmp) / f"{name}-{voice}.wav", voice)
                audio, _ = read_wav(path, RATE)
                times.append(first_detection(detector, np.concatenate([audio, np.zeros(RATE, np.float32)])))
            heard = [t for t in times if t is not None]
            result[name] = {
                "cpu_share": round(cpu, 4),
                "false_wakes": false_wakes,
                "detected": f"{len(heard)}/{len(VOICES)}",
                "voices_detected": [v for v, t in zip(VOICES, times) if t is not None],
                "latency_ms": [round(t * 1000) for t in heard],
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
