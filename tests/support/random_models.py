"""Random-weight CSM and Mimi models built in code, for tests and benchmarks (no hub, no download).

CSM is built with transformers' `CsmForConditionalGeneration` and saved with `save_pretrained`,
exactly the layout of the `sesame/csm-1b` repository; Mimi is built by moshi's own loader.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@dataclass(frozen=True)
class CsmSpec:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    decoder_hidden_size: int
    decoder_layers: int
    decoder_heads: int
    decoder_kv_heads: int
    decoder_intermediate_size: int
    num_codebooks: int = 32
    text_vocab_size: int = 128_256
    audio_vocab_size: int = 2051
    max_position_embeddings: int = 2048


@dataclass(frozen=True)
class MimiSpec:
    num_codebooks: int
    seanet_dimension: int = 64
    seanet_filters: int = 8
    quantizer_dimension: int = 32
    bins: int = 2048
    transformer_dim: int = 64
    transformer_heads: int = 4
    transformer_layers: int = 1
    transformer_ff: int = 128


TINY_CSM = CsmSpec(64, 2, 4, 2, 128, 32, 2, 4, 2, 64, num_codebooks=8)
MEDIUM_CSM = CsmSpec(256, 4, 8, 2, 768, 128, 2, 8, 2, 384, num_codebooks=32)
CSM_1B = CsmSpec(2048, 16, 32, 8, 8192, 1024, 4, 8, 2, 8192, num_codebooks=32)
TINY_MIMI = MimiSpec(num_codebooks=8)


def csm_config(spec: CsmSpec):
    from transformers import CsmConfig, CsmDepthDecoderConfig, MimiConfig

    decoder = CsmDepthDecoderConfig(
        num_codebooks=spec.num_codebooks,
        backbone_hidden_size=spec.hidden_size,
        vocab_size=spec.audio_vocab_size,
        hidden_size=spec.decoder_hidden_size,
        intermediate_size=spec.decoder_intermediate_size,
        num_hidden_layers=spec.decoder_layers,
        num_attention_heads=spec.decoder_heads,
        num_key_value_heads=spec.decoder_kv_heads,
        max_position_embeddings=spec.num_codebooks + 1,
        rope_theta=500_000,
        rope_scaling=dict(LLAMA3_ROPE_SCALING),
    )
    # The transformers model carries its own (unused here) Mimi; keep it small.
    codec = MimiConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        intermediate_size=128,
        num_filters=8,
        codebook_dim=32,
        upsample_groups=64,
        num_quantizers=spec.num_codebooks,
        codebook_size=spec.audio_vocab_size - 3,
    )
    return CsmConfig(
        num_codebooks=spec.num_codebooks,
        vocab_size=spec.audio_vocab_size,
        text_vocab_size=spec.text_vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=500_000,
        rope_scaling=dict(LLAMA3_ROPE_SCALING),
        depth_decoder_config=decoder.to_dict(),
        codec_config=codec.to_dict(),
    )


def build_random_csm(spec: CsmSpec, seed: int = 0, dtype: torch.dtype = torch.float32):
    """transformers' CsmForConditionalGeneration with random weights (eval mode).

    Matrices are uniform with transformers' standard deviation (0.02), norm weights 1, other vectors 0, drawn
    once from a seeded generator: transformers' own init draws every weight twice, and normal draws are slower.
    """
    from transformers import CsmForConditionalGeneration
    from transformers.modeling_utils import no_init_weights

    with no_init_weights():
        model = CsmForConditionalGeneration(csm_config(spec))
    model.tie_weights()
    generator = torch.Generator().manual_seed(seed)
    bound = 0.02 * 3**0.5
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim > 1:
                weight.uniform_(-bound, bound, generator=generator)
            else:
                weight.fill_(1.0 if name.endswith("norm.weight") else 0.0)
    return model.to(dtype).eval()


def save_random_csm(directory: Path, spec: CsmSpec, seed: int = 0) -> Path:
    """Build a random CSM and `save_pretrained` it into `directory` (the hub repository's layout)."""
    build_random_csm(spec, seed).save_pretrained(directory)
    return directory


def mimi_config(spec: MimiSpec) -> dict:
    from moshi.models import loaders

    cfg = copy.deepcopy(loaders._mimi_config)
    cfg["seanet"].update(dimension=spec.seanet_dimension, n_filters=spec.seanet_filters)
    cfg["quantizer"].update(
        dimension=spec.quantizer_dimension,
        n_q=spec.num_codebooks,
        bins=spec.bins,
        input_dimension=spec.seanet_dimension,
        output_dimension=spec.seanet_dimension,
    )
    cfg["transformer"].update(
        d_model=spec.transformer_dim,
        num_heads=spec.transformer_heads,
        num_layers=spec.transformer_layers,
        dim_feedforward=spec.transformer_ff,
        input_dimension=spec.seanet_dimension,
        output_dimensions=[spec.seanet_dimension],
    )
    return cfg


def build_random_mimi(spec: MimiSpec, seed: int = 0):
    """moshi's Mimi with random weights at a reduced size (eval mode, CPU)."""
    from moshi.models import loaders

    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, mimi_config=mimi_config(spec), device="cpu", num_codebooks=spec.num_codebooks)
    return mimi.eval()
