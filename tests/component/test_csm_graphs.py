"""The CUDA path of CSMEngine: graphs, the fused frame, Mimi on a second stream (needs a CUDA GPU).

What the graphs capture, the fixed-shape step and the padded prefill, is checked on the CPU too: test_csm_oracle's
`static` case and test_csm_cached_rows; the fused path's exactness, test_csm_oracle's fused case.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.graphs import PREFILL_BUCKETS, CUDAGraphFrames

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

TEXT = "Graphs replay the whole frame."


@pytest.fixture(scope="module")
def load(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json):
    """The same checkpoint on CUDA in float32."""
    tokenizer = Tokenizer.from_file(str(llama3_tokenizer_json))
    mimi = copy.deepcopy(tiny_mimi).to("cuda")  # the session's Mimi stays on the CPU for the other tests
    return lambda graphs, fused=False: CSMEngine.from_pretrained(
        tiny_csm_dir,
        mimi=mimi,
        tokenizer=tokenizer,
        device="cuda",
        dtype=torch.float32,
        cuda_graphs=graphs,
        fused=fused,
    )


@pytest.fixture(scope="module")
def engines(load) -> tuple[CSMEngine, CSMEngine]:
    """Eager, and with CUDA graphs."""
    return load(False), load(True)


def test_load_captures_the_default_sampling_greedy_and_the_prefill_buckets(engines):
    eager, graphs = engines
    assert eager.steps is eager.model
    assert isinstance(graphs.steps, CUDAGraphFrames) and len(graphs.steps.decoders) == 2
    assert sorted(graphs.steps.prefills) == list(PREFILL_BUCKETS)


def test_greedy_frames_equal_the_eager_path(engines):
    eager, graphs = engines
    a = eager.generate(TEXT, temperature=0, max_audio_ms=1600)
    b = graphs.generate(TEXT, temperature=0, max_audio_ms=1600)
    assert a.codes.shape == (8, 20) and torch.equal(a.codes, b.codes)


def test_seeded_sampling_reproduces_across_temperatures_without_new_graphs(engines):
    _, graphs = engines
    a = graphs.generate(TEXT, temperature=0.9, topk=50, seed=4, max_audio_ms=800).codes
    hotter = graphs.generate(TEXT, temperature=3.0, topk=50, seed=4, max_audio_ms=800).codes
    b = graphs.generate(TEXT, temperature=0.9, topk=50, seed=4, max_audio_ms=800).codes
    assert torch.equal(a, b) and not torch.equal(a, hotter)
    assert len(graphs.steps.decoders) == 2


def test_a_new_topk_is_captured_on_first_use_without_moving_the_seed(engines):
    _, graphs = engines
    first = graphs.generate(TEXT, temperature=0.9, topk=7, seed=1, max_audio_ms=800).codes  # captures
    again = graphs.generate(TEXT, temperature=0.9, topk=7, seed=1, max_audio_ms=800).codes
    assert torch.equal(first, again) and len(graphs.steps.decoders) == 3


def test_a_conversation_through_the_graphs_speaks_as_the_eager_path(engines):
    """Prefill graphs padded to their bucket, at an offset into the cache the turns before left there."""
    eager, graphs = engines
    g = torch.Generator().manual_seed(0)
    history: list[Segment] = []
    for turn in range(3):
        history.append(Segment(0, f"User turn {turn}.", codes=torch.randint(0, 2048, (8, 30), generator=g)))
        a = eager.generate(f"Reply {turn}.", context=history, temperature=0, max_audio_ms=800)
        b = graphs.generate(f"Reply {turn}.", context=history, temperature=0, max_audio_ms=800)
        assert torch.equal(a.codes, b.codes)
        history.append(Segment(1, f"Reply {turn}.", codes=b.codes))


async def test_mimi_on_its_own_stream_gives_the_same_audio_on_the_engine_thread(engines, monkeypatch):
    _, graphs = engines
    threads: set[threading.Thread] = set()
    original = graphs.steps.decode_frame
    monkeypatch.setattr(
        graphs.steps, "decode_frame", lambda *a: (threads.add(threading.current_thread()), original(*a))[1]
    )

    async def speak(overlap: bool):
        graphs.overlap = overlap
        return [c async for c in graphs.stream(TEXT, seed=5, max_audio_ms=1600, chunk_frames=2)]

    overlapped, plain = await speak(True), await speak(False)
    graphs.overlap = True
    assert torch.equal(torch.cat([c.codes for c in overlapped], 1), torch.cat([c.codes for c in plain], 1))
    assert np.array_equal(np.concatenate([c.audio for c in overlapped]), np.concatenate([c.audio for c in plain]))
    assert threads == {graphs.thread.thread}


def test_the_fused_graphs_give_the_eager_greedy_frames(load, engines):
    eager, _ = engines
    fused = load(True, fused=True)
    a = eager.generate(TEXT, temperature=0, max_audio_ms=1600)
    b = fused.generate(TEXT, temperature=0, max_audio_ms=1600)
    assert torch.equal(a.codes, b.codes)
    seeded = [fused.generate(TEXT, temperature=0.9, topk=50, seed=3, max_audio_ms=800).codes for _ in range(2)]
    assert torch.equal(*seeded)
