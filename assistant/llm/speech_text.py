"""Turn an LLM's reply into text a speech model can say: markdown, code, links, emoji and symbols become words or go.

Two stages. `MarkdownLines` works on the stream of deltas ahead of the sentence chunker, because what it
handles spans chunks: fenced code blocks are dropped (a short note is said instead), and line markup
(headings, bullets, numbered items, quotes, tables, rules) goes from the start of each line, each line then
ending as a sentence. `clean_inline` cleans each chunk: links and URLs, inline code, emphasis, HTML, symbols
and emoji. `SpeechChunker` puts the two around the `SentenceChunker`; `for_speech` does the same to a whole text.

Numbers stay as the LLM wrote them, except where a symbol has one clear reading: 50% -> 50 percent,
$5 -> 5 dollars, 20°C -> 20 degrees Celsius, 3 × 4 -> 3 times 4.
"""

from __future__ import annotations

import html
import re
import unicodedata
from urllib.parse import urlsplit

from assistant.llm.chunker import SentenceChunker

CODE_NOTE = "I'll skip the code here."

FENCE = re.compile(r"^\s*(?:```|~~~)")
MARKER = re.compile(r"^\s*(?:#{1,6}|[-*+•]|\d{1,3}[.)]|(?:>\s*)+)\s+(?=\S)")
MAYBE_MARKER = re.compile(
    r"^\s*(?:#{1,6}\s*|[-*+•]\s*|\d{1,3}(?:[.)]\s*)?|(?:>\s*)+|`{1,2}|~{1,2}|(?:[-*_=]\s*){2,})?$"
)
RULE = re.compile(r"^\s*(?:(?:[-*_=]\s*){3,}|#{1,6}|[-*+•>])\s*$")  # rules, setext underlines, bare markers
TABLE_SEPARATOR = re.compile(r"^:?-{3,}:?$")
LINE_ENDINGS = ".!?:;,…"
CLOSERS = " \t\"')]}*_’”"

IMAGE = re.compile(r"!\[[^\]\n]*\]\([^)\n]*\)")
LINK = re.compile(r"\[([^\]\n]+)\]\((?:[^()\s]|\([^()\s]*\))*(?:\s+\"[^\"]*\")?\)")
REFERENCE_LINK = re.compile(r"\[([^\]\n]+)\]\[[^\]\n]*\]")
CITATION = re.compile(r"\[\^?\d+\]")
AUTOLINK = re.compile(r"<((?:https?://|www\.)[^<>\s]+)>")
URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()\[\]]*[^\s<>\"'()\[\].,;:!?]")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
EMPHASIS = [
    re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1"),
    re.compile(r"(?<![\w*])(\*)(?=[^\s*])([^*]+?)(?<=[^\s*])\*(?![\w*])"),
    re.compile(r"(?<![\w_])(_)(?=[^\s_])([^_]+?)(?<=[^\s_])_(?![\w_])"),
    re.compile(r"(~~)(?=\S)(.+?)(?<=\S)~~"),
]
HTML_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
CURRENCY = re.compile(r"([$€£])\s?(\d(?:[\d,]*\d)?(?:\.\d+)?)(\s?(?:thousand|million|billion|trillion)\b)?")
CURRENCY_NAMES = {"$": "dollar", "€": "euro", "£": "pound"}
SYMBOLS = [
    (re.compile(r"(?<=\d)\s?%"), " percent"),
    (re.compile(r"\s?°\s?C\b"), " degrees Celsius"),
    (re.compile(r"\s?°\s?F\b"), " degrees Fahrenheit"),
    (re.compile(r"\s?°"), " degrees"),
    (re.compile(r"\s*(?:->|=>|→|⟶)\s*"), " to "),
    (re.compile(r"\s*&\s*"), " and "),
    (re.compile(r"\s*\+\s*"), " plus "),
    (re.compile(r"\s*(?:×|(?<=\d) \* (?=\d))\s*"), " times "),
    (re.compile(r"\s*÷\s*"), " divided by "),
    (re.compile(r"\s*=\s*"), " equals "),
    (re.compile(r"(?<=\s)<(?=\s)"), "less than"),
    (re.compile(r"(?<=\s)>(?=\s)"), "greater than"),
    (re.compile(r"\s*@\s*"), " at "),
    (re.compile(r"#(?=\d)"), "number "),
    (re.compile(r"~(?=\s?\d)"), "about "),
    (re.compile(r"(?<!\d)/|/(?!\d)"), " "),  # a slash is said only between numbers (24/7, 1/2)
    (re.compile(r"_"), " "),
]
LONG_TOKEN = re.compile(r"(?<!\S)\S{25,}(?!\S)")  # hashes, keys, paths: unsayable when they hold digits or signs
SAYABLE_PUNCTUATION = set(".,!?;:'\"()-–—…’‘“”/ ")
STRAY_PUNCTUATION = re.compile(r"([.!?,;:])\s+[.,;:]+(?=\s|$)")  # left where an emoji or a symbol was dropped


