"""The echo canceller's CPU time per second of audio, alone, with its blocks paced as a device paces them; prints
one JSON line.

    OMP_NUM_THREADS=1 python bench/echo_cpu.py [--seconds 30] [--noise-suppression on|off]

LibriVox speech plays through a simulated room (tests/support/room.py: 100 ms late, -6 dB, a few reflections)
into the microphone; the speaker hands 10 ms blocks at 44.1 kHz 100 ms before they are heard and the microphone
gives 20 ms blocks, as on PulseAudio. Paced, each microphone block comes 20 ms after the one before (the thread
sleeps in between, as the microphone's audio thread waits for its device); back to back, they come at once. The
two differ several times over on a machine whose caches the sleep gives away: a device pays the paced cost,
which is what `bench/echo.py` measures in place. The reference, in the same run on the same audio: the same
canceller sending AEC3 its frames through livekit's public `AudioProcessingModule` (an `AudioFrame` per frame),
as it did before `assistant/audio/aec3.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import assistant.audio.echo as echo
from assistant.audio.streams import CAPTURE_RATE as RATE
from assistant.audio.wavfile import read_wav
from tests.support.public_aec3 import PublicApiAec3
from tests.support.room import db, room
from tests.support.speech import librivox_clips

SPEAKER_RATE, BLOCK_S, SPEAKER_BLOCK_S, AHEAD_S = 44_100, 0.02, 0.01, 0.1


def run(far: np.ndarray, heard: np.ndarray, noise_suppression: bool, paced: bool) -> tuple[float, float]:
    """The canceller over the audio: (its CPU time in % of a core, ERLE in dB after its first 3 s)."""
    played = soxr.resample(far, RATE, SPEAKER_RATE).astype(np.float32)
    block, speaker_block = round(BLOCK_S * RATE), round(SPEAKER_BLOCK_S * SPEAKER_RATE)
    now = [0.0]
    canceller = echo.EchoCanceller(noise_suppression, clock=lambda: now[0])
    handed, out = round(AHEAD_S * SPEAKER_RATE), []
    started = time.monotonic()
    for k in range(len(heard) // block):
        if paced:
            time.sleep(max(0.0, started + k * BLOCK_S - time.monotonic()))
        now[0] = k * BLOCK_S
        while handed < (now[0] + BLOCK_S + AHEAD_S) * SPEAKER_RATE and handed < len(played):
            canceller.rendered(played[handed : handed + speaker_block], SPEAKER_RATE)
            handed += speaker_block
        out.append(canceller.clean(heard[k * block : (k + 1) * block]))
    cleaned, converged = np.concatenate(out), 3 * RATE
    erle = db(heard[converged : len(cleaned)]) - db(cleaned[converged:])
    return 100 * canceller.cpu_s / (len(cleaned) / RATE), float(erle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--noise-suppression", choices=("on", "off"), default="on")
    args = parser.parse_args()
    speech = np.concatenate([read_wav(clip.path, RATE)[0] for clip in librivox_clips()])
    far = np.tile(speech, int(np.ceil(args.seconds * RATE / len(speech))))[: round(args.seconds * RATE)]
    heard = room(far, 0.1, -6).astype(np.float32)
    results: dict = {
        "bench": "echo_cpu",
        "seconds": args.seconds,
        "noise_suppression": args.noise_suppression,
        "config": "LibriVox speech, room 100 ms -6 dB; speaker 44.1 kHz 10 ms blocks, microphone 20 ms",
    }
    direct = echo.Aec3
    for name, aec3 in (("direct", direct), ("public_api", PublicApiAec3)):
        echo.Aec3 = aec3  # type: ignore[misc]
        for paced in (True, False):
            cpu, erle = run(far, heard, args.noise_suppression == "on", paced)
            results[f"{name}_{'paced' if paced else 'back_to_back'}_cpu_percent"] = round(cpu, 2)
            results[f"{name}_erle_db"] = round(erle, 1)
    echo.Aec3 = direct  # type: ignore[misc]
    results["paced_speedup"] = round(results["public_api_paced_cpu_percent"] / results["direct_paced_cpu_percent"], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
