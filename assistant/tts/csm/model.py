"""A compact CSM: Llama-3.2-style backbone and depth decoder with static KV caches.

Weights use this module's own names (see `weights.py`), every matrix `[out, in]`: per stack `layers.N.{qkv, o,
gate_up, down}` (q/k/v and gate/up fused, q/k in rotate-half RoPE order, the RMSNorm weight before each of qkv
and gate_up folded into its columns with sqrt(dim), q scaled by 1/sqrt(head_dim)) and, for the backbone, `norm`;
`audio_head` `[num_codebooks - 1, vocab, decoder_dim]` with the decoder's final norm folded in the same way.
Folding leaves each norm a single scale per row, applied to the matmul's output: on a CPU the ops between
matmuls, not the arithmetic, are what cost (see `hugepages.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import CSMConfig, TransformerConfig

Sampler = Callable[[torch.Tensor], torch.Tensor]
"""Maps logits `[1, vocab]` to one code, a LongTensor `[1]` on the model's device."""


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


def rms_scale(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row's 1 / (RMS * sqrt(dim)) (float32, `[M, 1]`): RMSNorm without its weight and sqrt(dim), which the
    next matrix holds (a sum is one op where a mean is three)."""
    x = x if x.dtype == torch.float32 else x.float()
    return x.pow(2).sum(-1, keepdim=True).add_(x.shape[-1] * eps).rsqrt_()


@dataclass
class Layer:
    """A layer's matrices as `[in, out]` views, ready for `torch.mm`."""

    qkv: torch.Tensor
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


class Stack:
    """One transformer stack with a preallocated KV cache of `max_len` positions."""

    def __init__(self, cfg: TransformerConfig, weights: dict[str, torch.Tensor], max_len: int):
        self.cfg = cfg
        names = ("qkv", "o", "gate_up", "down")
        self.layers = [Layer(*(weights[f"layers.{i}.{n}"].t() for n in names)) for i in range(cfg.layers)]
        ref = self.layers[0].qkv
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), rope_inv_freq(cfg))
        angles = torch.cat([angles, angles], dim=-1)
        half = cfg.head_dim // 2
        # [max_len, 2, hd]: cos and sin, looked up together. rotate_half(x) * sin == roll(x, half) * [-sin_lo,
        # sin_hi]: one roll instead of slices and a cat.
        sin = torch.cat([-angles[:, :half].sin(), angles[:, half:].sin()], dim=-1)
        self.rope = torch.stack([angles.cos(), sin], dim=1).to(ref)
        shape = (cfg.layers, cfg.kv_heads, max_len, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.v_cache = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        self.positions = torch.arange(max_len, device=ref.device)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, pos: torch.Tensor, length: int | None) -> torch.Tensor:
        """Run rows `x [M, dim]` at positions `pos [M]`, writing their keys and values into the cache.

        With `length`, the rows are the last M of the first `length` slots and attend to those (causal among
        themselves). With None they attend to every slot, masked by `pos`: the shapes then do not depend on the
        position, which is what a CUDA graph replayed at every position needs. Returns the rows before the final norm.
        """
        c = self.cfg
        m, nq, nkv, hd, eps = x.shape[0], c.heads, c.kv_heads, c.head_dim, c.norm_eps
        rope = self.rope.index_select(0, pos)
        cos, sin = rope[:, :1], rope[:, 1:]
        slots = slice(None) if length is None else slice(length)
        masked = length is None or m > 1
        visible = self.positions[slots] <= pos[:, None] if masked else None
        for i, layer in enumerate(self.layers):
            qkv = torch.mm(x, layer.qkv).mul_(rms_scale(x, eps))
            qk = qkv[:, : (nq + nkv) * hd].view(m, nq + nkv, hd)
            qk = torch.addcmul(qk * cos, qk.roll(hd // 2, -1), sin)
            v = qkv[:, (nq + nkv) * hd :].view(m, nkv, hd)
            k_cache, v_cache = self.k_cache[i], self.v_cache[i]
            k_cache.index_copy_(1, pos, qk[:, nq:].transpose(0, 1))
            v_cache.index_copy_(1, pos, v.transpose(0, 1))
            attn = self._attend(qk[:, :nq], k_cache[:, slots], v_cache[:, slots], visible)
            x = torch.addmm(x, attn, layer.o)
            gate_up = torch.mm(x, layer.gate_up).mul_(rms_scale(x, eps))
            half = gate_up.shape[1] // 2
            x = torch.addmm(x, F.silu(gate_up[:, :half]).mul_(gate_up[:, half:]), layer.down)
        return x

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
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        return torch.bmm(probs if probs.dtype == v.dtype else probs.to(v.dtype), v).view(1, nq * hd)


class CSMModel:
    """Backbone + depth decoder; `prefill` a prompt, then alternate `decode_frame` and `append_frame`.

    With `static` set, `append_frame` attends over the whole backbone cache, masked by the position held in the
    device tensor `pos` (see `Stack.forward`): the form `CUDAGraphFrames` captures, run eagerly.
    """

    def __init__(self, config: CSMConfig, weights: dict[str, torch.Tensor]):
        self.config = config
        k = config.num_codebooks
        self.text_embeddings = weights["text_embeddings"]
        self.audio_embeddings = weights["audio_embeddings"]
        self.backbone_norm = weights["backbone.norm"]
        # [in, out] views for torch.mm
        self.codebook0_head = weights["codebook0_head"].t()
        self.projection = weights["projection"].t()
        # Codes reach the depth decoder only through the projection of their embeddings: project the rows of
        # codebooks 0..K-2 once here, so each decoder step looks its input up instead of running a matmul.
        self.decoder_inputs = torch.mm(self.audio_embeddings[: (k - 1) * config.audio_vocab_size], self.projection)
        self.audio_head = weights["audio_head"].transpose(1, 2)
        sub = lambda prefix: {n[len(prefix) :]: w for n, w in weights.items() if n.startswith(prefix)}  # noqa: E731
        self.backbone = Stack(config.backbone, sub("backbone."), config.max_seq_len)
        self.decoder = Stack(config.decoder, sub("decoder."), k)
        device = self.projection.device
        self.offsets = torch.arange(k, device=device) * config.audio_vocab_size
        self.position = 0  # the backbone position the next frame takes
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # the same, on the device
        self.static = False

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
        out = self.backbone.forward(embeds, self.backbone.positions[:n], n)
        self.position = n
        self.pos.fill_(n)
        return self._final_norm(out[-1:])

    def claim_position(self) -> int:
        """Take the backbone position for the next frame; returns the number of positions then in use."""
        if self.position >= self.config.max_seq_len:
            raise ValueError("the backbone's KV cache is full")
        self.position += 1
        return self.position

    def append_frame(self, codes: torch.Tensor) -> torch.Tensor:
        """Feed a generated frame `[K]` back into the backbone; returns the new last hidden state."""
        length = self.claim_position()
        return self.backbone_step(codes, None if self.static else length)

    def backbone_step(self, codes: torch.Tensor, length: int | None) -> torch.Tensor:
        """The tensor work of `append_frame`, at the position `pos`, which it advances on the device."""
        x = F.embedding(codes + self.offsets, self.audio_embeddings).sum(0, keepdim=True)
        out = self.backbone.forward(x, self.pos, length)
        self.pos += 1
        return self._final_norm(out)

    def decode_frame(self, hidden: torch.Tensor, sample: Sampler) -> torch.Tensor:
        """Predict one frame `[K]` from the backbone's last hidden state `[1, dim]`: codebook 0, then the depth decoder.

        Every shape here is fixed, so a CUDA graph can capture it as it is.
        """
        k, vocab, dec = self.config.num_codebooks, self.config.audio_vocab_size, self.decoder
        code = sample(torch.mm(hidden, self.codebook0_head))
        codes = [code]
        x = torch.cat([torch.mm(hidden, self.projection), F.embedding(code, self.decoder_inputs)])
        out = dec.forward(x, dec.positions[:2], 2)
        for i in range(1, k):
            last = out[-1:]
            code = sample(torch.mm(last, self.audio_head[i - 1]).mul_(rms_scale(last, dec.cfg.norm_eps)))
            codes.append(code)
            if i + 1 < k:
                x = F.embedding(code + i * vocab, self.decoder_inputs)
                out = dec.forward(x, dec.positions[i + 1 : i + 2], i + 2)
        return torch.cat(codes)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.config.backbone.dim,), self.backbone_norm, self.config.backbone.norm_eps)
