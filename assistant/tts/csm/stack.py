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
    factor, low, high, old = (
        s["factor"],
        s["low_freq_factor"],
        s["high_freq_factor"],
        s["original_max_position_embeddings"],
    )
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
    """One transformer stack with a preallocated KV cache of `max_len` positions for each of `slots` sequences."""

    def __init__(self, cfg: TransformerConfig, weights: dict[str, torch.Tensor], max_len: int, slots: int = 1):
        self.cfg = cfg
        self.layers = load_layers(cfg, weights)
        ref = self.layers[0].qkv
        self.rope = rope_tables(cfg, max_len).to(ref)
        shape = (cfg.layers, slots, cfg.kv_heads, max_len, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.v_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.positions = torch.arange(max_len, device=ref.device)
        self.max_len = max_len
        self.norm_weight = norm_weight(cfg.dim, ref)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, length: int | None, slot: int = 0) -> torch.Tensor:
        """Run rows `x [M, dim]` of the sequence in `slot` at positions `pos [M]`, writing their keys and values
        into its cache.

        With `length`, the rows are the last M of the first `length` slots and attend to those (causal among
        themselves). With None they attend to every slot, masked by `pos`: the shapes then do not depend on the
        position, which is what a CUDA graph replayed at every position needs. Returns the rows before the final norm.
        """
        m = x.shape[0]
        positions = slice(None) if length is None else slice(length)
        masked = length is None or m > 1
        visible = self.positions[positions] <= pos[:, None] if masked else None
        cos, sin = self._rope(pos)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, cos, sin)
            k_cache, v_cache = self.k_cache[i, slot], self.v_cache[i, slot]
            k_cache.index_copy_(1, pos, k.transpose(0, 1))
            v_cache.index_copy_(1, pos, v.transpose(0, 1))
            x = self._output(x, self._attend(q, k_cache[:, positions], v_cache[:, positions], visible), layer)
        return x

    def step(self, x: torch.Tensor, pos: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Run one row for each of the first n slots, `x [n, dim]`, row r at position `pos[r]` of slot r, each
        attending to its own slot masked by its position: n sequences advance together. With `length` (above every
        position) they attend to the first `length` positions; with None to all, so that the shapes depend on n
        alone (one CUDA graph per n). Returns the rows before the final norm."""
        n, nq, nkv, hd = x.shape[0], self.cfg.heads, self.cfg.kv_heads, self.cfg.head_dim
        rows = torch.arange(n, device=x.device)
        positions = slice(None) if length is None else slice(length)
        visible = (self.positions[positions] <= pos[:, None])[:, None, None]  # [n, 1, 1, L]
        cos, sin = self._rope(pos)
        for i, layer in enumerate(self.layers):
            q, k, v = self._qkv(x, layer, cos, sin)
            k_cache, v_cache = self.k_cache[i, :n], self.v_cache[i, :n]  # [n, kv_heads, max_len, hd]
            k_cache[rows, :, pos] = k
            v_cache[rows, :, pos] = v
            k_cache, v_cache = k_cache[:, :, positions], v_cache[:, :, positions]
            scores = torch.matmul(q.view(n, nkv, nq // nkv, hd), k_cache.transpose(2, 3))
            probs = torch.softmax(scores.masked_fill_(~visible, float("-inf")), dim=-1)
            x = self._output(x, torch.matmul(probs, v_cache).view(n, nq * hd), layer)
        return x

    def _rope(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rope = self.rope.index_select(0, pos)
        return rope[:, :1], rope[:, 1:]

    def _qkv(
        self, x: torch.Tensor, layer: Layer, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows' queries `[M, heads, hd]` and keys `[M, kv_heads, hd]`, rotated, and values `[M, kv_heads, hd]`."""
        m, nq, nkv, hd = x.shape[0], self.cfg.heads, self.cfg.kv_heads, self.cfg.head_dim
        qkv = self.normed_mm(x, layer.qkv)
        qk = qkv[:, : (nq + nkv) * hd].view(m, nq + nkv, hd)
        qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin)
        return qk[:, :nq], qk[:, nq:], qkv[:, (nq + nkv) * hd :].view(m, nkv, hd)

    def _output(self, x: torch.Tensor, attn: torch.Tensor, layer: Layer) -> torch.Tensor:
        """The residual stream after a layer's attention output `attn [M, heads * hd]` and its MLP."""
        x = torch.addmm(x, attn, layer.o)
        gate_up = self.normed_mm(x, layer.gate_up)
        half = gate_up.shape[1] // 2
        return torch.addmm(x, F.silu(gate_up[:, :half]).mul_(gate_up[:, half:]), layer.down)

    def normed_mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
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
                q.transpose(0, 1).unsqueeze(0),
                k.unsqueeze(0),
                v.unsqueeze(0),
                attn_mask=visible,
                scale=1.0,
                enable_gqa=nq != nkv,
            )
            return attn[0].transpose(0, 1).reshape(m, nq * hd)
        scores = torch.bmm(q.view(nkv, nq // nkv, hd), k.transpose(1, 2))
        if visible is not None:
            scores.masked_fill_(~visible, float("-inf"))
        return torch.bmm(torch.softmax(scores, dim=-1), v).view(1, nq * hd)  # float accumulation inside
