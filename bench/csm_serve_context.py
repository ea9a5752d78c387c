"""Do streams keep their pace while another request brings audio to encode? Prints one JSON line.

    OMP_NUM_THREADS=1 python bench/csm_serve_context.py                  # tiny random CSM, full-size Mimi, CPU

A speech server (`assistant.tts.server`, in this process on its own thread) runs a `BatchedCSMEngine`; `--streams`
real HTTP clients (in a second process) stream long utterances (raw PCM, one frame a chunk) and, once they run, one
more client asks for a short utterance after `--context-s` seconds of context audio (a 24 kHz WAV, base64 in
`context`), which the server must encode with Mimi before that request can speak. Each frame's arrival is timed at
the streaming clients.

- `quiet`: the streaming clients' gaps between frames in the `--quiet-s` seconds before each context request.
- `during`: their gaps from each context request's sending to its first audio (its decoding, checking, encoding
  and prefill), the frames that straddle its start and end included; `--rounds` requests, their gaps pooled.
- `goal_met`: `during.p99_ms` is within 1.5 times `during.median_ms` (`p99_over_median`): no gap stands out while
  the context is encoded. `p99_over_quiet_median` compares it with the pace when nothing else happens instead (it
  counts the share of each frame's time the encoding takes, and this machine's own jitter: `quiet.p99_ms`).
- `context_first_audio_ms`: what the context request itself waited, each round.

`--mimi full` is moshi's full-size Mimi with random weights (what a served model's Mimi costs); `tiny` the tests'.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import numpy as np
import torch

from assistant.tts.csm.batched_engine import BatchedCSMEngine
from assistant.tts.csm.codec import FRAME_SAMPLES
from assistant.tts.csm.weights import convert_checkpoint
from assistant.tts.server.wire import float_wav
from tests.conftest import TOKENIZER_JSON
from tests.support.random_models import TINY_CSM, TINY_MIMI, build_random_csm, build_random_mimi
from tests.support.speech_server import MODEL_ID, ServerThread

FRAME_BYTES = 2 * FRAME_SAMPLES


def build(mimi_size: str, slots: int) -> BatchedCSMEngine:
    hf = build_random_csm(TINY_CSM, seed=0)
    if mimi_size == "full":
        from moshi.models import loaders

        torch.manual_seed(0)
        mimi = loaders.get_mimi(None, device="cpu", num_codebooks=TINY_CSM.num_codebooks).eval()
    else:
        mimi = build_random_mimi(TINY_MIMI, seed=0)
    config, weights = convert_checkpoint(hf.config.to_dict(), hf.state_dict(), "transformers' model")
    return BatchedCSMEngine.from_weights(config, weights, mimi, TOKENIZER_JSON, "cpu", torch.float32, slots)


async def streaming(session: aiohttp.ClientSession, url: str, index: int, arrivals: list[float]) -> None:
    """A long utterance, each frame's arrival time appended to `arrivals`, until cancelled."""
    body = {"model": MODEL_ID, "input": "Keep talking.", "voice": "1", "response_format": "pcm", "seed": index}
    async with session.post(f"{url}/v1/audio/speech", json={**body, "max_audio_ms": 120_000}) as response:
        response.raise_for_status()
        received = 0
        async for data in response.content.iter_any():
            now = time.perf_counter()
            frames_before, received = received // FRAME_BYTES, received + len(data)
            arrivals.extend([now] * (received // FRAME_BYTES - frames_before))


async def with_context(session: aiohttp.ClientSession, url: str, seconds: float) -> tuple[float, float, int]:
    """The context request: its sending and first audio times, and its status."""
    n = int(seconds * 24_000)
    rng = np.random.default_rng(0)
    audio = (np.sin(np.arange(n) / 9) * 0.3 + rng.normal(0, 0.05, n)).astype(np.float32)
    context = [
        {
            "speaker": 0,
            "text": "Here is what I said before.",
            "audio": base64.b64encode(float_wav(audio, 24_000)).decode(),
        }
    ]
    body = {"model": MODEL_ID, "input": "And now this.", "voice": "1", "response_format": "pcm", "seed": 99}
    sent = time.perf_counter()
    async with session.post(
        f"{url}/v1/audio/speech", json={**body, "context": context, "max_audio_ms": 400}
    ) as response:
        await response.content.readany()
        first = time.perf_counter()
        await response.read()
        return sent, first, response.status


def gaps_between(arrivals: list[list[float]], start: float, end: float) -> list[float]:
    """Each stream's gaps (ms) between consecutive frames, for the frames arriving after `start` up to the first
    after `end`."""
    gaps = []
    for times in arrivals:
        times = [t for t in times if t > start]
        last = next((i for i, t in enumerate(times) if t >= end), len(times) - 1)
        gaps += [(b - a) * 1000 for a, b in zip(times[:last], times[1 : last + 1])]
    return gaps


def stats(gaps: list[float]) -> dict:
    values = np.asarray(gaps)
    return {
        "gaps": len(gaps),
        "median_ms": round(float(np.median(values)), 1),
        "p99_ms": round(float(np.percentile(values, 99)), 1),
        "max_ms": round(float(values.max()), 1),
    }


async def measure(url: str, streams: int, context_s: float, quiet_s: float, rounds: int) -> dict:
    arrivals: list[list[float]] = [[] for _ in range(streams)]
    quiet_gaps: list[float] = []
    during_gaps: list[float] = []
    firsts, statuses = [], set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        tasks = [asyncio.ensure_future(streaming(session, url, i, arrivals[i])) for i in range(streams)]
        while min(len(a) for a in arrivals) < 5:  # every stream speaks
            await asyncio.sleep(0.05)
        for _ in range(rounds):
            quiet_start = time.perf_counter()
            await asyncio.sleep(quiet_s)
            sent, first, status = await with_context(session, url, context_s)
            quiet_gaps += gaps_between(arrivals, quiet_start, sent)
            await asyncio.sleep(0.5)  # the frames straddling the end arrive
            during_gaps += gaps_between(arrivals, sent, first)
            firsts.append(round((first - sent) * 1000, 1))
            statuses.add(status)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    quiet, during = stats(quiet_gaps), stats(during_gaps)
    return {
        "context_request_status": sorted(statuses),
        "context_first_audio_ms": firsts,
        "quiet": quiet,
        "during": during,
        "p99_over_median": round(during["p99_ms"] / during["median_ms"], 2),
        "p99_over_quiet_median": round(during["p99_ms"] / quiet["median_ms"], 2),
        "goal_met": during["p99_ms"] <= 1.5 * during["median_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mimi", choices=("full", "tiny"), default="full")
    parser.add_argument("--streams", type=int, default=4, help="streams speaking while the context arrives")
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--context-s", type=float, default=10.0, help="seconds of context audio (24 kHz)")
    parser.add_argument("--quiet-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="context requests, one after the other; gaps pooled")
    parser.add_argument("--clients-at", metavar="URL", help=argparse.SUPPRESS)  # the clients' process
    args = parser.parse_args()
    if args.clients_at:
        print(
            json.dumps(asyncio.run(measure(args.clients_at, args.streams, args.context_s, args.quiet_s, args.rounds)))
        )
        return
    engine = build(args.mimi, args.slots)
    with ServerThread(engine, max_queue=16) as server:  # the clients in a process of their own: no GIL shared
        clients = [sys.executable, __file__, *sys.argv[1:], "--clients-at", server.url]
        result = json.loads(subprocess.run(clients, capture_output=True, text=True, check=True).stdout)
    engine.close()
    print(
        json.dumps(
            {
                "bench": "csm_serve_context",
                "mimi": args.mimi,
                "streams": args.streams,
                "slots": args.slots,
                "context_s": args.context_s,
                "rounds": args.rounds,
                "host": platform.node(),
                "load_average": round(os.getloadavg()[0], 2),
                "cpu_threads": torch.get_num_threads(),
                "omp": os.environ.get("OMP_NUM_THREADS"),
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
