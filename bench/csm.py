"""CSM engine vs transformers' CsmForConditionalGeneration on the same random weights; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/csm.py --config tiny      # per-step overhead dominates
    OMP_NUM_THREADS=1 python bench/csm.py --config small     # ~0.5 GB of weights per frame dominates
    python bench/csm.py --device cuda --config csm-1b        # bfloat16, CUDA graphs (--no-cuda-graphs: eager)

Both run greedy for the same number of frames on the same text prompt (ids >= the codec's bins suppressed
in both). Ours is timed on the model loop (prefill + frames, what `generate` of transformers does);
time to first audio and the real-time factor come from `CSMEngine.stream`, Mimi decoding included.
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

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
    """Prefill and `frames` greedy frames; returns them, the total seconds, and each frame's seconds (decode plus
    feeding back, which the last frame skips) with, when `floor` is given, the floor's seconds for the same frame."""
    steps, sample, device = engine.steps, engine.sampler(0, 1), engine.model.device
    out, ours, floors = [], [], []
    with torch.inference_mode():
        start = time.perf_counter()
        hidden = steps.prefill(tokens, mask)
        synchronize(device)
        prefill_s = time.perf_counter() - start
        for n in range(frames):
            start = time.perf_counter()
            out.append(steps.decode_frame(hidden, sample))
            if n + 1 < frames:
                hidden = steps.append_frame(out[-1])
            synchronize(device)
            ours.append(time.perf_counter() - start)
            if floor is not None:
                floors.append(floor.frame_seconds(append=n + 1 < frames))
    return torch.stack(out), prefill_s + sum(ours), ours, floors


async def first_audio_and_total(engine: CSMEngine, frames: int) -> tuple[float, float, int]:
    start = time.perf_counter()
    first, count = None, 0
    async for chunk in engine.stream(TEXT, speaker=0, temperature=0, max_audio_ms=frames * 80):
        first = first or time.perf_counter() - start
        count += chunk.codes.shape[1]
    return first, time.perf_counter() - start, count


def build(spec: CsmSpec, config: str, device: torch.device, dtype: torch.dtype, cuda_graphs: bool):
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
        config, weights, mimi.to(device), word_tokenizer(TEXT, spec.text_vocab_size), device, dtype, cuda_graphs
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
    args = parser.parse_args()
    spec, device = CONFIGS[args.config], torch.device(args.device)
    frames = max(2, args.frames or FRAMES[args.config])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cuda_graphs = device.type == "cuda" and not args.no_cuda_graphs

    hf, engine = build(spec, args.config, device, dtype, cuda_graphs)
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
    our_loop(engine, tokens, mask, 2, floor)  # warm-up
    run_hf(1)  # warm-up
    ours_fps, theirs_fps, identical, our_frames, floor_frames = [], [], [], [], []
    for _ in range(max(1, args.repeats or REPEATS[args.config])):
        ours, ours_s, ours_each, floors_each = our_loop(engine, tokens, mask, frames, floor)
        theirs, theirs_s = run_hf(frames)
        ours_fps.append(frames / ours_s)
        theirs_fps.append(theirs.shape[0] / theirs_s)
        identical.append(theirs.shape == ours.shape and torch.equal(theirs, ours))
        our_frames += ours_each[:-1]  # whole frames: decode and feed back
        floor_frames += floors_each[:-1]
    asyncio.run(first_audio_and_total(engine, 1))  # warm-up (Mimi's streaming state)
    ttfa, stream_s, streamed = asyncio.run(first_audio_and_total(engine, frames))
    speedups = [o / t for o, t in zip(ours_fps, theirs_fps)]
    best_ours, best_floor = min(our_frames), min(floor_frames)
    report = {
        "bench": "csm",
        "config": args.config,
        "spec": spec.__dict__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "dtype": str(dtype).removeprefix("torch."),
        "cuda_graphs": cuda_graphs,
        "frames": frames,
        "repeats": len(speedups),
        "ours_frames_per_s": round(statistics.median(ours_fps), 2),
        "transformers_frames_per_s": round(statistics.median(theirs_fps), 2),
        "speedup": round(statistics.median(speedups), 2),
        "speedup_each_run": [round(x, 2) for x in speedups],
        "time_to_first_audio_ms": round(ttfa * 1000, 1),
        "real_time_factor": round(stream_s / (streamed * 0.08), 3),
        "greedy_frames_identical": all(identical),
        "weight_bytes_per_frame": floor.weight_bytes,
        "best_frame_ms": round(best_ours * 1000, 2),
        "floor_frame_ms": round(best_floor * 1000, 2),
        "ours_vs_floor": round(best_ours / best_floor, 3),
        "ours_vs_floor_paired_median": round(statistics.median(o / f for o, f in zip(our_frames, floor_frames)), 3),
        "wall_s": round(time.perf_counter() - START, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
    os._exit(0)  # skip tearing down torch and transformers: 10 s and more on the 2-core machine, and nothing to measure
