"""The end-of-turn rules: how much silence ends a turn, from the words said so far."""

from __future__ import annotations

import pytest

from assistant.config import TurnConfig
from assistant.turn_end import silence_to_end

CONFIG = TurnConfig(complete_ms=250, incomplete_ms=1200)
UNDECIDED = 600

CASES = [
    # finished sentences and questions end soon
    ("What time is it?", 250),
    ("Turn off the lights.", 250),
    ("That's great!", 250),
    ('He said "no."', 250),
    ("Tell me about Paris.", 250),
    # a trailing continuation word, a filler, a comma, an ellipsis: wait longer
    ("I want to go to the", 1200),
    ("I'd like a coffee and", 1200),
    ("I'd like a coffee, and...", 1200),
    ("So, um", 1200),
    ("Um.", 1200),
    ("It's late because", 1200),
    ("We could take the train, or", 1200),
    ("First,", 1200),
    ("Well, I was thinking...", 1200),
    ("The thing is -", 1200),
    ("My favourite colour is", 1200),
    ("Let me think. So", 1200),
    # no closing punctuation and no continuation: the configured default
    ("hello there", 600),
    ("", 600),
    ("   ", 600),
]


@pytest.mark.parametrize(("transcript", "expected"), CASES)
def test_the_silence_a_turn_needs_depends_on_its_last_words(transcript: str, expected: int) -> None:
    assert silence_to_end(transcript, CONFIG, UNDECIDED) == expected


def test_hold_words_are_configurable_and_case_blind() -> None:
    config = TurnConfig(complete_ms=250, incomplete_ms=1200, hold_words=["  Basically "])
    assert silence_to_end("It's basically.", config, UNDECIDED) == 1200
    assert silence_to_end("I want to go to the.", config, UNDECIDED) == 250  # "the" is no longer a hold word


def test_the_waits_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="speculate_ms"):
        TurnConfig(speculate_ms=300, complete_ms=250)
