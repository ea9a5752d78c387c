"""Our CSM engine against transformers' CsmForConditionalGeneration on the same random weights.

Both checkpoint layouts are checked: transformers' (`save_pretrained`) and Sesame's (torchtune names,
interleaved RoPE), the latter converted here from the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.config import CSMConfig
from assistant.tts.csm.weights import SESAME_NAMES, TRANSFORMERS_NAMES, half_to_interleaved
from tests.support.random_models import MEDIUM_CSM, TINY_CSM, TINY_MIMI, MimiSpec, build_random_csm, build_random_mimi

FRAMES = 20
SPECS = {"tiny": TINY_CSM, "medium": MEDIUM_CSM}


def save_sesame_layout(hf_dir: Path, out_dir: Path) -> Path:
    """Rewrite a transformers-layout checkpoint in Sesame's layout (names, interleaved q/k, config)."""
    config = CSMConfig.from_transformers(json.loads((hf_dir / "config.json").read_text()))
    src = load_file(hf_dir / "model.safetensors")

    def pick(name: str | tuple[str, ...]) -> torch.Tensor:
        return next(src[n] for n in ((name,) if isinstance(name, str) else name) if n in src)

    out = {
        SESAME_NAMES[k]: pick(TRANSFORMERS_NAMES[k])
        for k in ("text_embeddings", "audio_embeddings", "codebook0_head", "projection", "audio_head")
    }
    for stack, cfg in (("backbone", config.backbone), ("decoder", config.decoder)):
        hf_prefix, ss_prefix = TRANSFORMERS_NAMES[stack], SESAME_NAMES[stack]
        out[f"{ss_prefix}{SESAME_NAMES['norm']}"] = src[f"{hf_prefix}{TRANSFORMERS_NAMES['norm']}"]
        for i in range(cfg.layers):
            for key in ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down"):
                w = src[f"{hf_prefix}layers.{i}.{TRANSFORMERS_NAMES[key]}"]
                if key in ("q", "k"):
                    w = half_to_interleaved(w, cfg.heads if key == "q" else cfg.kv_heads)
                out[f"{ss_prefix}layers.{i}.{SESAME_NAMES[key]}"] = w
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(config.to_sesame()))
    return out_dir


def context_segments(num_codebooks: int) -> list[Segment]:
    """Several segments of two speakers, with audio codes (ids spanning the codec's range)."""
    g = torch.Generator().manual_seed(7)
    codes = lambda frames: torch.randint(0, 2048, (num_codebooks, frames), generator=g)  # noqa: E731
    return [
        Segment(0, "Hello there, how was the trip?", codes=codes(6)),
        Segment(1, "Long, but worth it.", codes=codes(5)),
        Segment(0, "Tell me everything!"),
        Segment(1, "Well, first the train was late.", codes=codes(4)),
    ]


