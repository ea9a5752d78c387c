"""Clean-up of LLM replies for speech: a table of awkward replies, whole and streamed in pieces."""

from __future__ import annotations

import random
import re

import pytest

from assistant.llm.speech_text import CODE_NOTE, SpeechChunker, clean_inline, for_speech

AWKWARD = [
    # (what the LLM wrote, what is said)
    (
        "**Sure!** Here's a *quick* tip: use `git status` to check.",
        "Sure! Here's a quick tip: use git status to check.",
    ),
    (
        "## Steps\n1. Open the app\n2. Tap **Settings**\n3. Done!\n\nThat's it.",
        "Steps. Open the app. Tap Settings. Done! That's it.",
    ),
    (
        "Here's the code:\n```python\nprint('hi')\nfor i in range(3):\n    print(i)\n```\n"
        "Run it and you'll see 0 to 2.",
        f"Here's the code: {CODE_NOTE} Run it and you'll see 0 to 2.",
    ),
    ("Try this:\n```\nrm -rf /tmp/x\n", f"Try this: {CODE_NOTE}"),  # a code block that never closes
    (
        "See [the docs](https://docs.python.org/3/library/asyncio.html) or https://www.example.com/a/b?x=1.",
        "See the docs or example.com.",
    ),
    ("Great job! 🎉🎉 Have fun 😀👍🏽", "Great job! Have fun"),
    ("Flags 🇫🇷 and keycaps 1️⃣ and ZWJ 👩‍💻 too.", "Flags and keycaps 1 and ZWJ too."),
    (
        "It's 50% off, costs $1,200.50 or €5, and it's 20°C outside.",
        "It's 50 percent off, costs 1,200.50 dollars or 5 euros, and it's 20 degrees Celsius outside.",
    ),
    ("3 × 4 = 12 & 2+2=4, C++ too.", "3 times 4 equals 12 and 2 plus 2 equals 4, C plus plus too."),
    ("| Name | Age |\n|---|---|\n| Ann | 30 |\n| Bob | 25 |", "Name, Age. Ann, 30. Bob, 25"),
    ("- apples\n- pears\n* plums\n> quoted *text*\n---\nEnd", "apples. pears. plums. quoted text. End"),
    ("The hash is 3f9a8c7d6e5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f okay?", "The hash is okay?"),
    (
        "1.5 is more than 1. And 2023 was good. Call #1 in ~5 minutes, 24/7.",
        "1.5 is more than 1. And 2023 was good. Call number 1 in about 5 minutes, 24/7.",
    ),
    ("Use snake_case names &amp; <b>bold</b> tags, if x < y.", "Use snake case names and bold tags, if x less than y."),
    ("Meet me at 10:30 on 2024-05-01, that's 1,000 km.", "Meet me at 10:30 on 2024-05-01, that's 1,000 km."),
    ("```\nonly code\n```", CODE_NOTE),
    ("😀👍", ""),
    ("***", ""),
]


@pytest.mark.parametrize(("reply", "said"), AWKWARD)
def test_awkward_replies_become_sayable(reply: str, said: str) -> None:
    assert for_speech(reply) == said


def stream(reply: str, pieces: list[str]) -> list[str]:
    chunker = SpeechChunker()
    chunks = [chunk for piece in pieces for chunk in chunker.push(piece)]
    return chunks + chunker.flush()


def splits(text: str, seed: int) -> list[list[str]]:
    """The same text as single characters, as word tokens, and at random places."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, 7))) if len(text) > 1 else []
    return [list(text), re.findall(r"\s*\S+|\s+", text), [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]]


@pytest.mark.parametrize(("reply", "said"), AWKWARD)
def test_streamed_in_any_pieces_the_same_is_said(reply: str, said: str) -> None:
    for seed, pieces in enumerate(splits(reply, seed=len(reply))):
        chunks = stream(reply, pieces)
        assert " ".join(chunks) == said, (seed, pieces)
        assert all(chunks)


def test_no_code_leaks_from_a_block_streamed_across_chunks() -> None:
    reply = "First. Here you go.\n```js\nconsole.log('one. two. three.');\nlet x = 1;\n```\nThat's all."
    for pieces in splits(reply, seed=1):
        chunks = stream(reply, pieces)
        assert chunks == ["First.", "Here you go.", CODE_NOTE, "That's all."]


def test_a_very_long_reply_is_said_whole_in_short_chunks() -> None:
    sentence = "This sentence goes on and on without any punctuation at all because the model forgot how to stop "
    reply = "Well, " + sentence * 12 + "and then it ended. " + "Short one. " * 30
    chunks = stream(reply, re.findall(r"\s*\S+", reply))
    assert max(len(chunk) for chunk in chunks) <= 220
    assert re.sub(r"\s+", " ", " ".join(chunks)) == reply.strip()


def test_chunks_with_nothing_to_say_are_dropped() -> None:
    assert stream("🎉\n\n---\nOK.", ["🎉\n", "\n---\n", "OK."]) == ["OK."]


@pytest.mark.parametrize(
    ("chunk", "said"),
    [
        ("**Bold that spans. ", "Bold that spans."),  # emphasis cut by the chunker leaves stray markers
        ("chunks.**", "chunks."),
        ("$1 and $2 million", "1 dollar and 2 million dollars"),
        ("It's -5°F or 100 °.", "It's -5 degrees Fahrenheit or 100 degrees."),
        ("A → B, see <https://x.org/a>.", "A to B, see x.org."),
        ("Email me@example.com [1].", "Email me at example.com."),
        ("![a cat](cat.png) A cat.", "A cat."),
    ],
)
def test_inline_clean_up_of_one_chunk(chunk: str, said: str) -> None:
    assert clean_inline(chunk) == said
