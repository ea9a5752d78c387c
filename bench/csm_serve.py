"""The speech server under load: aggregate frames/s and each stream's real-time factor at 1, 4, 8 and 16 streams
at once; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/csm_serve.py                       # tiny random CSM and Mimi on the CPU
    python bench/csm_serve.py --config csm-1b --device cuda           # csm-1b's shapes, full-size Mimi, bf16, graphs

The server (`assistant.tts.server`) runs in this process on its own thread over a `BatchedCSMEngine` with
`--slots` slots; the clients are real HTTP clients (aiohttp) streaming `POST /v1/audio/speech` as raw PCM, all
started together, each with its own seed and text, each asking for `--frames` frames (random weights never end an
utterance early). For each concurrency: the aggregate rate (frames received by all clients over the round's wall
time), and per stream the real-time factor (its request's wall time, queueing and prefill included, over the audio
it got) and its time to the first audio byte. `streams_at_rtf_0_5` is the most streams tested that each stayed at
a real-time factor <= 0.5. The reference, on the same weights in the same run: the one-at-a-time `CSMEngine`
streaming one request in-process (`unbatched_frames_per_s`), the engine the assistant runs locally.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import torch

from assistant.tts.csm import CSMEngine
from assistant.tts.csm.batched_engine import BatchedCSMEngine
from assistant.tts.csm.budget import FRAME_MS
from assistant.tts.csm.codec import FRAME_SAMPLES
from assistant.tts.csm.weights import convert_checkpoint
from tests.conftest import TOKENIZER_JSON
from tests.support.random_models import CSM_1B, TINY_CSM, TINY_MIMI, build_random_csm, build_random_mimi
from tests.support.speech_server import MODEL_ID, ServerThread

CONFIGS = {"tiny": TINY_CSM, "csm-1b": CSM_1B}
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Could you tell me the way to the railway station, please?",
    "It is a lovely morning, and the garden is full of birds.",
    "Your order has shipped and should arrive on Thursday.",
]


def build(config: str, device: torch.device, slots: int, graphs: bool) -> tuple[BatchedCSMEngine, CSMEngine]:
    """The batched engine and the one-at-a-time engine on the same random weights and Mimi."""
    spec = CONFIGS[config]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf = build_random_csm(spec, seed=0, dtype=dtype)
    if config == "csm-1b":  # moshi's full-size Mimi (random weights), so that decoding costs what it will
        from moshi.models import loaders

        mimi = loaders.get_mimi(None, device="cpu", num_codebooks=spec.num_codebooks).eval()
    else:
        mimi = build_random_mimi(TINY_MIMI, seed=0)
    cfg, weights = convert_checkpoint(hf.config.to_dict(), hf.state_dict(), "transformers' model")
    del hf
    mimi = mimi.to(device)
    batched = BatchedCSMEngine.from_weights(
        cfg, weights, mimi, TOKENIZER_JSON, device, dtype, slots, cuda_graphs=graphs
    )
    single = CSMEngine.from_weights(cfg, weights, mimi, TOKENIZER_JSON, device, dtype, cuda_graphs=graphs)
    return batched, single


async def one_stream(session: aiohttp.ClientSession, url: str, index: int, frames: int) -> dict:
    body = {
        "model": MODEL_ID,
        "input": TEXTS[index % len(TEXTS)],
        "voice": str(index % 2),
        "response_format": "pcm",
        "seed": index,
        "max_audio_ms": frames * FRAME_MS,
    }
    start = time.perf_counter()
    first, received = None, 0
    async with session.post(f"{url}/v1/audio/speech", json=body) as response:
        response.raise_for_status()
        async for data in response.content.iter_any():
            first = first or time.perf_counter()
            received += len(data)
    seconds = time.perf_counter() - start
    audio_s = received / 2 / 24_000
    return {"frames": received // (2 * FRAME_SAMPLES), "rtf": seconds / audio_s, "first_ms": (first - start) * 1000}


async def round_of(url: str, streams: int, frames: int) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_stream(session, url, i, frames) for i in range(streams)))
        wall = time.perf_counter() - start
    rtfs = [r["rtf"] for r in results]
    return {
        "streams": streams,
        "frames_per_s": round(sum(r["frames"] for r in results) / wall, 1),
        "rtf_median": round(statistics.median(rtfs), 3),
        "rtf_max": round(max(rtfs), 3),
        "first_audio_ms_median": round(statistics.median(r["first_ms"] for r in results), 1),
        "first_audio_ms_max": round(max(r["first_ms"] for r in results), 1),
        "frames_each": sorted({r["frames"] for r in results}),
    }


async def unbatched_rate(engine: CSMEngine, frames: int) -> float:
    start, got = time.perf_counter(), 0
    async for chunk in engine.stream(TEXTS[0], 0, seed=0, max_audio_ms=frames * FRAME_MS):
        got += chunk.codes.shape[1]
    return got / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--streams", default="1,4,8,16", help="concurrencies to measure, comma-separated")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--frames", type=int, default=50, help="frames each stream asks for (80 ms each)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds at each concurrency; the best is kept")
    parser.add_argument("--no-cuda-graphs", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    load_start = time.perf_counter()
    batched, single = build(args.config, device, args.slots, not args.no_cuda_graphs)
    load_s = time.perf_counter() - load_start
    unbatched = max(asyncio.run(unbatched_rate(single, args.frames)) for _ in range(args.repeats))
    rounds = []
    with ServerThread(batched, max_queue=256) as server:
        for streams in (int(n) for n in args.streams.split(",")):
            tries = [asyncio.run(round_of(server.url, streams, args.frames)) for _ in range(args.repeats)]
            rounds.append(max(tries, key=lambda r: r["frames_per_s"]))
            print(json.dumps(rounds[-1]), file=sys.stderr)
    batched.close()
    one = next((r["frames_per_s"] for r in rounds if r["streams"] == 1), None)
    at_8 = next((r["frames_per_s"] for r in rounds if r["streams"] == 8), None)
    print(
        json.dumps(
            {
                "bench": "csm_serve",
                "config": args.config,
                "device": str(device),
                "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "host": platform.node(),
                "cpu_threads": torch.get_num_threads(),
                "omp": os.environ.get("OMP_NUM_THREADS"),
                "slots": args.slots,
                "frames_per_stream": args.frames,
                "cuda_graphs": device.type == "cuda" and not args.no_cuda_graphs,
                "rounds": rounds,
                "unbatched_frames_per_s": round(unbatched, 1),
                "speedup_8_vs_1_stream": round(at_8 / one, 2) if one and at_8 else None,
                "speedup_8_vs_unbatched": round(at_8 / unbatched, 2) if at_8 else None,
                "streams_at_rtf_0_5": max((r["streams"] for r in rounds if r["rtf_max"] <= 0.5), default=0),
                "load_s": round(load_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
