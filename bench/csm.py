"""CSM engine vs transformers' CsmForConditionalGeneration on the same random weights; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/csm.py --config tiny      # per-step overhead dominates
    OMP_NUM_THREADS=1 python bench/csm.py --config small     # ~0.5 GB of weights per frame dominates
    python bench/csm.py --device cuda --config csm-1b        # bfloat16, CUDA graphs (--no-cuda-graphs: eager)
    python bench/csm.py --device cuda --config csm-1b --fused   # the per-frame work compiled (CSMModel.fuse)

Both run greedy for the same number of frames on the same text prompt (ids >= the codec's bins suppressed
in both). Ours is timed on the model loop (prefill + frames, what `generate` of transformers does), on the
engine's thread, with each stage timed on its own (`stage_ms`, Mimi's streaming decode included);
`real_time_factor_model` is a median frame's decode and feed-back against its 80 ms. First audio and the streamed
real-time factor come from `CSMEngine.stream`, Mimi decoding included: of the first stream after load (the
engine warmed up at load), steadily (median of five), and in a conversation of six turns (three user turns of
3 s audio, three of its own) where the backbone's cache already holds all but the newest turn, and with it
prefilled in full. The streamed factor is measured with Mimi overlapped with the next frame and without.
The floor is the time the same matmuls take on the same weights with nothing else around them: after
each of our frames the floor's frame runs, and `ours_vs_floor` compares the best frame of each, so that
other load on a shared machine weighs on both alike; `ours_vs_floor_paired_median` is the median over frames of
each frame's ratio to the floor's frame run right after it (steadier where the memory bandwidth drifts).
The timed runs of ours and transformers alternate `--repeats` times; the rates and the speedup are the medians
(`speedup_each_run` lists them all: a run of a fraction of a second moves with the host's load).
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the wall time reported includes the imports

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.segment import Segment  # noqa: E402
from assistant.tts.csm import CSMEngine  # noqa: E402
from assistant.tts.csm.model import CSMModel  # noqa: E402
from assistant.tts.csm.weights import convert_checkpoint  # noqa: E402
from tests.support.random_models import CSM_1B, CsmSpec, MimiSpec, build_random_csm, build_random_mimi  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, and then it naps in the warm afternoon sun."
CONFIGS = {
    "tiny": CsmSpec(64, 2, 4, 2, 128, 32, 2, 4, 2, 64, num_codebooks=8, text_vocab_size=1024),
    "small": CsmSpec(1024, 5, 16, 4, 4096, 256, 2, 4, 2, 512, num_codebooks=32, text_vocab_size=1024),
    "csm-1b": CSM_1B,
}
FRAMES = {"tiny": 20, "small": 4, "csm-1b": 100}
REPEATS = {"tiny": 5, "small": 3, "csm-1b": 3}


def word_tokenizer(text: str, vocab_size: int):
    """A word-level tokenizer for the prompt (the bench needs no Llama-3 tokenizer); bos/eos are its last ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(pre_tokenizers.Whitespace().pre_tokenize_str(f"[0]{text}")) - {None}, key=str)
    vocab = {w: i for i, w in enumerate(sorted({w for w, _ in words} | {"<unk>"}))}
    vocab |= {"<|begin_of_text|>": vocab_size - 2, "<|end_of_text|>": vocab_size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def layer_matrices(stack) -> list[torch.Tensor]:
    return [w for layer in stack.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]


class Floor:
    """Every weight matrix one frame multiplies, in order, each by one row as the model does, and nothing else:
    the frame's decoding (codebook-0 head, projection of the backbone's state, then the depth decoder's layers at
    each of its K positions, each after the first followed by its audio head; the codes' projected embeddings are
    looked up, as the model does), then feeding it back (the backbone). The model holds them as `[in, out]` views
    for `torch.mm`. The decoder's RoPE rotations (`[head_dim, head_dim]` matmuls) are not weights and are left out."""

    def __init__(self, model: CSMModel):
        k = model.config.num_codebooks
        self.decode = [model.codebook0_head, model.projection] + layer_matrices(model.decoder)
        for i in range(1, k):
            self.decode += layer_matrices(model.decoder) + [model.audio_head[i - 1]]
        self.append = layer_matrices(model.backbone)
        self.inputs = {
            w.shape[0]: torch.randn(1, w.shape[0], dtype=w.dtype, device=w.device) for w in self.decode + self.append
        }
        self.device = model.device

    @property
    def weight_bytes(self) -> int:
        return sum(w.numel() * w.element_size() for w in self.decode + self.append)

    def frame_seconds(self, append: bool) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for w in self.decode + (self.append if append else []):
                torch.mm(self.inputs[w.shape[0]], w)
        synchronize(self.device)
        return time.perf_counter() - start


def our_loop(engine: CSMEngine, tokens, mask, frames: int, floor: Floor | None = None):
    """Prefill and `frames` greedy frames, driving the engine's steps directly (call it on the engine's thread);
    returns them, the total seconds, the prefill's seconds, and each frame's decode and feed-back seconds (the last
    frame is not fed back) with, when `floor` is given, the floor's seconds for the same frame."""
    steps, sample, device = engine.steps, engine.sampler(0, 1), engine.model.device
    out, decodes, appends, floors = [], [], [], []
    with torch.inference_mode():
        start = time.perf_counter()
        hidden = steps.prefill(tokens, mask)
        synchronize(device)
        prefill_s = time.perf_counter() - start
        for n in range(frames):
            start = time.perf_counter()
            out.append(steps.decode_frame(hidden, sample))
            synchronize(device)
            decodes.append(time.perf_counter() - start)
            if n + 1 < frames:
                start = time.perf_counter()
                hidden = steps.append_frame(out[-1])
                synchronize(device)
                appends.append(time.perf_counter() - start)
            if floor is not None:
                floors.append(floor.frame_seconds(append=n + 1 < frames))
    engine.forget_cache()  # the cache was written around the engine's bookkeeping
    return torch.stack(out), prefill_s + sum(decodes) + sum(appends), prefill_s, decodes, appends, floors


def mimi_frame_seconds(engine: CSMEngine, frames: torch.Tensor) -> list[float]:
    """Mimi's streaming decode of each frame `[K]` on its own (call it on the engine's thread)."""
    seconds = []
    with engine.codec.stream(overlap=False) as decoder:
        for frame in frames:
            start = time.perf_counter()
            decoder.submit(frame).result()
            seconds.append(time.perf_counter() - start)
    return seconds


async def streamed(engine: CSMEngine, text: str, frames: int, context=()) -> tuple[float, float, int, list[float]]:
    """One greedy `stream()` of one frame per chunk: first audio and total seconds, frames, gaps between chunks."""
    start = time.perf_counter()
    arrivals, count = [], 0
    async for chunk in engine.stream(text, speaker=1, context=context, temperature=0, max_audio_ms=frames * 80):
        arrivals.append(time.perf_counter())
        count += chunk.codes.shape[1]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return arrivals[0] - start, arrivals[-1] - start, count, gaps


def first_audio(engine: CSMEngine, text: str = TEXT, context=(), reuse: bool = False) -> float:
    """Seconds to the first chunk; unless `reuse`, with the whole prompt prefilled (a repeated prompt would
    otherwise find all but its last row in the cache)."""
    if not reuse:
        engine.forget_cache()
    return asyncio.run(streamed(engine, text, 2, context))[0]


def six_turns(engine: CSMEngine) -> list[Segment]:
    """A conversation of six turns, the assistant's three (generated, each after the turns before it) and the user's
    three (3 s of audio each, Mimi-encoded by the engine as the voice loop does)."""
    rng = np.random.default_rng(0)
    context: list[Segment] = []
    for turn in range(3):
        reply = engine.generate(f"{TEXT} Turn {turn}.", speaker=1, context=context, temperature=0, max_audio_ms=2400)
        context.append(Segment(1, f"{TEXT} Turn {turn}.", codes=reply.codes))
        voice = (rng.standard_normal(48_000) * np.hanning(48_000) * 0.1).astype(np.float32)
        context.append(Segment(0, "And what happened next?", codes=asyncio.run(engine.encode(voice, 16_000))))
    return context


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def build(spec: CsmSpec, config: str, device: torch.device, dtype: torch.dtype, cuda_graphs: bool, fused: bool):
    """transformers' model with random weights, and our engine on the same weights (the loader's conversion)."""
    hf = build_random_csm(spec, seed=0, dtype=dtype)
    if config == "csm-1b":  # moshi's full-size Mimi (random weights), so that decoding costs what it will
        from moshi.models import loaders

        mimi = loaders.get_mimi(None, device="cpu", num_codebooks=spec.num_codebooks).eval()
    else:
        mimi = build_random_mimi(MimiSpec(num_codebooks=spec.num_codebooks), seed=0)
    # The loader's conversion of transformers' weights, from memory: a save_pretrained round trip took ~18 s of the
    # `small` run (16 to save, 2 to read back) on the 2-core machine; test_csm_oracle.py covers loading from disk.
    config, weights = convert_checkpoint(hf.config.to_dict(), hf.state_dict(), "transformers' model")
    engine = CSMEngine.from_weights(
        config, weights, mimi.to(device), word_tokenizer(TEXT, spec.text_vocab_size), device, dtype, cuda_graphs, fused
    )
    hf = hf.to(device)
    special = torch.arange(spec.audio_vocab_size - 3, spec.audio_vocab_size, device=device)
    suppress = lambda module, args, output: output.index_fill(-1, special, float("-inf"))  # noqa: E731
    hf.lm_head.register_forward_hook(suppress)
    hf.depth_decoder.codebooks_head.register_forward_hook(suppress)
    return hf, engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=None, help=f"at least 2; default: {FRAMES}")
    parser.add_argument("--repeats", type=int, default=None, help=f"timed runs of each; default: {REPEATS}")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="on CUDA, run the per-frame work eagerly")
    parser.add_argument("--fused", action="store_true", help="compile the per-frame work (CSMModel.fuse)")
    args = parser.parse_args()
    spec, device = CONFIGS[args.config], torch.device(args.device)
    frames = max(2, args.frames or FRAMES[args.config])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cuda_graphs = device.type == "cuda" and not args.no_cuda_graphs

    load_start = time.perf_counter()
    hf, engine = build(spec, args.config, device, dtype, cuda_graphs, args.fused)
    load_s = time.perf_counter() - load_start
    first_turn = first_audio(engine)  # the first stream after load, on the engine's thread warmed at load
    steady = statistics.median(first_audio(engine) for _ in range(5))
    tokens, mask = engine.prompt(TEXT, speaker=0, max_audio_ms=frames * 80)
    input_ids = torch.tensor([engine.text.encode(TEXT, 0)], device=device)

    def run_hf(count: int) -> tuple[torch.Tensor, float]:
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(input_ids=input_ids, max_new_tokens=count, do_sample=False, depth_decoder_do_sample=False)
        synchronize(device)
        return out[0], time.perf_counter() - start

    floor = Floor(engine.model)
    loop = lambda: engine.thread.call(our_loop, engine, tokens, mask, frames, floor)  # noqa: E731
    engine.thread.call(our_loop, engine, tokens, mask, 2, floor)  # warm-up
    run_hf(1)  # warm-up
    ours_fps, theirs_fps, identical, our_frames, floor_frames, prefills, decodes, appends = (
        [],
        [],
        [],
        [],
        [],
        [],
        [],
        [],
    )
    for _ in range(max(1, args.repeats or REPEATS[args.config])):
        ours, ours_s, prefill_s, decode_each, append_each, floors_each = loop()
        theirs, theirs_s = run_hf(frames)
        ours_fps.append(frames / ours_s)
        theirs_fps.append(theirs.shape[0] / theirs_s)
        identical.append(theirs.shape == ours.shape and torch.equal(theirs, ours))
        our_frames += [d + a for d, a in zip(decode_each, append_each)]  # whole frames: decode and feed back
        floor_frames += floors_each[:-1]
        prefills.append(prefill_s)
        decodes += decode_each
        appends += append_each
    mimi = engine.thread.call(mimi_frame_seconds, engine, ours[: min(frames, 50)])

    stream = {}
    for overlap in (True, False):
        engine.overlap = overlap
        _, total, count, gaps = asyncio.run(streamed(engine, TEXT, frames))
        stream[overlap] = (total / (count * 0.08), gaps)
    engine.overlap = True
    gaps = stream[True][1]

    context = six_turns(engine)
    in_conversation = first_audio(engine, "So, that is the whole story.", context, reuse=True)
    full_prefill = first_audio(engine, "So, that is the whole story.", context)
    context_rows = engine.prompt("So, that is the whole story.", speaker=1, context=context)[0].shape[0]

    speedups = [o / t for o, t in zip(ours_fps, theirs_fps)]
    best_ours, best_floor = min(our_frames), min(floor_frames)
    report = {
        "bench": "csm",
        "config": args.config,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()} threads",
        "dtype": str(dtype).removeprefix("torch."),
        "cuda_graphs": cuda_graphs,
        "fused": args.fused,
        "load_s": round(load_s, 1),
        "frames": frames,
        "repeats": len(speedups),
        "ours_frames_per_s": round(statistics.median(ours_fps), 2),
        "transformers_frames_per_s": round(statistics.median(theirs_fps), 2),
        "speedup": round(statistics.median(speedups), 2),
        "speedup_each_run": [round(x, 2) for x in speedups],
        "greedy_frames_identical": all(identical),
        "first_audio_first_turn_ms": ms(first_turn),
        "first_audio_steady_ms": ms(steady),
        "first_turn_vs_steady": round(first_turn / steady, 2),
        "first_audio_six_turns_ms": ms(in_conversation),
        "first_audio_six_turns_full_prefill_ms": ms(full_prefill),
        "six_turns_prompt_rows": context_rows,
        "stage_ms": {
            "prefill": ms(statistics.median(prefills)),
            "decode_frame": ms(statistics.median(decodes)),
            "append_frame": ms(statistics.median(appends)),
            "mimi_decode": ms(statistics.median(mimi)),
        },
        "real_time_factor_model": round(statistics.median(d + a for d, a in zip(decodes, appends)) / 0.08, 3),
        "real_time_factor": round(stream[True][0], 3),
        "real_time_factor_no_overlap": round(stream[False][0], 3),
        "chunk_gap_median_ms": ms(statistics.median(gaps)),
        "chunk_gap_p99_ms": ms(float(np.percentile(gaps, 99))),
        "weight_bytes_per_frame": floor.weight_bytes,
        "best_frame_ms": ms(best_ours),
        "floor_frame_ms": ms(best_floor),
        "ours_vs_floor": round(best_ours / best_floor, 3),
        "ours_vs_floor_paired_median": round(statistics.median(o / f for o, f in zip(our_frames, floor_frames)), 3),
        "wall_s": round(time.perf_counter() - START, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # skip tearing down torch and transformers: 10 s and more on the 2-core machine, and nothing to measure
