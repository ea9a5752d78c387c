"""CSM's depth decoder, run one position at a time into buffers made once.

Its positions are always 0..K-1 (the projected backbone state, then one per code), so everything that depends on
the position is made at load: each position's RoPE rotation as a `[head_dim, head_dim]` matrix, and each step's
views of the per-layer history of q, k and v. A layer's step is then 16 ops, with no views to make and one
allocation (softmax's output), against ~40 through `Stack.forward`. On a CPU those ops, not the arithmetic,
are what cost between the matmuls: each runs cache-cold after the audio head's matmul has streamed through.

There is no cache to reset between frames: step p writes row p of the history before reading rows 0..p.
Positions 0 and 1 could share one pass over the weights as two rows; as two steps they cost csm-1b one more pass
of its decoder a frame (2.5 % of the frame's weight bytes; docs/benchmarks.md), for one code path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TransformerConfig
from .stack import load_layers, norm_weight, rope_tables


@dataclass
class StepViews:
    """What one layer's step at one position reads and writes, as views of the layer's buffers."""

    qkv: torch.Tensor  # [1, (heads + 2 kv_heads) * head_dim]: this position's q, k, v as the matmul writes them
    qk: torch.Tensor  # [heads + kv_heads, head_dim]: the same position's q and k heads, before RoPE
    rotated: torch.Tensor  # [heads + kv_heads, head_dim]: after RoPE
    q: torch.Tensor  # [kv_heads, heads / kv_heads, head_dim]
    keys: torch.Tensor  # [kv_heads, head_dim, p + 1]: positions 0..p, transposed for q @ k
    values: torch.Tensor  # [kv_heads, p + 1, head_dim]
    scores: torch.Tensor  # [kv_heads, heads / kv_heads, p + 1]


class DepthDecoder:
    """The decoder stack over `positions` positions; `step(p)` runs the row in `x` at position p, in place."""

    def __init__(self, cfg: TransformerConfig, weights: dict[str, torch.Tensor], positions: int):
        self.layers = load_layers(cfg, weights)
        ref = self.layers[0].qkv
        new = lambda *shape, dtype=ref.dtype: torch.zeros(shape, dtype=dtype, device=ref.device)  # noqa: E731
        nq, nkv, hd = cfg.heads, cfg.kv_heads, cfg.head_dim
        # rotate_half(x) * sin + x * cos == x @ R, R holding cos on its diagonal and +-sin half a head away
        cos, sin = rope_tables(cfg, positions).unbind(1)
        shift = torch.arange(hd).roll(hd // 2)
        rotation = torch.diag_embed(cos)
        rotation[:, shift, torch.arange(hd)] += sin
        self.rotations = rotation.to(ref)  # [positions, hd, hd]

        self.x = new(1, cfg.dim)  # the row being run; the residual stream is updated in it
        self.normed = new(1, cfg.dim)
        self.norm = new(1, 1, dtype=torch.float32)
        self.eps = torch.tensor((cfg.dim * cfg.norm_eps) ** 0.5, device=ref.device)
        self.eps_value, self.norm_weight = cfg.norm_eps, norm_weight(cfg.dim, ref)
        self.attn = new(nkv, nq // nkv, hd)
        self.attn_row = self.attn.view(1, nq * hd)
        self.gate_up = new(1, 2 * cfg.intermediate)
        self.gate, self.up = self.gate_up.split(cfg.intermediate, dim=1)
        self.views: list[list[StepViews]] = [[] for _ in range(positions)]
        for _ in self.layers:
            history = new(positions, (nq + 2 * nkv) * hd)
            rotated = new(positions, nq + nkv, hd)
            keys = rotated[:, nq:].permute(1, 2, 0)  # [nkv, hd, positions]
            values = history[:, (nq + nkv) * hd :].view(positions, nkv, hd).transpose(0, 1)
            for p in range(positions):
                self.views[p].append(
                    StepViews(
                        qkv=history[p : p + 1],
                        qk=history[p, : (nq + nkv) * hd].view(nq + nkv, hd),
                        rotated=rotated[p],
                        q=rotated[p, :nq].view(nkv, nq // nkv, hd),
                        keys=keys[..., : p + 1],
                        values=values[:, : p + 1],
                        scores=new(nkv, nq // nkv, p + 1),
                    )
                )

    def step(self, p: int) -> torch.Tensor:
        """Run the row in `x` at position p through every layer; returns `x`, now the layer stack's output."""
        x = self.x
        for layer, at in zip(self.layers, self.views[p]):
            torch.mm(self.normalized(), layer.qkv, out=at.qkv)
            torch.mm(at.qk, self.rotations[p], out=at.rotated)
            torch.bmm(at.q, at.keys, out=at.scores)
            probs = torch.softmax(at.scores, dim=-1)  # float accumulation inside, in bfloat16 too
            torch.bmm(probs, at.values, out=self.attn)
            x.addmm_(self.attn_row, layer.o)
            torch.mm(self.normalized(), layer.gate_up, out=self.gate_up)
            x.addmm_(F.silu(self.gate, inplace=True).mul_(self.up), layer.down)
        return x

    def normalized(self) -> torch.Tensor:
        """`x` over its RMS times sqrt(dim) (the matrix after it holds the norm's weight and sqrt(dim)): on CUDA
        one fused RMSNorm kernel; elsewhere 3 ops, sqrt(sum(x^2) + dim * eps) being the hypotenuse of the norm and
        sqrt(dim * eps)."""
        if self.norm_weight is not None:
            return F.rms_norm(self.x, self.norm_weight.shape, self.norm_weight, self.eps_value)
        norm = torch.linalg.vector_norm(self.x, dim=-1, keepdim=True, dtype=torch.float32, out=self.norm)
        return torch.div(self.x, torch.hypot(norm, self.eps, out=norm), out=self.normed)
