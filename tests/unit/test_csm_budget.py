"""The CSM length budget and sentence splitting (pure logic)."""

import pytest

from assistant.tts.csm.budget import Budget, split_sentences


def test_frames_from_text_length_explicit_and_absolute():
    budget = Budget(base_ms=2000, ms_per_token=400, absolute_ms=90_000)
    assert budget.frames(10) == (2000 + 4000) // 80
    assert budget.frames(10, max_audio_ms=800) == 10
    assert budget.frames(10, max_audio_ms=10**9) == 90_000 // 80
    assert budget.frames(0, max_audio_ms=1) == 1


def test_split_packs_whole_sentences():
    words = lambda s: len(s.split())  # noqa: E731
    text = "One two three. Four five! Six seven eight nine? Ten."
    assert split_sentences(text, words, lambda n: n <= 5) == ["One two three. Four five!", "Six seven eight nine? Ten."]
    assert split_sentences(text, words, lambda n: n <= 100) == [text]


def test_split_refuses_a_sentence_that_cannot_fit():
    with pytest.raises(ValueError, match="too long"):
        split_sentences("a b c d e f g.", lambda s: len(s.split()), lambda n: n <= 3)
