"""Find, read and convert CSM checkpoints: transformers' layout and Sesame's original one.

A checkpoint is a directory (or hub repository) holding `config.json` and `*.safetensors`. The layout is
told by the config: transformers' `CsmConfig` (with `depth_decoder_config`) or Sesame's `ModelArgs`
(with `backbone_flavor`). Both are converted to the names and form `model.py` uses: each RMSNorm's weight
and the sqrt(dim) of its mean folded into the matrix after it, and the attention's 1/sqrt(head_dim) into q.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from assistant.hub import ModelNotFound, PathError, resolve_model

from .config import CSMConfig

HUB_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer.json"]


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, downloaded or read; the message says what to do."""


def resolve_checkpoint(model: str | Path) -> Path:
    """A local directory as is; otherwise a hub id, downloaded (with progress bars) into the hub cache."""
    try:
        return resolve_model(str(model), HUB_FILES, setting="csm.model")
    except ModelNotFound as error:
        raise CheckpointError(str(error)) from error


TOKENIZER_FIX = "point {setting} at a Hugging Face tokenizers file (the checkpoint's tokenizer.json)"


def check_tokenizer(path: str | Path) -> Path:
    """`path` if it may be a tokenizer.json (a file of JSON; what is in it, `load_tokenizer` finds); PathError saying
    what it is instead."""
    file = Path(path).expanduser()
    if not file.exists():
        raise PathError("tokenizer", path, "no such file or folder", TOKENIZER_FIX)
    if file.is_dir():
        inside = " (the tokenizer.json in it?)" if (file / "tokenizer.json").is_file() else ""
        raise PathError("tokenizer", path, "a folder, not a file", TOKENIZER_FIX + inside)
    with file.open("rb") as head:
        if not head.read(4096).lstrip().startswith(b"{"):
            raise PathError("tokenizer", path, "not a tokenizer.json: not JSON at all", TOKENIZER_FIX)
    return file


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer in a tokenizer.json; PathError saying what the file is instead."""
    file = check_tokenizer(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as error:  # tokenizers raises a bare Exception with serde's words
        try:
            content = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            problem = "not a tokenizer.json: not valid JSON"
        else:
            if isinstance(content, dict) and "model" in content:
                problem = f"a tokenizer.json that tokenizers cannot read ({str(error).splitlines()[0][:100]})"
            else:
                problem = "JSON, but not a tokenizer.json (no tokenizer 'model' in it)"
        raise PathError("tokenizer", path, problem, TOKENIZER_FIX) from error


def read_checkpoint(directory: Path) -> tuple[CSMConfig, dict[str, torch.Tensor]]:
    """Read config and weights from a checkpoint directory, converted to this engine's names (float32 or as stored)."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"no config.json in {directory}: not a CSM checkpoint directory")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path} is not valid JSON ({e}); re-download the checkpoint") from e
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors weights in {directory} (expected model.safetensors)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            tensors.update(load_file(file))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file} is not a readable safetensors file ({e}); re-download it") from e
    return convert_checkpoint(raw, tensors, directory)


def convert_checkpoint(
    raw: dict, tensors: dict[str, torch.Tensor], where: Path | str
) -> tuple[CSMConfig, dict[str, torch.Tensor]]:
    """A checkpoint's config (as in its config.json) and tensors, in either layout, converted to this engine's
    names; `where` names their source in errors."""
    if "depth_decoder_config" in raw:
        config = CSMConfig.from_transformers(raw)
        if raw.get("tie_codebooks_embeddings") is False:
            raise CheckpointError("checkpoints with untied decoder codebook embeddings are not supported")
        weights = _from_layout(tensors, config, TRANSFORMERS_NAMES, interleaved=False)
    elif "backbone_flavor" in raw:
        config = CSMConfig.from_sesame(raw)
        weights = _from_layout(tensors, config, SESAME_NAMES, interleaved=True)
    else:
        raise CheckpointError(f"the config of {where} is neither a transformers CsmConfig nor Sesame's ModelArgs")
    _check_shapes(weights, config, where)
    return config, weights


