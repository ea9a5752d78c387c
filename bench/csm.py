"""CSM engine vs transformers' CsmForConditionalGeneration on the same random weights; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/csm.py --config tiny      # per-step overhead dominates
    OMP_NUM_THREADS=1 python bench/csm.py --config small     # ~0.5 GB of weights per frame dominates
    python bench/csm.py --device cuda --config csm-1b        # bfloat16

Both run greedy for the same number of frames on the same text prompt (ids >= the codec's bins suppressed
in both). Ours is timed on the model loop (prefill + frames, what `generate` of transformers does);
time to first audio and the real-time factor come from `CSMEngine.stream`, Mimi decoding included.
On CPU it also prints the weight bytes read per frame and the floor: the time the same matmuls take
on the same weights with nothing else around them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.tts.csm import CSMEngine  # noqa: E402
from assistant.tts.csm.model import CSMModel  # noqa: E402
from assistant.tts.csm.sampling import TopKSampler  # noqa: E402
from tests.support.random_models import CSM_1B, CsmSpec, MimiSpec, build_random_csm, build_random_mimi  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog, and then it naps in the warm afternoon sun."
CONFIGS = {
    "tiny": CsmSpec(64, 2, 4, 2, 128, 32, 2, 4, 2, 64, num_codebooks=8, text_vocab_size=1024),
    "small": CsmSpec(1024, 5, 16, 4, 4096, 256, 2, 4, 2, 512, num_codebooks=32, text_vocab_size=1024),
    "csm-1b": CSM_1B,
}


def word_tokenizer(text: str, vocab_size: int):
    """A word-level tokenizer for the prompt (the bench needs no Llama-3 tokenizer); bos/eos are its last ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted(set(pre_tokenizers.Whitespace().pre_tokenize_str(f"[0]{text}")) - {None}, key=str)
    vocab = {w: i for i, w in enumerate(sorted({w for w, _ in words} | {"<unk>"}))}
    vocab |= {"<|begin_of_text|>": vocab_size - 2, "<|end_of_text|>": vocab_size - 1}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def model_loop(model: CSMModel, tokens, mask, frames: int) -> torch.Tensor:
    sample = TopKSampler(0, 1, model.config.codec_bins)
    out = []
    with torch.inference_mode():
        hidden = model.prefill(tokens, mask)
        for n in range(frames):
            out.append(model.decode_frame(hidden, sample))
            if n + 1 < frames:
                hidden = model.append_frame(out[-1])
    return torch.stack(out)


def frame_matmuls(model: CSMModel) -> list[tuple[torch.Tensor, int]]:
    """Every weight matrix one frame reads, in order, with the rows it multiplies."""
    layers = lambda stack: [w for layer in stack.layers for w in (layer.qkv, layer.o, layer.gate_up, layer.down)]  # noqa: E731
    k = model.config.num_codebooks
    seq = [(w, 1) for w in layers(model.backbone)] + [(model.codebook0_head, 1), (model.projection, 2)]
    seq += [(w, 2) for w in layers(model.decoder)]
    for i in range(1, k):
        seq.append((model.audio_head[i - 1], 1))
        if i + 1 < k:
            seq += [(model.projection, 1)] + [(w, 1) for w in layers(model.decoder)]
    return seq


def floor_seconds(model: CSMModel, frames: int) -> float:
    seq = frame_matmuls(model)
    inputs = {(w.shape[1], rows): torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w, rows in seq}
    with torch.inference_mode():
        for w, rows in seq:  # warm-up
            F.linear(inputs[w.shape[1], rows], w)
        start = time.perf_counter()
        for _ in range(frames):
            for w, rows in seq:
                F.linear(inputs[w.shape[1], rows], w)
        return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=None, help="default: 40 tiny, 16 small, 100 csm-1b")
    args = parser.parse_args()
    spec, device = CONFIGS[args.config], torch.device(args.device)
    frames = args.frames or {"tiny": 40, "small": 8, "csm-1b": 100}[args.config]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    hf = build_random_csm(spec, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        mimi = build_random_mimi(MimiSpec(num_codebooks=spec.num_codebooks), seed=0).to(device)
        tokenizer = word_tokenizer(TEXT, spec.text_vocab_size)
        engine = CSMEngine.from_pretrained(tmp, mimi=mimi, tokenizer=tokenizer, device=device, dtype=dtype)
    hf = hf.to(device, dtype)
    special = torch.arange(spec.audio_vocab_size - 3, spec.audio_vocab_size, device=device)
    suppress = lambda module, args, output: output.index_fill(-1, special, float("-inf"))  # noqa: E731
    hf.lm_head.register_forward_hook(suppress)
    hf.depth_decoder.codebooks_head.register_forward_hook(suppress)

    ids = engine.text.encode(TEXT, 0)
    tokens, mask = engine.prompt(TEXT, speaker=0, max_audio_ms=frames * 80)
    input_ids = torch.tensor([ids], device=device)

    def run_hf() -> torch.Tensor:
        with torch.no_grad():
            return hf.generate(input_ids=input_ids, max_new_tokens=frames, do_sample=False, depth_decoder_do_sample=False)[0]

    def timed(fn):
        fn()  # warm-up
        synchronize(device)
        start = time.perf_counter()
        result = fn()
        synchronize(device)
        return result, time.perf_counter() - start

    ours, ours_s = timed(lambda: model_loop(engine.model, tokens, mask, frames))
    theirs, theirs_s = timed(run_hf)

    async def stream() -> tuple[float, float, int]:
        start = time.perf_counter()
        first, count = None, 0
        async for chunk in engine.stream(TEXT, speaker=0, temperature=0, max_audio_ms=frames * 80):
            first = first or time.perf_counter() - start
            count += chunk.codes.shape[1]
        return first, time.perf_counter() - start, count

    asyncio.run(stream())  # warm-up
    ttfa, stream_s, streamed = asyncio.run(stream())
    report = {
        "bench": "csm",
        "config": args.config,
        "spec": spec.__dict__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "dtype": str(dtype).removeprefix("torch."),
        "frames": frames,
        "ours_frames_per_s": round(frames / ours_s, 2),
        "transformers_frames_per_s": round(theirs.shape[0] / theirs_s, 2),
        "speedup": round((frames / ours_s) / (theirs.shape[0] / theirs_s), 2),
        "time_to_first_audio_ms": round(ttfa * 1000, 1),
        "real_time_factor": round(stream_s / (streamed * 0.08), 3),
        "greedy_frames_identical": bool(theirs.shape == ours.shape and torch.equal(theirs, ours)),
    }
    if device.type == "cpu":
        floor = floor_seconds(engine.model, frames)
        weight_bytes = sum(w.numel() * w.element_size() for w, _ in frame_matmuls(engine.model))
        report |= {
            "weight_bytes_per_frame": weight_bytes,
            "floor_frames_per_s": round(frames / floor, 2),
            "ours_vs_floor": round(ours_s / floor, 3),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
