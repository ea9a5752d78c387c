"""Model dimensions of a CSM checkpoint, read from either checkpoint layout's config.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LLAMA3_SCALING = {
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

# Sesame's original config.json names torchtune Llama-3.2 flavours instead of listing dimensions.
SESAME_FLAVORS: dict[str, dict[str, Any]] = {
    "llama-1B": dict(num_layers=16, num_heads=32, num_kv_heads=8, embed_dim=2048, intermediate_dim=8192),
    "llama-100M": dict(num_layers=4, num_heads=8, num_kv_heads=2, embed_dim=1024, intermediate_dim=8192),
}


@dataclass(frozen=True)
class TransformerConfig:
    """One Llama-3.2-style stack (RMSNorm, GQA, SwiGLU, llama3-scaled RoPE)."""

    dim: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    head_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    rope_scaling: tuple[tuple[str, float], ...] | None = tuple(LLAMA3_SCALING.items())


@dataclass(frozen=True)
class CSMConfig:
    backbone: TransformerConfig
    decoder: TransformerConfig
    num_codebooks: int = 32
    audio_vocab_size: int = 2051
    text_vocab_size: int = 128_256
    max_seq_len: int = 2048

    @property
    def codec_bins(self) -> int:
        """Codes a codec can decode; the audio vocabulary's last three ids are special."""
        return self.audio_vocab_size - 3

    @classmethod
    def from_transformers(cls, cfg: dict[str, Any]) -> CSMConfig:
        """From `CsmConfig.to_dict()` (the config.json of `save_pretrained` / sesame/csm-1b)."""
        dec = cfg["depth_decoder_config"]
        for part in (cfg, dec):
            if part.get("attention_bias") or part.get("mlp_bias"):
                raise ValueError("CSM checkpoints with attention or MLP biases are not supported")
        return cls(
            backbone=_stack_from_transformers(cfg),
            decoder=_stack_from_transformers(dec),
            num_codebooks=cfg["num_codebooks"],
            audio_vocab_size=cfg["vocab_size"],
            text_vocab_size=cfg["text_vocab_size"],
            max_seq_len=cfg.get("max_position_embeddings", 2048),
        )

    @classmethod
    def from_sesame(cls, cfg: dict[str, Any]) -> CSMConfig:
        """From Sesame's `ModelArgs` config.json; a flavour is a known name or a dict of torchtune arguments."""
        return cls(
            backbone=_stack_from_flavor(cfg["backbone_flavor"]),
            decoder=_stack_from_flavor(cfg["decoder_flavor"]),
            num_codebooks=cfg["audio_num_codebooks"],
            audio_vocab_size=cfg["audio_vocab_size"],
            text_vocab_size=cfg["text_vocab_size"],
            max_seq_len=cfg.get("max_seq_len", 2048),
        )

    def to_sesame(self) -> dict[str, Any]:
        """Sesame's config.json for these dimensions (flavours written out as dicts)."""
        return {
            "backbone_flavor": _flavor_dict(self.backbone),
            "decoder_flavor": _flavor_dict(self.decoder),
            "text_vocab_size": self.text_vocab_size,
            "audio_vocab_size": self.audio_vocab_size,
            "audio_num_codebooks": self.num_codebooks,
            "max_seq_len": self.max_seq_len,
        }


def _scaling(cfg: dict[str, Any] | None) -> tuple[tuple[str, float], ...] | None:
    if not cfg:
        return None
    kind = cfg.get("rope_type", cfg.get("type"))
    if kind not in ("llama3", None):
        raise ValueError(f"unsupported RoPE scaling {kind!r} (only llama3)")
    return tuple((k, float(cfg[k])) for k in LLAMA3_SCALING)


def _stack_from_transformers(cfg: dict[str, Any]) -> TransformerConfig:
    heads = cfg["num_attention_heads"]
    return TransformerConfig(
        dim=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        intermediate=cfg["intermediate_size"],
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_theta=cfg.get("rope_theta", 500_000.0),
        rope_scaling=_scaling(cfg.get("rope_scaling")),
    )


def _stack_from_flavor(flavor: str | dict[str, Any]) -> TransformerConfig:
    if isinstance(flavor, str):
        if flavor not in SESAME_FLAVORS:
            raise ValueError(f"unknown Sesame flavour {flavor!r}; known: {sorted(SESAME_FLAVORS)}")
        flavor = SESAME_FLAVORS[flavor]
    scale = flavor.get("scale_factor", 32)
    return TransformerConfig(
        dim=flavor["embed_dim"],
        layers=flavor["num_layers"],
        heads=flavor["num_heads"],
        kv_heads=flavor["num_kv_heads"],
        intermediate=flavor["intermediate_dim"],
        head_dim=flavor["embed_dim"] // flavor["num_heads"],
        norm_eps=flavor.get("norm_eps", 1e-5),
        rope_theta=flavor.get("rope_base", 500_000.0),
        rope_scaling=tuple({**LLAMA3_SCALING, "factor": float(scale)}.items()) if scale else None,
    )


def _flavor_dict(stack: TransformerConfig) -> dict[str, Any]:
    scaling = dict(stack.rope_scaling or ())
    return dict(
        num_layers=stack.layers,
        num_heads=stack.heads,
        num_kv_heads=stack.kv_heads,
        embed_dim=stack.dim,
        intermediate_dim=stack.intermediate,
        norm_eps=stack.norm_eps,
        rope_base=stack.rope_theta,
        scale_factor=scaling.get("factor", 0),
    )
