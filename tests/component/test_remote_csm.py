"""RemoteCSM against the real speech server over a tiny random CSM: it must do what the engine does locally."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import numpy as np
import pytest
import torch

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.remote import RemoteCSM, SpeechServerError
from tests.support.processes import free_port, wait_until
from tests.support.speech_server import ServerThread, metric

K = 8
LONG = 60_000.0  # ms: a stream that stays open for seconds


@pytest.fixture(scope="module")
def server(tiny_csm_engine: CSMEngine) -> Iterator[ServerThread]:
    with ServerThread(tiny_csm_engine, api_key="key", max_input_chars=100) as running:
        yield running


@pytest.fixture
async def remote(server: ServerThread) -> AsyncIterator[RemoteCSM]:
    async with RemoteCSM(f"{server.url}/v1", api_key="key", timeout_s=30) as engine:
        yield engine


def voice() -> Segment:
    codes = torch.randint(0, 2048, (K, 12), generator=torch.Generator().manual_seed(1))
    return Segment(1, "This is how I sound.", codes=codes)


async def chunks(stream: AsyncIterator) -> tuple[torch.Tensor, np.ndarray, int]:
    got = [chunk async for chunk in stream]
    return torch.cat([c.codes for c in got], dim=1), np.concatenate([c.audio for c in got]), len(got)


async def test_it_learns_the_models_facts(remote: RemoteCSM, tiny_csm_engine: CSMEngine) -> None:
    assert remote.codec.fingerprint == tiny_csm_engine.codec.fingerprint
    assert remote.budget.max_seq_len == tiny_csm_engine.budget.max_seq_len and remote.num_codebooks == K


async def test_a_stream_gives_the_engines_codes_and_audio(remote: RemoteCSM, tiny_csm_engine: CSMEngine) -> None:
    audio = np.sin(np.arange(16_000) / 5).astype(np.float32) * 0.3
    context = [
        Segment(0, "How are you?", audio=audio, sample_rate=16_000),
        Segment(1, "Fine.", codes=voice().codes[:, :4]),
    ]
    settings = dict(
        speaker=1,
        context=context,
        temperature=0.8,
        topk=30,
        seed=7,
        max_audio_ms=560,
        chunk_frames=2,
        reference=voice(),
    )
    codes, heard, count = await chunks(remote.stream("And you?", **settings))
    local_codes, local_audio, local_count = await chunks(tiny_csm_engine.stream("And you?", **settings))
    assert torch.equal(codes, local_codes) and codes.shape == (K, 7)
    assert np.array_equal(heard, local_audio) and count == local_count == 4


async def test_closing_the_stream_or_cancelling_frees_the_servers_slot(remote: RemoteCSM, server: ServerThread) -> None:
    async with aclosing(remote.stream("Hello.", max_audio_ms=LONG)) as stream:
        await anext(stream)
        assert metric(server.url, "csm_streams_active") == 1
    await asyncio.to_thread(wait_until, lambda: metric(server.url, "csm_streams_active") == 0, 2, "the slot freed")
    cancel = asyncio.Event()
    got = 0
    async for _ in remote.stream("Hello.", max_audio_ms=LONG, cancel=cancel):
        got += 1
        cancel.set()
    assert got == 1
    await asyncio.to_thread(wait_until, lambda: metric(server.url, "csm_streams_active") == 0, 2, "the slot freed")


async def test_encode_is_the_engines(remote: RemoteCSM, tiny_csm_engine: CSMEngine) -> None:
    audio = np.cos(np.arange(20_000) / 11).astype(np.float32) * 0.5
    assert torch.equal(await remote.encode(audio, 22_050), await tiny_csm_engine.encode(audio, 22_050))


async def test_generate_blocks_off_the_loop_and_gives_the_engines_codes(
    remote: RemoteCSM, tiny_csm_engine: CSMEngine
) -> None:
    result = await asyncio.to_thread(remote.generate, "All at once.", 0, seed=2, max_audio_ms=400)
    assert torch.equal(result.codes, tiny_csm_engine.generate("All at once.", 0, seed=2, max_audio_ms=400).codes)
    assert result.audio.shape == (5 * 1920,)
    with pytest.raises(RuntimeError, match="asyncio.to_thread"):
        remote.generate("On the loop.", 0)


async def test_reference_positions_are_counted_by_the_server(remote: RemoteCSM, tiny_csm_engine: CSMEngine) -> None:
    assert await asyncio.to_thread(remote.reference_positions, voice()) == tiny_csm_engine.reference_positions(voice())
    too_long = Segment(1, "Far too long.", codes=torch.zeros(K, 600, dtype=torch.long))
    with pytest.raises(ValueError, match=r"the voice takes \d+ of the model's 2048 positions"):
        await asyncio.to_thread(remote.reference_positions, too_long)


async def test_the_servers_refusals_and_absence_are_clear_errors(remote: RemoteCSM, server: ServerThread) -> None:
    with pytest.raises(SpeechServerError, match=r"refused .*/v1/audio/speech \(413\): input is 101 characters"):
        async for _ in remote.stream("x" * 101):
            pass
    with pytest.raises(SpeechServerError, match=r"\(401\): missing or wrong API key"):
        await RemoteCSM(server.url, api_key="wrong").start()
    with pytest.raises(SpeechServerError, match=r"cannot reach the speech server at http://127.0.0.1:\d+"):
        await RemoteCSM(f"http://127.0.0.1:{free_port()}").start()
