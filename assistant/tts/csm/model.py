"""A compact CSM: Llama-3.2-style backbone and depth decoder with static KV caches.

Weights use this module's own names (see `weights.py`): per stack `layers.N.{attn_norm, qkv, o, mlp_norm,
gate_up, down}` and `norm`, with q/k/v and gate/up fused into one matmul each and q/k in rotate-half
RoPE order; `audio_head` is stored as `[num_codebooks - 1, vocab, decoder_dim]` for `F.linear`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import CSMConfig, TransformerConfig

Sampler = Callable[[torch.Tensor], torch.Tensor]
"""Maps logits `[vocab]` to one code, a LongTensor `[1]` on the model's device."""


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


@dataclass
class Layer:
    attn_norm: torch.Tensor
    qkv: torch.Tensor
    o: torch.Tensor
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class Stack:
    """One transformer stack with a preallocated KV cache of `max_len` positions."""

    def __init__(self, cfg: TransformerConfig, weights: dict[str, torch.Tensor], max_len: int):
        self.cfg = cfg
        names = ("attn_norm", "qkv", "o", "mlp_norm", "gate_up", "down")
        self.layers = [Layer(*(weights[f"layers.{i}.{n}"] for n in names)) for i in range(cfg.layers)]
        self.norm = weights["norm"]
        ref = self.norm
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), rope_inv_freq(cfg))
        angles = torch.cat([angles, angles], dim=-1)
        half = cfg.head_dim // 2
        self.cos = angles.cos().to(ref)
        # rotate_half(x) * sin == roll(x, half) * [-sin_lo, sin_hi]: one roll instead of slices and a cat.
        self.sin = torch.cat([-angles[:, :half].sin(), angles[:, half:].sin()], dim=-1).to(ref)
        shape = (cfg.layers, cfg.kv_heads, max_len, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.v_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.positions = torch.arange(max_len, device=ref.device)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, pos: torch.Tensor, length: int, masked: bool) -> torch.Tensor:
        """Run rows `x [M, dim]` at positions `pos [M]`, attending to the first `length` cache slots.

        `masked` applies the causal mask (needed when M > 1 or when `length` exceeds the last position);
        a single row at position `length - 1` needs none. Returns the rows before the final norm.
        """
        c = self.cfg
        m, nq, nkv, hd = x.shape[0], c.heads, c.kv_heads, c.head_dim
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
        mask = (self.positions[:length] <= pos[:, None]) if masked else None
        for i, layer in enumerate(self.layers):
            h = F.rms_norm(x, (c.dim,), layer.attn_norm, c.norm_eps)
            qkv = F.linear(h, layer.qkv)
            qk = qkv[:, : (nq + nkv) * hd].view(m, nq + nkv, hd)
            qk = qk * cos + qk.roll(hd // 2, -1) * sin
            v = qkv[:, (nq + nkv) * hd :].view(m, nkv, hd)
            k_cache, v_cache = self.k_cache[i], self.v_cache[i]
            k_cache.index_copy_(1, pos, qk[:, nq:].transpose(0, 1))
            v_cache.index_copy_(1, pos, v.transpose(0, 1))
            attn = F.scaled_dot_product_attention(
                qk[:, :nq].transpose(0, 1).unsqueeze(0),
                k_cache[:, :length].unsqueeze(0),
                v_cache[:, :length].unsqueeze(0),
                attn_mask=mask,
                enable_gqa=nq != nkv,
            )
            x = x + F.linear(attn[0].transpose(0, 1).reshape(m, nq * hd), layer.o)
            h = F.rms_norm(x, (c.dim,), layer.mlp_norm, c.norm_eps)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(F.silu(gate) * up, layer.down)
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.cfg.dim,), self.norm, self.cfg.norm_eps)


class CSMModel:
    """Backbone + depth decoder; `prefill` a prompt, then alternate `decode_frame` and `append_frame`."""

    def __init__(self, config: CSMConfig, weights: dict[str, torch.Tensor]):
        self.config = config
        k = config.num_codebooks
        self.text_embeddings = weights["text_embeddings"]
        self.audio_embeddings = weights["audio_embeddings"]
        self.codebook0_head = weights["codebook0_head"]
        self.projection = weights["projection"]
        self.audio_head = weights["audio_head"]
        sub = lambda prefix: {n[len(prefix) :]: w for n, w in weights.items() if n.startswith(prefix)}  # noqa: E731
        self.backbone = Stack(config.backbone, sub("backbone."), config.max_seq_len)
        self.decoder = Stack(config.decoder, sub("decoder."), k)
        device = self.projection.device
        self.offsets = torch.arange(k, device=device) * config.audio_vocab_size
        self.position = 0

    @property
    def device(self) -> torch.device:
        return self.projection.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projection.dtype

    def embed_rows(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Embed prompt rows `[T, K+1]` (K audio codes + 1 text token) as the sum of the unmasked columns."""
        k = self.config.num_codebooks
        audio = F.embedding(tokens[:, :k] + self.offsets, self.audio_embeddings)
        audio = (audio * mask[:, :k, None].to(audio.dtype)).sum(1)
        text = F.embedding(tokens[:, k], self.text_embeddings) * mask[:, k, None].to(audio.dtype)
        return audio + text

    def prefill(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Start a new sequence from prompt rows; returns the backbone's last hidden state `[dim]`."""
        embeds = self.embed_rows(tokens.to(self.device), mask.to(self.device))
        n = embeds.shape[0]
        if n > self.config.max_seq_len:
            raise ValueError(f"prompt of {n} positions exceeds the model's {self.config.max_seq_len}")
        pos = self.backbone.positions[:n]
        out = self.backbone.forward(embeds, pos, n, masked=True)
        self.position = n
        return self.backbone.final_norm(out[-1])

    def append_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """Feed a generated frame `[K]` back into the backbone; returns the new last hidden state."""
        if self.position >= self.config.max_seq_len:
            raise ValueError("the backbone's KV cache is full")
        x = F.embedding(codes + self.offsets, self.audio_embeddings).sum(0, keepdim=True)
        pos = self.backbone.positions[self.position : self.position + 1]
        self.position += 1
        out = self.backbone.forward(x, pos, self.position, masked=False)
        return self.backbone.final_norm(out[0])

    def decode_frame(self, hidden: torch.Tensor, sample: Sampler) -> torch.Tensor:
        """Predict one frame `[K]` from the backbone's last hidden state: codebook 0, then the depth decoder."""
        k, vocab, dec = self.config.num_codebooks, self.config.audio_vocab_size, self.decoder
        codes = torch.empty(k, dtype=torch.long, device=self.device)
        code = sample(F.linear(hidden, self.codebook0_head))
        codes[0:1] = code
        x = F.linear(torch.cat([hidden[None], F.embedding(code, self.audio_embeddings)]), self.projection)
        out = dec.forward(x, dec.positions[:2], 2, masked=True)
        for i in range(1, k):
            code = sample(F.linear(dec.final_norm(out[-1]), self.audio_head[i - 1]))
            codes[i : i + 1] = code
            if i + 1 < k:
                x = F.linear(F.embedding(code + i * vocab, self.audio_embeddings), self.projection)
                out = dec.forward(x, dec.positions[i + 1 : i + 2], i + 2, masked=False)
        return codes