class MarkdownLines:
    """The line-level part of the clean-up, on a stream: `push` deltas, `flush` at the end; both return text."""

    def __init__(self) -> None:
        self._held = ""  # the start of the current line, until it shows what kind of line it is
        self._open = False  # the current line is plain text and streams through
        self._said = ""  # what this line gave out so far
        self._in_code = False

    def push(self, delta: str) -> str:
        out = []
        for part in re.split(r"(\n)", delta):
            if part == "\n":
                out.append(self._end_line() + "\n")
            elif part:
                out.append(self._text(part))
        return "".join(out)

    def flush(self) -> str:
        """The rest of the reply; a code block left open is dropped."""
        return self._end_line(last=True)

    def _text(self, part: str) -> str:
        if self._open:
            return self._say(part)
        self._held += part
        if self._in_code or self._held.lstrip().startswith("|") or FENCE.match(self._held):
            return ""  # code, fences and table rows are handled whole, at the end of their line
        if marker := MARKER.match(self._held):
            self._held = self._held[marker.end() :]
        elif MAYBE_MARKER.match(self._held):
            return ""
        self._open = True
        held, self._held = self._held, ""
        return self._say(held)

    def _say(self, text: str) -> str:
        self._said += text
        return text

    def _end_line(self, last: bool = False) -> str:
        held, was_open, said = self._held, self._open, self._said
        self._held, self._open, self._said = "", False, ""
        if FENCE.match(held):
            self._in_code = not self._in_code
            return CODE_NOTE if self._in_code else ""
        if self._in_code:
            return ""
        text = "" if was_open else _whole_line(held)  # an open line has streamed through already
        said = said if was_open else text
        if last or not said.strip() or said.rstrip(CLOSERS)[-1:] in LINE_ENDINGS:
            return text
        return text + "."  # a heading, list item or table row is a sentence of its own


def _whole_line(line: str) -> str:
    """A line held to its end: a rule, a table row, or a short line that began like a marker."""
    if RULE.match(line):
        return ""
    if line.lstrip().startswith("|"):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if all(TABLE_SEPARATOR.match(cell) for cell in cells if cell):
            return ""
        return ", ".join(cell for cell in cells if cell)
    marker = MARKER.match(line)
    return line[marker.end() :] if marker else line


class SpeechChunker:
    """LLM deltas in, sayable chunks out: `MarkdownLines`, then the `SentenceChunker`, then `clean_inline`.

    The same interface as `SentenceChunker`; chunks with nothing left to say are dropped.
    """

    def __init__(self) -> None:
        self._lines = MarkdownLines()
        self._sentences = SentenceChunker()

    def push(self, delta: str) -> list[str]:
        return _sayable(self._sentences.push(self._lines.push(delta)))

    def flush(self) -> list[str]:
        return _sayable(self._sentences.push(self._lines.flush()) + self._sentences.flush())


def for_speech(text: str) -> str:
    """A whole reply, cleaned for speech."""
    lines = MarkdownLines()
    return clean_inline(lines.push(text) + lines.flush())


def clean_inline(text: str) -> str:
    """One chunk: links to their text, URLs to their domain, markup and emoji gone, symbols said; "" if nothing is
    left."""
    text = html.unescape(text)
    text = IMAGE.sub("", text)
    text = LINK.sub(r"\1", text)
    text = REFERENCE_LINK.sub(r"\1", text)
    text = CITATION.sub("", text)
    text = AUTOLINK.sub(r"\1", text)
    text = URL.sub(lambda m: _domain(m.group(0)), text)
    text = INLINE_CODE.sub(r"\2", text)
    for pattern in EMPHASIS:
        text = pattern.sub(r"\2", text)
    text = HTML_TAG.sub(" ", text)
    text = CURRENCY.sub(_currency, text)
    for pattern, words in SYMBOLS:
        text = pattern.sub(words, text)
    text = LONG_TOKEN.sub(lambda m: "" if re.search(r"[\d\\=+]", m.group(0)) else m.group(0), text)
    text = "".join(c if _sayable_char(c) else " " for c in text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\(\s*\)|\"\s*\"", "", text)
    text = STRAY_PUNCTUATION.sub(r"\1", text)
    text = re.sub(r" +([.,!?;:…)])", r"\1", text)
    text = re.sub(r"^[\s.,;:!?)]+", "", text).strip()
    return text if any(c.isalnum() for c in text) else ""


def _sayable(chunks: list[str]) -> list[str]:
    return [clean for chunk in chunks if (clean := clean_inline(chunk))]


def _domain(url: str) -> str:
    host = urlsplit(url if "://" in url else f"//{url}").hostname or ""
    return host.removeprefix("www.")


def _currency(match: re.Match[str]) -> str:
    symbol, amount, scale = match.groups()
    name = CURRENCY_NAMES[symbol]
    plural = "" if amount == "1" and not scale else "s"
    return f"{amount}{scale or ''} {name}{plural}"


def _sayable_char(char: str) -> bool:
    if char in SAYABLE_PUNCTUATION or char.isspace():
        return True
    if "\ufe00" <= char <= "\ufe0f":  # emoji variation selectors
        return False
    return unicodedata.category(char)[0] in "LN" or unicodedata.category(char) in ("Mn", "Mc")
