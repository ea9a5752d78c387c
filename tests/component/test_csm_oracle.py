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

from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.config import CSMConfig
from assistant.tts.csm.sampling import TopKSampler
from assistant.tts.csm.weights import SESAME_NAMES, TRANSFORMERS_NAMES, half_to_interleaved
from tests.support.random_models import MEDIUM_CSM, TINY_CSM, TINY_MIMI, MimiSpec, build_random_mimi, save_random_csm

FRAMES = 20
SPECS = {"tiny": TINY_CSM, "medium": MEDIUM_CSM}


def save_sesame_layout(hf_dir: Path, out_dir: Path) -> Path:
    """Rewrite a transformers-layout checkpoint in Sesame's layout (names, interleaved q/k, config)."""
    config = CSMConfig.from_transformers(json.loads((hf_dir / "config.json").read_text()))
    src = load_file(hf_dir / "model.safetensors")

    def pick(name: str | tuple[str, ...]) -> torch.Tensor:
        return next(src[n] for n in ((name,) if isinstance(name, str) else name) if n in src)

    out = {SESAME_NAMES[k]: pick(TRANSFORMERS_NAMES[k]) for k in
           ("text_embeddings", "audio_embeddings", "codebook0_head", "projection", "audio_head")}
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


@pytest.fixture(scope="module", params=sorted(SPECS))
def oracle(request, tmp_path_factory, llama3_tokenizer_json):
    """Per config: checkpoints of both layouts, a Mimi, the prompt rows, and transformers' answers:
    greedy frames from its own `generate`, then codebook-0 logits, last hidden states and depth-decoder
    logits along that sequence."""
    from transformers import CsmForConditionalGeneration

    spec = SPECS[request.param]
    k, bins = spec.num_codebooks, spec.audio_vocab_size - 3
    root = tmp_path_factory.mktemp(f"csm-{request.param}")
    hf_dir = save_random_csm(root / "transformers", spec, seed=3)
    sesame_dir = save_sesame_layout(hf_dir, root / "sesame")
    mimi = build_random_mimi(MimiSpec(num_codebooks=k) if k != TINY_MIMI.num_codebooks else TINY_MIMI)
    engine = CSMEngine.from_pretrained(hf_dir, mimi=mimi, tokenizer=llama3_tokenizer_json)
    tokens, mask = engine.prompt(TEXT, speaker=1, context=context_segments(k))
    assert mask[:, :k].any(dim=1).sum() == 6 + 5 + 4 + 3  # every audio segment is in, with its end frame

    hf = CsmForConditionalGeneration.from_pretrained(hf_dir).eval()
    t = tokens.shape[0]
    special = torch.arange(bins, spec.audio_vocab_size)
    suppress = lambda module, args, output: output.index_fill(-1, special, float("-inf"))  # noqa: E731
    handles = [hf.lm_head.register_forward_hook(suppress), hf.depth_decoder.codebooks_head.register_forward_hook(suppress)]
    hf._merge_input_ids_with_input_values = lambda *a, **kw: {"inputs_embeds": oracle_embeds(hf, tokens, mask)[None], "labels": None}
    with torch.no_grad():
        frames = hf.generate(
            input_ids=torch.ones(1, t, dtype=torch.long), max_new_tokens=FRAMES, do_sample=False,
            depth_decoder_do_sample=False,
        )[0]
    del hf._merge_input_ids_with_input_values
    for handle in handles:
        handle.remove()
    assert frames.shape == (FRAMES, k)
    assert frames.unique().numel() > 10, "degenerate frames would make the comparison vacuous"

    with torch.no_grad():
        embeds = torch.cat([oracle_embeds(hf, tokens, mask), hf.backbone_model.embed_tokens(frames[None])[0]])
        out = hf(inputs_embeds=embeds[None], output_hidden_states=True)
        hidden = out.hidden_states[-1][0, t - 1 : t - 1 + FRAMES]
        decoder_logits = [
            hf.depth_decoder(
                input_ids=torch.cat([torch.zeros(1, dtype=torch.long), frames[f, : k - 1]])[None],
                backbone_last_hidden_state=hidden[f : f + 1],
            ).logits[0]
            for f in range(FRAMES)
        ]
    return dict(
        spec=spec, dirs={"transformers": hf_dir, "sesame": sesame_dir}, mimi=mimi, tok=llama3_tokenizer_json,
        tokens=tokens, mask=mask, frames=frames, c0_logits=out.logits[0, t - 1 : t - 1 + FRAMES],
        hidden=hidden, decoder_logits=decoder_logits,
    )


@pytest.mark.parametrize("layout", ["transformers", "sesame"])
def test_logits_and_greedy_frames_match_transformers(oracle, layout):
    spec = oracle["spec"]
    k, bins = spec.num_codebooks, spec.audio_vocab_size - 3
    engine = CSMEngine.from_pretrained(oracle["dirs"][layout], mimi=oracle["mimi"], tokenizer=oracle["tok"])
    tokens, mask = engine.prompt(TEXT, speaker=1, context=context_segments(k))
    assert torch.equal(tokens, oracle["tokens"]) and torch.equal(mask, oracle["mask"])

    # Ours, greedy, recording every logits vector the sampler sees.
    logits: list[torch.Tensor] = []
    greedy = TopKSampler(0, 1, bins)
    record = lambda x: (logits.append(x.clone()), greedy(x))[1]  # noqa: E731
    model, hidden, frames = engine.model, [], []
    with torch.inference_mode():
        h = model.prefill(tokens, mask)
        for _ in range(FRAMES):
            hidden.append(h)
            frames.append(model.decode_frame(h, record))
            h = model.append_frame(frames[-1])
    frames = torch.stack(frames)  # [FRAMES, K]

    assert torch.equal(frames, oracle["frames"])
    assert relative_error(torch.stack(logits[0::k]), oracle["c0_logits"]) < 1e-4
    assert relative_error(torch.stack(hidden), oracle["hidden"]) < 1e-4
    for f in range(FRAMES):
        assert relative_error(torch.stack(logits[f * k + 1 : (f + 1) * k]), oracle["decoder_logits"][f]) < 1e-4

    # The public API gives the same frames, and audio for each of them.
    result = engine.generate(TEXT, speaker=1, context=context_segments(k), temperature=0, max_audio_ms=FRAMES * 80)
    assert torch.equal(result.codes, frames.T)
    assert result.audio.shape == (FRAMES * 1920,)
