"""The backbone's KV cache lives across turns: a prompt prefills only the rows the cache does not hold already,
and gives the frames a full prefill gives (float32; test_csm_oracle checks them against transformers too)."""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import replace

import pytest
import torch

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.cached_rows import CachedRows
from assistant.tts.csm.prompt import audio_rows, text_rows

K = 8  # TINY_CSM's codebooks


@pytest.fixture(scope="module")
def engine(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json) -> CSMEngine:
    return CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)


@pytest.fixture(scope="module")
def fresh(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json) -> CSMEngine:
    """The same checkpoint, prefilling every prompt in full."""
    engine = CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)
    engine.reuse_cache = False
    return engine


@pytest.fixture
def prefills(engine, monkeypatch) -> list[tuple[int, int]]:
    """(start, rows) of each prefill the engine runs."""
    seen: list[tuple[int, int]] = []
    original = engine.steps.prefill
    monkeypatch.setattr(
        engine.steps, "prefill", lambda t, m, start=0: (seen.append((start, t.shape[0])), original(t, m, start))[1]
    )
    return seen


def user_codes(seed: int, frames: int = 12) -> torch.Tensor:
    return torch.randint(0, 2048, (K, frames), generator=torch.Generator().manual_seed(seed))


def test_rows_shared_with_the_cache_are_counted_from_the_first():
    rows = CachedRows(K + 1)
    a, b = text_rows([1, 2, 3], K), audio_rows(user_codes(0, 4))
    rows.hold(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
    frames = user_codes(1, 3)
    for frame in frames.T:
        rows.append(frame)
    held = torch.cat([a[0], b[0], audio_rows(frames)[0][:-1]]), torch.cat([a[1], b[1], audio_rows(frames)[1][:-1]])
    assert rows.shared(*held) == held[0].shape[0] - 1  # the last row always runs again
    longer = torch.cat([held[0], a[0]]), torch.cat([held[1], a[1]])
    assert rows.shared(*longer) == held[0].shape[0]
    changed = held[0].clone()
    changed[5, 0] += 1
    assert rows.shared(changed, held[1]) == 5
    assert rows.shared(*text_rows([9, 2, 3], K)) == 0
    rows.clear()
    assert rows.shared(*longer) == 0


def test_a_conversation_prefills_only_its_new_rows_and_speaks_as_a_full_prefill(engine, fresh, prefills):
    history: list[Segment] = []
    for turn in range(3):
        history.append(Segment(0, f"User turn {turn}.", codes=user_codes(turn)))
        text = f"Reply number {turn}. It has two sentences."
        ours = engine.generate(text, context=history, temperature=0, max_audio_ms=480)
        full = fresh.generate(text, context=history, temperature=0, max_audio_ms=480)
        assert torch.equal(ours.codes, full.codes)
        history.append(Segment(1, text, codes=ours.codes))
    new_rows = [rows for start, rows in prefills[1:]]
    whole = engine.prompt("Next.", context=history)[0].shape[0]
    assert all(start > 0 for start, _ in prefills[1:]) and max(new_rows) < whole / 3


async def test_after_an_interruption_only_the_heard_frames_are_kept(engine, fresh, prefills):
    history = [Segment(0, "Tell me a long story.", codes=user_codes(7))]
    heard = []
    async with aclosing(
        engine.stream("Once upon a time there was a fox.", context=history, temperature=0, max_audio_ms=4000)
    ) as stream:
        async for chunk in stream:
            heard.append(chunk.codes)
            if len(heard) == 3:
                break
    history += [Segment(1, "Once upon a time", codes=torch.cat(heard, 1)), Segment(0, "Stop.", codes=user_codes(8))]
    ours = engine.generate("Sorry, go ahead.", context=history, temperature=0, max_audio_ms=480)
    assert prefills[-1][0] > 0
    assert torch.equal(
        ours.codes, fresh.generate("Sorry, go ahead.", context=history, temperature=0, max_audio_ms=480).codes
    )


def test_when_the_budget_drops_the_oldest_turns_the_cache_is_rebuilt(engine, fresh, prefills):
    saved = engine.budget
    engine.budget = fresh.budget = replace(saved, max_seq_len=200)
    try:
        history = [Segment(i % 2, f"Turn {i}.", codes=user_codes(i, 40)) for i in range(4)]
        engine.generate("First.", context=history, temperature=0, max_audio_ms=240)
        history.append(Segment(0, "Turn 4.", codes=user_codes(4, 40)))  # no longer fits with the oldest turn
        ours = engine.generate("Second.", context=history, temperature=0, max_audio_ms=240)
        # everything after the leading tokens the two first turns' texts share ("<bos>[") runs again
        assert prefills[-1][0] < len(engine.text.encode("Turn 1.", 1)) - 2
        assert torch.equal(
            ours.codes, fresh.generate("Second.", context=history, temperature=0, max_audio_ms=240).codes
        )
    finally:
        engine.budget = fresh.budget = saved


def test_the_padded_fixed_shape_prefill_equals_the_plain_one(engine):
    """The form the CUDA prefill graphs capture, run eagerly: rows padded to a bucket with empty rows, at an offset,
    attending over the whole cache masked by position, give the plain prefill's hidden state."""
    model = engine.model
    first, mask_first = engine.prompt("Earlier words.", context=[Segment(0, "Hi.", codes=user_codes(3))])
    tail, mask_tail = text_rows(engine.text.encode("And these.", 1), K)
    with torch.inference_mode():
        model.prefill(first, mask_first)
        plain = model.prefill(tail, mask_tail, start=first.shape[0])
        model.prefill(first, mask_first)
        bucket, n, start = 32, tail.shape[0], first.shape[0]
        rows = torch.zeros(bucket, K + 1, dtype=torch.long)
        row_mask = torch.zeros(bucket, K + 1, dtype=torch.bool)
        rows[:n], row_mask[:n] = tail, mask_tail
        padded = model.prefill_rows(rows, row_mask, torch.arange(start, start + bucket), None)
    assert torch.allclose(padded[n - 1 : n], plain, atol=1e-5, rtol=1e-4)
    engine.forget_cache()
