"""Cut a stream of LLM text deltas into chunks for the speech engine.

Chunks end at sentence boundaries. The first chunk of a reply may end earlier, at a clause
boundary (a comma, a colon, a dash) once it has a few words, so that speech starts while the LLM
is still writing. Overlong runs without punctuation are cut at a word boundary.
"""

from __future__ import annotations

import re

SENTENCE_END = re.compile(r"(?:[.!?…]+[\"')\]]*|\n+)(?=\s)")
CLAUSE_END = re.compile(r"(?:[,;:]|\s[–—-])(?=\s)")
ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "st",
    "prof",
    "sr",
    "jr",
    "vs",
    "etc",
    "e.g",
    "i.e",
    "a.m",
    "p.m",
    "approx",
    "no",
}


class SentenceChunker:
    def __init__(self, first_clause_words: int = 4, max_chars: int = 220) -> None:
        self.first_clause_words = first_clause_words
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        """Add text; return the chunks it completed (a boundary is known once the next character came)."""
        self._buffer += delta
        chunks = []
        while (cut := self._next_cut()) is not None:
            chunk, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if chunk:
                chunks.append(chunk)
                self._emitted += 1
        return chunks

    def flush(self) -> list[str]:
        """The rest of the reply, once the LLM is done."""
        rest, self._buffer = self._buffer.strip(), ""
        chunks = [rest] if rest else []
        self._emitted = 0
        return chunks

    def _next_cut(self) -> int | None:
        text = self._buffer
        for match in SENTENCE_END.finditer(text):
            if not self._is_abbreviation(text, match.start()):
                return match.end()
        if self._emitted == 0:
            for match in CLAUSE_END.finditer(text):
                if len(text[: match.start()].split()) >= self.first_clause_words:
                    return match.end()
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        return None

    @staticmethod
    def _is_abbreviation(text: str, dot: int) -> bool:
        if text[dot] != ".":
            return False
        word = re.search(r"([\w.]+)$", text[:dot])
        if word is None:
            return False
        token = word.group(1).lower()
        return token in ABBREVIATIONS or (len(token) == 1 and token.isalpha())