# Names in each layout: top-level weights, then per-layer weights relative to a stack's layer prefix.
TRANSFORMERS_NAMES: dict[str, str | tuple[str, ...]] = {
    "text_embeddings": "embed_text_tokens.weight",
    # Tied to the depth decoder's embeddings: save_pretrained may keep either name.
    "audio_embeddings": (
        "backbone_model.embed_tokens.embed_audio_tokens.weight",
        "depth_decoder.model.embed_tokens.weight",
    ),
    "codebook0_head": "lm_head.weight",
    "projection": "depth_decoder.model.inputs_embeds_projector.weight",
    "audio_head": "depth_decoder.codebooks_head.weight",
    "backbone": "backbone_model.",
    "decoder": "depth_decoder.model.",
    "norm": "norm.weight",
    "attn_norm": "input_layernorm.weight",
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
}
SESAME_NAMES: dict[str, str | tuple[str, ...]] = {
    "text_embeddings": "text_embeddings.weight",
    "audio_embeddings": "audio_embeddings.weight",
    "codebook0_head": "codebook0_head.weight",
    "projection": "projection.weight",
    "audio_head": "audio_head",
    "backbone": "backbone.",
    "decoder": "decoder.",
    "norm": "norm.scale",
    "attn_norm": "sa_norm.scale",
    "q": "attn.q_proj.weight",
    "k": "attn.k_proj.weight",
    "v": "attn.v_proj.weight",
    "o": "attn.output_proj.weight",
    "mlp_norm": "mlp_norm.scale",
    "gate": "mlp.w1.weight",
    "up": "mlp.w3.weight",
    "down": "mlp.w2.weight",
}


def interleaved_to_half(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from interleaved RoPE pairs (torchtune) to rotate-half (transformers)."""
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def half_to_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of `interleaved_to_half`."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _from_layout(
    tensors: dict[str, torch.Tensor], config: CSMConfig, names: dict[str, str | tuple[str, ...]], interleaved: bool
) -> dict[str, torch.Tensor]:
    def take(*options: str) -> torch.Tensor:
        for name in options:
            if name in tensors:
                return tensors[name]
        raise CheckpointError(f"the checkpoint lacks the weight {options[0]!r}: incomplete or not a CSM checkpoint")

    def single(key: str) -> str:
        option = names[key]
        assert isinstance(option, str), key  # only top-level weights have alternative names
        return option

    def top(key: str) -> torch.Tensor:
        option = names[key]
        return take(*option) if isinstance(option, tuple) else take(option)

    out = {key: top(key) for key in ("text_embeddings", "audio_embeddings", "codebook0_head", "projection")}
    out["backbone.norm"] = take(single("backbone") + single("norm"))
    decoder_norm = take(single("decoder") + single("norm"))
    # stack.rms_scale and DepthDecoder.normalized leave each norm's weight and its sqrt(dim) to the matrix after it
    audio_head = top("audio_head") * (decoder_norm * config.decoder.dim**0.5)[:, None]
    out["audio_head"] = audio_head.transpose(1, 2).contiguous()  # [K-1, vocab, dim]
    for stack, cfg in (("backbone", config.backbone), ("decoder", config.decoder)):
        prefix = single(stack)
        for i in range(cfg.layers):
            p = f"{prefix}layers.{i}."
            q, k = take(p + single("q")), take(p + single("k"))
            if interleaved:
                q, k = interleaved_to_half(q, cfg.heads), interleaved_to_half(k, cfg.kv_heads)
            ours = f"{stack}.layers.{i}."
            qkv = torch.cat([q * cfg.head_dim**-0.5, k, take(p + single("v"))])
            out[ours + "qkv"] = qkv * (take(p + single("attn_norm")) * cfg.dim**0.5)
            out[ours + "o"] = take(p + single("o"))
            gate_up = torch.cat([take(p + single("gate")), take(p + single("up"))])
            out[ours + "gate_up"] = gate_up * (take(p + single("mlp_norm")) * cfg.dim**0.5)
            out[ours + "down"] = take(p + single("down"))
    return out


def _check_shapes(weights: dict[str, torch.Tensor], config: CSMConfig, where: Path | str) -> None:
    k, v = config.num_codebooks, config.audio_vocab_size
    b, d = config.backbone, config.decoder
    expected = {
        "text_embeddings": (config.text_vocab_size, b.dim),
        "audio_embeddings": (k * v, b.dim),
        "codebook0_head": (v, b.dim),
        "projection": (d.dim, b.dim),
        "audio_head": (k - 1, v, d.dim),
        "backbone.norm": (b.dim,),
    }
    for stack, cfg in (("backbone", b), ("decoder", d)):
        qkv = (cfg.heads + 2 * cfg.kv_heads) * cfg.head_dim
        expected |= {
            f"{stack}.layers.0.qkv": (qkv, cfg.dim),
            f"{stack}.layers.0.gate_up": (2 * cfg.intermediate, cfg.dim),
        }
        expected[f"{stack}.layers.0.down"] = (cfg.dim, cfg.intermediate)
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(
                f"weight {name} in {where} has shape {tuple(weights[name].shape)}, the config says {shape}"
            )
