"""BatchedCSMEngine on a tiny random CSM and Mimi: many requests at once give what each gives alone, requests join
and leave between frames, a cancelled or closed request frees its slot, and one request's failure is its own."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import replace

import numpy as np
import pytest
import torch

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.batched_engine import BatchedCSMEngine, EngineClosed
from assistant.tts.csm.batched_frames import BatchedFrames
from assistant.tts.csm.speech_plan import SpeechRequest
from assistant.tts.csm.weights import read_checkpoint

K = 8  # TINY_CSM's codebooks


@pytest.fixture(scope="module")
def single(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json) -> CSMEngine:
    return CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)


@pytest.fixture(scope="module")
def batched(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json):
    engine = BatchedCSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json, slots=4)
    yield engine
    engine.close()


def codes(frames: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 2048, (K, frames), generator=torch.Generator().manual_seed(seed))


REQUESTS = [  # different texts, speakers, contexts, sampling settings; greedy among them
    dict(text="Hello there, how are you?", speaker=1, seed=1),
    dict(text="Fine, thanks.", speaker=0, temperature=0.0, topk=1),
    dict(
        text="The weather is lovely today.",
        speaker=1,
        temperature=0.7,
        topk=20,
        seed=3,
        context=[Segment(0, "What is the weather like?", codes=codes(5, 0))],
    ),
    dict(
        text="One more line.",
        speaker=2,
        temperature=1.2,
        topk=80,
        seed=4,
        reference=Segment(2, "This is my voice.", codes=codes(7, 1)),
    ),
    dict(text="Short.", speaker=1, seed=5, max_audio_ms=240),
    dict(
        text="A sixth request waits for a slot.",
        speaker=0,
        seed=6,
        context=[Segment(1, "Earlier.", codes=codes(3, 2)), Segment(0, "And then.", codes=codes(4, 3))],
    ),
    dict(text="Seventh.", speaker=1, seed=7, temperature=0.0, topk=1),
    dict(text="The eighth and last.", speaker=3, seed=8, topk=5),
]


async def spoken(engine, request: dict, chunk_frames: int = 2, delay_s: float = 0.0) -> tuple[torch.Tensor, np.ndarray]:
    await asyncio.sleep(delay_s)
    request = {"max_audio_ms": 800, **request}
    frames, audio = [], []
    async for chunk in engine.stream(**request, chunk_frames=chunk_frames):
        frames.append(chunk.codes)
        audio.append(chunk.audio)
    return torch.cat(frames, dim=1), np.concatenate(audio)


async def test_eight_requests_at_once_give_what_each_gives_alone(single, batched):
    alone = [await spoken(single, r) for r in REQUESTS]
    # twice the slots: half wait, and join as others finish (staggered starts add joins between frames)
    together = await asyncio.gather(*(spoken(batched, r, delay_s=0.01 * i) for i, r in enumerate(REQUESTS)))
    for (codes_alone, audio_alone), (codes_together, audio_together) in zip(alone, together):
        assert torch.equal(codes_together, codes_alone)
        np.testing.assert_allclose(audio_together, audio_alone, atol=1e-5)
    assert batched.active == 0 and batched.waiting == 0


async def test_a_text_too_long_for_one_prompt_is_spoken_in_pieces_as_alone(single, batched):
    small = replace(single.budget, max_seq_len=16, base_ms=400, ms_per_token=0)
    single.budget, saved = small, single.budget
    batched.prompts.budget = small
    try:
        text = "First sentence here. Second sentence there. A third one to finish."
        pieces = len(single.prompts.plan(SpeechRequest(text, 1, (), 0.9, 50, 9, None)).pieces)
        requests = [
            dict(text=text, seed=9, max_audio_ms=None),
            dict(text="Alone in between.", seed=2, max_audio_ms=None),
        ]
        alone = [await spoken(single, r) for r in requests]
        together = await asyncio.gather(*(spoken(batched, r) for r in requests))
    finally:
        single.budget = batched.prompts.budget = saved
    assert pieces >= 2 and alone[0][0].shape[1] == 5 * pieces  # 5 frames a piece
    for (a, _), (b, _) in zip(alone, together):
        assert torch.equal(a, b)


async def test_a_cancelled_request_frees_its_slot_for_one_waiting(batched):
    cancel = asyncio.Event()
    started = asyncio.Event()

    async def cancelled() -> int:
        frames = 0
        async for chunk in batched.stream("This one is stopped early.", seed=1, max_audio_ms=8000, cancel=cancel):
            frames += chunk.codes.shape[1]
            started.set()
        return frames

    long = [asyncio.create_task(spoken(batched, dict(text=f"Long {i}.", seed=i, max_audio_ms=8000))) for i in range(3)]
    first = asyncio.create_task(cancelled())
    await started.wait()
    async with asyncio.timeout(30):  # the long ones are admitted as they come (on a busy machine, after the first)
        while batched.active < 4:
            await asyncio.sleep(0.001)
    waiting = asyncio.create_task(spoken(batched, dict(text="Waiting.", seed=3, max_audio_ms=400)))
    while batched.waiting == 0:
        await asyncio.sleep(0.001)
    cancel.set()
    frames = await first
    codes_waiting, _ = await asyncio.wait_for(waiting, timeout=60)  # got the freed slot while the long ones spoke
    assert codes_waiting.shape[1] == 5
    assert frames < 100 and not all(task.done() for task in long)
    await asyncio.gather(*long)


async def test_closing_the_stream_early_frees_its_slot(batched):
    async with aclosing(batched.stream("Leave after the first chunk.", seed=1, max_audio_ms=8000)) as stream:
        async for _ in stream:
            break
    for _ in range(1000):  # within a frame or so
        if batched.active == 0:
            break
        await asyncio.sleep(0.005)
    assert batched.active == 0


async def test_one_requests_bad_context_fails_it_alone(single, batched):
    bad = dict(text="Bad context.", context=[Segment(0, "Too few codebooks.", codes=codes(3, 0)[:2])])
    good = dict(text="Good one.", seed=3)
    results = await asyncio.gather(spoken(batched, bad), spoken(batched, good), return_exceptions=True)
    assert isinstance(results[0], ValueError) and "codebooks" in str(results[0])
    assert torch.equal(results[1][0], (await spoken(single, good))[0])


async def test_a_top_k_above_the_cap_is_refused_at_once(batched):
    with pytest.raises(ValueError, match="topk 500 is above"):
        await spoken(batched, dict(text="Too wide.", topk=500))


def test_generate_and_encode_between_frames(single, batched):
    a = batched.generate("Whole at once.", seed=4, max_audio_ms=400)
    b = single.generate("Whole at once.", seed=4, max_audio_ms=400)
    assert torch.equal(a.codes, b.codes) and a.audio.shape == b.audio.shape
    audio = np.sin(np.linspace(0, 200, 16_000)).astype(np.float32)
    assert torch.equal(asyncio.run(batched.encode(audio, 16_000)), asyncio.run(single.encode(audio, 16_000)))


def test_the_graphed_form_gives_the_same_frames(tiny_csm_dir):
    """The form CUDA graphs capture (attention over every position, masked) equals the sliced one, run eagerly."""
    config, weights = read_checkpoint(tiny_csm_dir)
    frames = [BatchedFrames(config, weights, slots=3, topk_cap=50) for _ in range(2)]
    tokens = torch.zeros(12, K + 1, dtype=torch.long)
    tokens[:, -1] = torch.arange(12) + 100
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[:, -1] = True
    out = []
    with torch.inference_mode():
        for f in frames:
            f.prefill(0, tokens, mask)
            f.prefill(2, tokens[:7], mask[:7])
            seen = []
            for _ in range(6):
                f.decode(3)
                seen.append(f.codes.clone())
                f.length = int(f.pos.max()) + 1 if f is frames[0] else None
                f.append(3)
            out.append(torch.stack(seen))
    assert torch.equal(out[0][:, [0, 2]], out[1][:, [0, 2]])
    assert frames[0].pos.tolist() == [18, 0, 13]  # the idle slot stayed at 0


async def test_close_ends_waiting_requests(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json):
    engine = await asyncio.to_thread(
        BatchedCSMEngine.from_pretrained, tiny_csm_dir, tiny_mimi, llama3_tokenizer_json, slots=1
    )
    tasks = [asyncio.create_task(spoken(engine, dict(text=f"Line {i}.", max_audio_ms=8000))) for i in range(2)]
    while engine.active == 0:
        await asyncio.sleep(0.001)
    await asyncio.to_thread(engine.close)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, EngineClosed) for r in results)
    with pytest.raises(EngineClosed):
        await engine.encode(np.zeros(1920, np.float32), 24_000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
async def test_cuda_graphs_give_the_eager_frames_and_the_one_at_a_time_audio(
    tiny_csm_dir, tiny_mimi, llama3_tokenizer_json
):
    """Each batch replays its bucket's graph (5 requests: the bucket of 8, three idle rows) with the frames that
    running the same work eagerly gives; Mimi's batched rows (reset for each request, masked when idle) give the
    audio the one-at-a-time engine gives."""
    import copy

    engines = [
        await asyncio.to_thread(
            BatchedCSMEngine.from_pretrained,
            tiny_csm_dir,
            copy.deepcopy(tiny_mimi).cuda(),
            llama3_tokenizer_json,
            "cuda",
            torch.float32,
            8,
            100,
            graphs,
        )
        for graphs in (True, False)
    ]
    single = await asyncio.to_thread(
        CSMEngine.from_pretrained,
        tiny_csm_dir,
        copy.deepcopy(tiny_mimi).cuda(),
        llama3_tokenizer_json,
        "cuda",
        torch.float32,
    )
    try:
        graphed, eager = [await asyncio.gather(*(spoken(engine, r) for r in REQUESTS[:5])) for engine in engines]
    finally:
        for engine in engines:
            engine.close()
    for (codes_graphed, audio_graphed), (codes_eager, _), request in zip(graphed, eager, REQUESTS[:5]):
        assert torch.equal(codes_graphed, codes_eager)
        codes_alone, audio_alone = await spoken(single, request)
        assert torch.equal(codes_alone, codes_graphed)
        np.testing.assert_allclose(audio_graphed, audio_alone, atol=1e-4)
