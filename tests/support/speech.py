"""Real speech for tests: LibriVox clips with transcripts (pocketsphinx-testdata) and espeak-ng sentences."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")


@dataclass(frozen=True)
class Clip:
    path: Path
    text: str


def librivox_clips(directory: Path = LIBRIVOX_DIR) -> list[Clip]:
    """The clips listed in the package's `transcription` file (16 kHz mono wavs)."""
    transcription = directory / "transcription"
    if not transcription.is_file():
        return []
    clips = []
    for line in transcription.read_text().splitlines():
        match = re.fullmatch(r"\s*<s>(.*)</s>\s*\((\S+)\)\s*", line)
        if match and (directory / f"{match[2]}.wav").is_file():
            clips.append(Clip(directory / f"{match[2]}.wav", match[1].strip()))
    return clips


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, path: Path, voice: str = "en-us", words_per_minute: int = 140) -> Path:
    """Synthesize `text` with espeak-ng into a wav (espeak's own rate, 22.05 kHz mono)."""
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


def normalize_words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level Levenshtein distance, after lower-casing and dropping punctuation."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def word_error_rate(references: str | list[str], hypotheses: str | list[str]) -> float:
    """WER of one transcript, or of a corpus (all errors over all reference words)."""
    refs = [references] if isinstance(references, str) else references
    hyps = [hypotheses] if isinstance(hypotheses, str) else hypotheses
    errors = sum(word_errors(r, h) for r, h in zip(refs, hyps, strict=True))
    return errors / max(sum(len(normalize_words(r)) for r in refs), 1)
