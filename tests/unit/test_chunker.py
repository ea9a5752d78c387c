import pytest

from assistant.llm.chunker import SentenceChunker


def chunk_stream(text: str, step: int = 3, **kwargs) -> list[str]:
    chunker = SentenceChunker(**kwargs)
    chunks = []
    for i in range(0, len(text), step):
        chunks += chunker.push(text[i : i + step])
    return chunks + chunker.flush()


def test_first_chunk_is_a_clause_then_whole_sentences() -> None:
    text = "Well, the weather today is lovely, with sun all day. Tomorrow, it may rain. Bring an umbrella!"
    assert chunk_stream(text) == [
        "Well, the weather today is lovely,",
        "with sun all day.",
        "Tomorrow, it may rain.",
        "Bring an umbrella!",
    ]


def test_short_openings_wait_for_enough_words() -> None:
    assert chunk_stream("Sure, I can help with that. What is it?") == ["Sure, I can help with that.", "What is it?"]


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_chunks_do_not_depend_on_delta_sizes(step: int) -> None:
    text = 'Dr. Smith arrived at 3.30 p.m. on Monday. He said: "Hello there." Then he left... Fine?\nYes.'
    assert chunk_stream(text, step) == [
        "Dr. Smith arrived at 3.30 p.m. on Monday.",
        'He said: "Hello there."',
        "Then he left...",
        "Fine?",
        "Yes.",
    ]


def test_a_boundary_needs_the_next_character() -> None:
    chunker = SentenceChunker()
    assert chunker.push("It is done.") == []  # could still be "done.com" or "done..."
    assert chunker.push(" Next") == ["It is done."]
    assert chunker.flush() == ["Next"]


def test_overlong_text_without_punctuation_is_cut_at_a_word() -> None:
    words = " ".join(f"word{i}" for i in range(100))
    chunks = chunk_stream(words, max_chars=60)
    assert all(len(c) <= 60 for c in chunks)
    assert " ".join(chunks) == words


def test_flush_starts_a_new_reply() -> None:
    chunker = SentenceChunker()
    chunker.push("One sentence here. And")
    assert chunker.flush() == ["And"]
    assert chunker.push("Right, so this starts again, ") == ["Right, so this starts again,"]
    assert chunker.flush() == []