def oracle_embeds(hf, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Prompt rows embedded by transformers' own modules: text rows by the text table, audio rows by the codebooks."""
    k = hf.config.num_codebooks
    text = hf.embed_text_tokens(tokens[:, k])
    audio = hf.backbone_model.embed_tokens(tokens[None, :, :k])[0]
    return torch.where(mask[:, k : k + 1], text, audio)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


TEXT = "Then we missed the ferry, of course."


@pytest.fixture(scope="module")
def tokenizer(llama3_tokenizer_json) -> Tokenizer:
    return Tokenizer.from_file(str(llama3_tokenizer_json))


@pytest.fixture(scope="module", params=sorted(SPECS))
def oracle(request, tmp_path_factory, tokenizer):
    """Per config: checkpoints of both layouts, a Mimi, the prompt rows, and transformers' answers from its own
    greedy `generate`: the frames, and the codebook-0 logits, last hidden states and depth-decoder logits of
    every step on the way (recorded by hooks on its heads)."""
    spec = SPECS[request.param]
    k, bins = spec.num_codebooks, spec.audio_vocab_size - 3
    root = tmp_path_factory.mktemp(f"csm-{request.param}")
    hf = build_random_csm(spec, seed=3)
    hf_dir = root / "transformers"
    hf.save_pretrained(hf_dir)
    sesame_dir = save_sesame_layout(hf_dir, root / "sesame")
    mimi = build_random_mimi(MimiSpec(num_codebooks=k) if k != TINY_MIMI.num_codebooks else TINY_MIMI)
    engine = CSMEngine.from_pretrained(hf_dir, mimi=mimi, tokenizer=tokenizer)
    tokens, mask = engine.prompt(TEXT, speaker=1, context=context_segments(k))
    assert mask[:, :k].any(dim=1).sum() == 6 + 5 + 4 + 3  # every audio segment is in, with its end frame

    special = torch.arange(bins, spec.audio_vocab_size)
    seen: dict[str, list[torch.Tensor]] = {"hidden": [], "c0": [], "decoder": []}

    def head_hook(*names: str):
        def hook(module, args, output):  # record the last position's input and raw logits, then suppress
            for name, tensor in zip(names, (output, args[0])):
                seen[name].append(tensor[0, -1].clone())
            return output.index_fill(-1, special, float("-inf"))

        return hook

    handles = [
        hf.lm_head.register_forward_hook(head_hook("c0", "hidden")),
        hf.depth_decoder.codebooks_head.register_forward_hook(head_hook("decoder")),
    ]
    hf._merge_input_ids_with_input_values = lambda *a, **kw: {
        "inputs_embeds": oracle_embeds(hf, tokens, mask)[None],
        "labels": None,
    }
    with torch.no_grad():
        frames = hf.generate(
            input_ids=torch.ones(1, tokens.shape[0], dtype=torch.long),
            max_new_tokens=FRAMES,
            do_sample=False,
            depth_decoder_do_sample=False,
        )[0]
    del hf._merge_input_ids_with_input_values
    for handle in handles:
        handle.remove()
    assert frames.shape == (FRAMES, k)
    assert frames.unique().numel() > 10, "degenerate frames would make the comparison vacuous"
    assert [len(seen[n]) for n in ("c0", "hidden", "decoder")] == [FRAMES, FRAMES, FRAMES * (k - 1)]
    return dict(
        spec=spec,
        dirs={"transformers": hf_dir, "sesame": sesame_dir},
        mimi=mimi,
        tok=tokenizer,
        tokens=tokens,
        mask=mask,
        frames=frames,
        c0_logits=torch.stack(seen["c0"]),
        hidden=torch.stack(seen["hidden"]),
        decoder_logits=torch.stack(seen["decoder"]).view(FRAMES, k - 1, -1),
    )


@pytest.mark.parametrize(("layout", "static"), [("transformers", False), ("sesame", False), ("transformers", True)])
def test_logits_and_greedy_frames_match_transformers(oracle, layout, static):
    """Through the public API, recording what the model computes on the way. `static` runs the backbone step in
    the fixed-shape form a CUDA graph captures (the whole cache, masked by a position tensor)."""
    spec = oracle["spec"]
    k = spec.num_codebooks
    engine = CSMEngine.from_pretrained(oracle["dirs"][layout], mimi=oracle["mimi"], tokenizer=oracle["tok"])
    engine.model.static = static
    tokens, mask = engine.prompt(TEXT, speaker=1, context=context_segments(k))
    assert torch.equal(tokens, oracle["tokens"]) and torch.equal(mask, oracle["mask"])

    hidden: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    decode = engine.model.decode_codes

    def recording(h: torch.Tensor, sample, race):
        hidden.append(h.clone())
        return decode(h, lambda x, r: (logits.append(x.clone()), sample(x, r))[1], race)

    engine.model.decode_codes = recording
    result = engine.generate(TEXT, speaker=1, context=context_segments(k), temperature=0, max_audio_ms=FRAMES * 80)

    assert torch.equal(result.codes, oracle["frames"].T)
    assert result.audio.shape == (FRAMES * 1920,)
    per_frame = torch.stack(logits).view(FRAMES, k, -1)
    assert relative_error(per_frame[:, 0], oracle["c0_logits"]) < 1e-4
    assert relative_error(torch.cat(hidden), oracle["hidden"]) < 1e-4
    for f in range(FRAMES):
        assert relative_error(per_frame[f, 1:], oracle["decoder_logits"][f]) < 1e-4


def test_a_prompt_partly_in_the_cache_gives_transformers_frames(oracle):
    """A turn after an earlier one: the rows the two prompts share are taken from the backbone's cache, and only
    the rest is prefilled; the frames are still transformers'."""
    k = oracle["spec"].num_codebooks
    engine = CSMEngine.from_pretrained(oracle["dirs"]["transformers"], mimi=oracle["mimi"], tokenizer=oracle["tok"])
    context = context_segments(k)
    engine.generate("Something else first.", speaker=1, context=context[:2], temperature=0, max_audio_ms=240)
    starts: list[int] = []
    prefill = engine.steps.prefill
    engine.steps.prefill = lambda tokens, mask, start: (starts.append(start), prefill(tokens, mask, start))[1]
    result = engine.generate(TEXT, speaker=1, context=context, temperature=0, max_audio_ms=FRAMES * 80)
    shared = sum(engine.prompts.segment_rows(s)[i][0].shape[0] for s in context[:2] for i in range(2))
    assert starts and starts[0] >= shared
    assert torch.equal(result.codes, oracle["frames"].T)


def test_the_fused_path_gives_transformers_frames(oracle):
    """`fused` (TorchInductor over the per-frame work) in float32: the same greedy frames as transformers."""
    if oracle["spec"] != TINY_CSM:
        pytest.skip("compiling the medium config's frame takes minutes on two cores; the tiny one covers the path")
    engine = CSMEngine.from_pretrained(
        oracle["dirs"]["transformers"], mimi=oracle["mimi"], tokenizer=oracle["tok"], fused=True
    )
    result = engine.generate(
        TEXT, speaker=1, context=context_segments(TINY_CSM.num_codebooks), temperature=0, max_audio_ms=FRAMES * 80
    )
    assert engine.model.decode_codes is not engine.model.decode_with
    assert torch.equal(result.codes, oracle["frames"].T)
