"""One Llama-3.2-style transformer stack with a preallocated KV cache: CSM's backbone.

Its weights are named and folded as `model.py` describes; each norm is left a single scale per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TransformerConfig


def rope_inv_freq(cfg: TransformerConfig) -> torch.Tensor:
    """Inverse frequencies of RoPE, with llama3 scaling when configured (float32)."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.int64).float() / cfg.head_dim))
    if not cfg.rope_scaling:
        return inv
    s = dict(cfg.rope_scaling)
    factor, low, high, old = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(cfg: TransformerConfig, length: int) -> torch.Tensor:
    """`[length, 2, head_dim]` (float32): each position's cos, and its sin signed so that rotate_half(x) * sin ==
    roll(x, head_dim / 2) * [-sin_lo, sin_hi] (one roll instead of slices and a cat)."""
    angles = torch.outer(torch.arange(length, dtype=torch.float32), rope_inv_freq(cfg))
    sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
    return torch.stack([torch.cat([angles, angles], dim=-1).cos(), sin], dim=1)


def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row's 1 / (RMS * sqrt(dim)) (float32, `[M, 1]`): RMSNorm without its weight and sqrt(dim), which the
    next matrix holds (a sum is one op where a mean is three)."""
    x = x if x.dtype == torch.float32 else x.float()
    return x.pow(2).sum(-1, keepdim=True).add_(x.shape[-1] * eps).rsqrt_()


def norm_weight(dim: int, like: torch.Tensor) -> torch.Tensor | None:
    """On CUDA, the constant weight 1/sqrt(dim) that makes aten's fused RMSNorm (one kernel where the CPU's form
    is several) give `x / sqrt(sum(x^2) + dim * eps)`, what the folded matrices expect; None elsewhere."""
    return torch.full((dim,), dim**-0.5, dtype=like.dtype, device=like.device) if like.is_cuda else None


@dataclass
class Layer:
    """A layer's matrices as `[in, out]` views, ready for `torch.mm`."""

    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


def load_layers(cfg: TransformerConfig, weights: dict[str, torch.Tensor]) -> list[Layer]:
    names = ("qkv", "o", "gate_up", "down")
    return [Layer(*(weights[f"layers.{i}.{n}"].t() for n in names)) for i in range(cfg.layers)]


class Stack:
    """One transformer stack with a preallocated KV cache of `max_len` positions."""

    def __init__(self, cfg: TransformerConfig, weights: dict[str, torch.Tensor], max_len: int):
        self.cfg = cfg
        self.layers = load_layers(cfg, weights)
        ref = self.layers[0].qkv
        self.rope = rope_tables(cfg, max_len).to(ref)
        shape = (cfg.layers, cfg.kv_heads, max_len, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.v_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.positions = torch.arange(max_len, device=ref.device)
        self.max_len = max_len
        self.norm_weight = norm_weight(cfg.dim, ref)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, length: int | None) -> torch.Tensor:
        """Run rows `x [M, dim]` at positions `pos [M]`, writing their keys and values into the cache.

        With `length`, the rows are the last M of the first `length` slots and attend to those (causal among
        themselves). With None they attend to every slot, masked by `pos`: the shapes then do not depend on the
        position, which is what a CUDA graph replayed at every position needs. Returns the rows before the final norm.
        """
        c = self.cfg
        m, nq, nkv, hd = x.shape[0], c.heads, c.kv_heads, c.head_dim
        rope = self.rope.index_select(0, pos)
        cos, sin = rope[:, :1], rope[:, 1:]
        slots = slice(None) if length is None else slice(length)
        masked = length is None or m > 1
        visible = self.positions[slots] <= pos[:, None] if masked else None
        for i, layer in enumerate(self.layers):
            qkv = self._normed_mm(x, layer.qkv)
            qk = qkv[:, : (nq + nkv) * hd].view(m, nq + nkv, hd)
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin)
            v = qkv[:, (nq + nkv) * hd :].view(m, nkv, hd)
            k_cache, v_cache = self.k_cache[i], self.v_cache[i]
            k_cache.index_copy_(1, pos, qk[:, nq:].transpose(0, 1))
            v_cache.index_copy_(1, pos, v.transpose(0, 1))
            attn = self._attend(qk[:, :nq], k_cache[:, slots], v_cache[:, slots], visible)
            x = torch.addmm(x, attn, layer.o)
            gate_up = self._normed_mm(x, layer.gate_up)
            half = gate_up.shape[1] // 2
            x = torch.addmm(x, F.silu(gate_up[:, :half]).mul_(gate_up[:, half:]), layer.down)
        return x

    def _normed_mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """RMSNorm of `x` (weight folded into `w`), then `x @ w`: on a CPU the rows are scaled after the matmul
        (fewer ops), on CUDA normed first by one fused kernel."""
        if self.norm_weight is not None:
            return torch.mm(F.rms_norm(x, self.norm_weight.shape, self.norm_weight, self.cfg.norm_eps), w)
        return torch.mm(x, w).mul_(rms_scale(x, self.cfg.norm_eps))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor | None) -> torch.Tensor:
        """Attention of `q [M, heads, hd]` over `k, v [kv_heads, L, hd]`; returns `[M, heads * hd]`.

        One row, the per-frame case, is two batched products (a fraction of SDPA's set-up cost on a CPU);
        several rows (a prompt) go through SDPA, which never holds all their scores at once.
        """
        m, nq, hd = q.shape
        nkv = k.shape[0]
        if m > 1:
            attn = F.scaled_dot_product_attention(
                q.transpose(0, 1).unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), attn_mask=visible, scale=1.0,
                enable_gqa=nq != nkv,
            )
            return attn[0].transpose(0, 1).reshape(m, nq * hd)
        scores = torch.bmm(q.view(nkv, nq // nkv, hd), k.transpose(1, 2))
        if visible is not None:
            scores.masked_fill_(~visible, float("-inf"))
        return torch.bmm(torch.softmax(scores, dim=-1), v).view(1, nq * hd)  # float accumulation inside
