"""The engine's own thread: loading, warm-up, generation, streaming and context encoding all run on it, never on
the event loop's shared executor. (Mimi beside the next frame, on a second CUDA stream: test_csm_graphs.)"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.model import CSMModel


@pytest.fixture(scope="module")
def engine(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json) -> CSMEngine:
    return CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)


class RefusingExecutor(ThreadPoolExecutor):
    """A default executor that fails any work handed to it."""

    def submit(self, *args, **kwargs):
        raise AssertionError("the engine used the event loop's shared executor")


def test_loading_and_warm_up_run_on_the_engine_thread(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json, monkeypatch):
    seen: list[str] = []
    for name in ("prefill", "decode_frame"):
        original = getattr(CSMModel, name)
        monkeypatch.setattr(
            CSMModel,
            name,
            lambda self, *a, _f=original, **kw: (seen.append(threading.current_thread().name), _f(self, *a, **kw))[1],
        )
    encode_threads: list[str] = []
    engine = CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)
    original_encode = engine.codec.encode
    engine.codec.encode = lambda *a: (encode_threads.append(threading.current_thread().name), original_encode(*a))[1]
    # the warm-up streamed in both captured sampling modes, on the engine's thread and no other
    assert seen.count(engine.thread.thread.name) >= 2 and set(seen) == {engine.thread.thread.name}
    assert engine.thread.thread is not threading.current_thread() and engine.thread.thread.is_alive()
    engine.generate(
        "Hello.", context=[Segment(0, "Hi.", audio=np.zeros(4000, np.float32), sample_rate=16_000)], max_audio_ms=160
    )
    assert encode_threads == [engine.thread.thread.name]


async def test_every_call_runs_on_the_engine_thread_and_none_on_the_shared_executor(engine, monkeypatch):
    asyncio.get_running_loop().set_default_executor(RefusingExecutor())
    threads: set[threading.Thread] = set()
    for name in ("prefill", "decode_frame", "append_frame"):
        original = getattr(engine.model, name)
        monkeypatch.setattr(
            engine.model, name, lambda *a, _f=original: (threads.add(threading.current_thread()), _f(*a))[1]
        )
    codes = await engine.encode(np.zeros(24_000, np.float32), 24_000)
    assert codes.shape == (8, 13)
    context = [Segment(0, "Hi.", codes=codes)]
    chunks = [c async for c in engine.stream("Streamed.", context=context, seed=1, max_audio_ms=400)]
    result = engine.generate("Generated.", context=context, seed=1, max_audio_ms=400)
    assert len(chunks) == 5 and result.codes.shape == (8, 5)
    assert threads == {engine.thread.thread}


def test_generate_from_many_threads_queues_on_the_one_thread(engine):
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda s: engine.generate("Queued.", seed=s % 2, max_audio_ms=240).codes, range(8)))
    assert all(torch.equal(r, results[i % 2]) for i, r in enumerate(results))
    assert engine.thread.idle()
