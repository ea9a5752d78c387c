"""CSMEngine behaviour on a tiny random CSM and Mimi: caps, EOS, context, seeds, streaming, cancellation."""

from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing
from dataclasses import replace

import numpy as np
import pytest
import torch

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine

K = 8  # TINY_CSM's codebooks


@pytest.fixture(scope="module")
def engine(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json) -> CSMEngine:
    return CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)


@pytest.fixture
def budget(engine):
    """Restore the engine's budget after a test changes it."""
    saved = engine.budget
    yield saved
    engine.budget = saved


def codes(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2048, (K, frames), generator=torch.Generator().manual_seed(seed))


def test_generate_returns_codes_and_matching_audio(engine):
    result = engine.generate("Hello there!", speaker=0, temperature=0.9, topk=50, seed=1, max_audio_ms=480)
    assert result.codes.shape == (K, 6) and result.codes.dtype == torch.long
    assert int(result.codes.max()) < 2048  # the codec's special ids are never sampled
    assert result.audio.dtype == np.float32 and result.audio.shape == (6 * 1920,)
    assert result.sample_rate == 24_000 and np.abs(result.audio).max() > 0


def test_seed_reproduces_and_different_seeds_differ(engine):
    a = engine.generate("Same words.", seed=5, max_audio_ms=400).codes
    b = engine.generate("Same words.", seed=5, max_audio_ms=400).codes
    c = engine.generate("Same words.", seed=6, max_audio_ms=400).codes
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_greedy_ignores_the_seed(engine):
    a = engine.generate("Greedy.", temperature=0, seed=1, max_audio_ms=320).codes
    b = engine.generate("Greedy.", temperature=0, seed=2, max_audio_ms=320).codes
    assert torch.equal(a, b)


def test_the_caches_are_allocated_once(engine):
    """The backbone's KV cache and the depth decoder's buffers are made at load and reused by every frame."""
    model = engine.model
    dec = model.decoder
    buffers = lambda: [  # noqa: E731
        t.data_ptr()
        for t in (model.backbone.k_cache, model.backbone.v_cache, dec.x, dec.normed, dec.attn, dec.gate_up)
        + tuple(t for step in dec.views for at in step for t in (at.qkv, at.rotated, at.scores))
    ]
    before = buffers()
    first = engine.generate("Once, then again.", temperature=0, max_audio_ms=400).codes
    assert buffers() == before
    assert torch.equal(engine.generate("Once, then again.", temperature=0, max_audio_ms=400).codes, first)


def test_bfloat16_runs_the_same_engine(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json):
    """CUDA's dtype on the CPU: the buffers, RoPE matrices and norms all take bfloat16 (the CUDA path's dtype
    handling is checked here too; that path itself needs a GPU)."""
    bf16 = torch.bfloat16
    engine = CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json, dtype=bf16)
    # bfloat16's rounding depends on how many rows a matmul runs at once, so a prompt partly taken from the cache
    # need not give a full prefill's frames (test_reused_cache_gives_a_full_prefills_frames checks float32)
    engine.reuse_cache = False
    dec = engine.model.decoder
    assert {t.dtype for t in (dec.x, dec.rotations, dec.layers[0].qkv, engine.model.backbone.k_cache)} == {bf16}
    result = engine.generate("Hello there!", speaker=0, temperature=0, max_audio_ms=480)
    assert result.codes.shape == (K, 6) and int(result.codes.max()) < 2048
    assert np.isfinite(result.audio).all() and np.abs(result.audio).max() > 0
    assert torch.equal(engine.generate("Hello there!", speaker=0, temperature=0, max_audio_ms=480).codes, result.codes)


def test_the_fused_norm_cuda_uses_is_the_norm_the_folded_weights_expect(engine):
    """On CUDA the depth decoder and backbone norm with aten's RMSNorm and a constant weight of 1/sqrt(dim); on the
    CPU with three ops. Both must give x / sqrt(sum(x^2) + dim * eps)."""
    dec, dim, eps = engine.model.decoder, engine.model.config.decoder.dim, engine.model.config.decoder.norm_eps
    assert dec.norm_weight is None and engine.model.backbone.norm_weight is None  # the CPU's form here
    x = torch.randn(1, dim, generator=torch.Generator().manual_seed(0)) * 3
    dec.x.copy_(x)
    fused = torch.nn.functional.rms_norm(x, (dim,), torch.full((dim,), dim**-0.5), eps)
    assert torch.allclose(dec.normalized(), fused, rtol=1e-5, atol=1e-7)
    assert torch.allclose(fused, x / (x.pow(2).sum() + dim * eps).sqrt(), rtol=1e-5, atol=1e-7)


def test_topk_one_is_greedy(engine):
    a = engine.generate("Top one.", temperature=0.9, topk=1, seed=1, max_audio_ms=320).codes
    b = engine.generate("Top one.", temperature=0, max_audio_ms=320).codes
    assert torch.equal(a, b)


def test_all_zero_frame_ends_generation(engine, monkeypatch):
    original, count = engine.model.decode_frame, []

    def zero_after_three(hidden, sample):
        frame = original(hidden, sample)
        count.append(1)
        return torch.zeros_like(frame) if len(count) > 3 else frame

    monkeypatch.setattr(engine.model, "decode_frame", zero_after_three)
    result = engine.generate("Stop soon.", seed=0, max_audio_ms=2000)
    assert result.codes.shape == (K, 3) and len(count) == 4
    assert result.audio.shape == (3 * 1920,)


def test_length_cap_from_text_and_absolute_limit(engine, budget):
    ids = engine.text.encode("A short line.", 1)
    engine.budget = replace(budget, base_ms=160, ms_per_token=80)
    assert engine.generate("A short line.", seed=0).codes.shape[1] == 2 + len(ids)
    engine.budget = replace(budget, absolute_ms=240)
    assert engine.generate("A short line.", seed=0, max_audio_ms=10_000).codes.shape[1] == 3


def test_long_history_is_trimmed_oldest_first(engine):
    history = [Segment(i % 2, f"Turn number {i}.", codes=codes(150, seed=i)) for i in range(20)]
    tokens, mask = engine.prompt("And now?", speaker=1, context=history, max_audio_ms=800)
    ids = engine.text.encode("And now?", 1)
    assert tokens.shape[0] <= 2048 - 10
    newest = codes(150, seed=19)
    # The newest turn's audio (and its end frame) sits right before the new text; the oldest turns are gone.
    audio_end = tokens.shape[0] - len(ids)
    assert torch.equal(tokens[audio_end - 151 : audio_end - 1, :K], newest.T)
    assert not mask[audio_end - 1, K] and not tokens[audio_end - 1, :K].any()
    turns = 2048 - 10 - len(ids)
    kept = tokens.shape[0] - len(ids)
    assert turns - kept < 151 + 12  # as many whole turns as fit
    # and generation with it just works
    assert engine.generate("And now?", context=history, seed=0, max_audio_ms=160).codes.shape == (K, 2)


def test_a_context_segment_larger_than_the_window_is_dropped(engine):
    huge = [Segment(0, "Very long.", codes=codes(2100))]
    tokens, _ = engine.prompt("Hi.", context=huge, max_audio_ms=160)
    assert tokens.shape[0] == len(engine.text.encode("Hi.", 1))


def test_context_audio_is_encoded_at_any_sample_rate(engine):
    audio = np.sin(np.arange(16_000, dtype=np.float32) / 7.0) * 0.3  # 1 s at 16 kHz
    tokens, mask = engine.prompt("Yes.", context=[Segment(0, "Listen.", audio=audio, sample_rate=16_000)])
    audio_rows = mask[:, :K].all(dim=1)
    assert int(audio_rows.sum()) == 13 + 1  # 12.5 frames/s, rounded up, plus the end frame


def test_long_text_is_split_at_sentences_or_refused(engine, budget):
    engine.budget = replace(budget, max_seq_len=120, base_ms=80, ms_per_token=80)
    sentence = "This is one sentence of the story."
    per = len(engine.text.encode(sentence, 1))
    text = " ".join([sentence] * (120 // (2 * per) + 3))
    assert not engine.budget.fits(len(engine.text.encode(text, 1)))
    spoken = engine.generate(text, seed=0, temperature=0.9)
    assert spoken.codes.shape[1] > 2 * (per + 1)  # more than one piece was spoken
    with pytest.raises(ValueError, match="too long"):
        engine.generate("word " * 200, seed=0)


@pytest.mark.parametrize("text", ["", "🙂🎉👍", "  ", "ÅÄÖ ß 中文 — \u200b"])
def test_odd_text(engine, text):
    result = engine.generate(text, seed=0, max_audio_ms=160)
    assert result.codes.shape == (K, 2) and result.audio.shape == (2 * 1920,)


@pytest.mark.parametrize("earlier_streams", [0, 1])
async def test_stream_equals_generate_and_starts_after_one_frame(engine, earlier_streams):
    for _ in range(earlier_streams):  # the decoder's streaming state is reused: nothing may carry over
        [c async for c in engine.stream("Something else first.", seed=1, max_audio_ms=400)]
    whole = engine.generate("Streaming now.", seed=3, max_audio_ms=800)
    chunks = [c async for c in engine.stream("Streaming now.", seed=3, max_audio_ms=800, chunk_frames=4)]
    assert [c.codes.shape[1] for c in chunks] == [1, 4, 4, 1]
    assert chunks[0].audio.shape == (1920,)
    assert torch.equal(torch.cat([c.codes for c in chunks], dim=1), whole.codes)
    streamed = np.concatenate([c.audio for c in chunks])
    assert streamed.shape == whole.audio.shape
    assert np.abs(streamed - whole.audio).max() < 1e-4


async def test_cancel_stops_within_one_frame_and_engine_is_reusable(engine, monkeypatch):
    decoded = []
    original = engine.model.decode_frame
    monkeypatch.setattr(engine.model, "decode_frame", lambda h, s: (decoded.append(1), original(h, s))[1])
    cancel = asyncio.Event()
    received = []
    async for chunk in engine.stream("Please stop me.", seed=0, max_audio_ms=8000, cancel=cancel):
        received.append(chunk)
        cancel.set()
    assert len(received) == 1
    assert len(decoded) <= 3  # at most the frame in flight when cancel was set and the one queued behind it
    monkeypatch.undo()
    again = engine.generate("Please stop me.", seed=0, max_audio_ms=160)
    assert again.codes.shape == (K, 2) and torch.equal(again.codes[:, :1], received[0].codes)


async def test_closing_a_stream_early_frees_the_engine(engine):
    async with aclosing(engine.stream("Break early.", seed=0, max_audio_ms=8000)) as chunks:
        async for _ in chunks:
            break
    assert engine.generate("Next.", seed=0, max_audio_ms=160).codes.shape == (K, 2)


def test_generate_cancelled_by_a_threading_event(engine):
    cancel = threading.Event()
    cancel.set()
    assert engine.generate("Never spoken.", seed=0, cancel=cancel).codes.shape == (K, 0)


async def test_stream_runs_off_the_event_loop(engine):
    ticks = 0

    async def ticker():  # sleeps a little: a busy loop would starve the worker thread of the GIL
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    chunks = [c async for c in engine.stream("Keep the loop free.", seed=0, max_audio_ms=1600)]
    task.cancel()
    assert len(chunks) == 20 and ticks > len(chunks)
