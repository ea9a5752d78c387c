"""The per-frame work of many sequences at once: CSM's backbone step and depth decoder over a batch of slots.

Each sequence lives in a slot of the backbone's KV cache (`Stack` with `slots`); the rows of a batch are slots
0..n-1, some of them idle (their rows are computed and ignored). Everything runs on fixed buffers — the frames
`codes [slots, K]`, the hidden states `hidden [slots, dim]`, each slot's position `pos [slots]` and its sampling
settings (`RowSampling`) — so that the work for n rows can be captured once as a CUDA graph and replayed
(`BatchGraphs`), and run eagerly, the same code, elsewhere.

The one-at-a-time engine keeps its own CPU-tuned depth decoder (`depth_decoder.py`); here the depth decoder is a
second `Stack` with a slot per row and K positions, written again at every frame.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from .config import CSMConfig
from .graphs import capture
from .model import CSMModel, subtree
from .sampling import RowSampling
from .stack import Stack


class BatchedFrames:
    """`prefill` a slot, then `decode(n)` (frames for rows 0..n-1 into `codes`) and `append(n)` (those frames fed
    back, the hidden states into `hidden`, each position advanced) in turn."""

    def __init__(self, config: CSMConfig, weights: dict[str, torch.Tensor], slots: int, topk_cap: int):
        self.model = model = CSMModel(config, weights, slots)
        self.slots = slots
        k, device = config.num_codebooks, model.device
        self.depth = Stack(config.decoder, subtree(weights, "decoder."), k, slots)
        self.depth_pos = [torch.full((slots,), i, dtype=torch.long, device=device) for i in range(k)]
        self.sampling = RowSampling(slots, k, topk_cap, config.codec_bins, device)
        self.hidden = torch.zeros(slots, config.backbone.dim, dtype=model.dtype, device=device)
        self.codes = torch.zeros(slots, k, dtype=torch.long, device=device)
        self.pos = torch.zeros(slots, dtype=torch.long, device=device)
        self.active = torch.zeros(slots, dtype=torch.long, device=device)  # 1 for a slot in use: how far it advances
        self.length: int | None = None  # attend over this many positions; None (all) is the captured form

    def prefill(self, slot: int, tokens: torch.Tensor, mask: torch.Tensor) -> None:
        """Run a prompt's rows `[T, K+1]` into `slot` from position 0; its next frame is decoded from the last."""
        n = tokens.shape[0]
        if n > self.model.config.max_seq_len:
            raise ValueError(f"prompt of {n} positions exceeds the model's {self.model.config.max_seq_len}")
        model = self.model
        out = model.prefill_rows(tokens.to(model.device), mask.to(model.device), model.backbone.positions[:n], n, slot)
        self.hidden[slot] = out[-1]
        self.pos[slot] = n
        self.active[slot] = 1

    def release(self, slot: int) -> None:
        """`slot` is idle: its row keeps computing, at position 0, until a prompt fills it again."""
        self.pos[slot] = 0
        self.active[slot] = 0

    def decode(self, n: int) -> None:
        """Codebook 0 from each row's hidden state, then the depth decoder at positions 0 (the projected state) to
        K-1 (each code so far, projected), each predicting the next code; into `codes[:n]`."""
        m, hidden = self.model, self.hidden[:n]
        code = self.sampling(torch.mm(hidden, m.codebook0_head), 0)
        codes = [code]
        self.depth.step(torch.mm(hidden, m.projection), self.depth_pos[0][:n])
        for i in range(1, m.config.num_codebooks):
            x = self.depth.step(F.embedding(code, m.decoder_inputs[i - 1]), self.depth_pos[i][:n])
            code = self.sampling(self.depth.normed_mm(x, m.audio_head[i - 1]), i)
            codes.append(code)
        torch.stack(codes, dim=1, out=self.codes[:n])

    def append(self, n: int) -> None:
        """Feed `codes[:n]` back into the backbone at each row's position; the new hidden states into `hidden[:n]`.
        The rows in use advance a position; idle rows stay at 0."""
        m, pos = self.model, self.pos[:n]
        self.hidden[:n] = m.final_norm(m.backbone.step(m.embed_frames(self.codes[:n]), pos, self.length))
        pos += self.active[:n]


BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
"""Row counts a CUDA graph is captured for: a batch runs the graph of the next bucket up."""


class BatchGraphs:
    """`decode(n)` and `append(n)` of a BatchedFrames on CUDA, replayed from one graph per bucket of rows.

    The rows a bucket adds to the batch are idle slots: they compute at position 0 of their own slots, which a
    prompt overwrites before they are read. Sampling noise is drawn before each replay (`RowSampling.draw`), so the
    graphs hold no random state.
    """

    def __init__(self, frames: BatchedFrames):
        if frames.model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {frames.model.device}")
        self.frames = frames
        self.pool = torch.cuda.graph_pool_handle()
        self.buckets = [b for b in BATCH_BUCKETS if b < frames.slots] + [frames.slots]
        # At load every slot is idle: the capture's runs write only position 0 of each and move none.
        self.graphs = {
            b: (capture(partial(frames.decode, b), self.pool), capture(partial(frames.append, b), self.pool))
            for b in reversed(self.buckets)  # largest first: the smaller ones reuse its memory in the pool
        }

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def decode(self, n: int) -> None:
        self.graphs[self.bucket(n)][0].replay()

    def append(self, n: int) -> None:
        self.graphs[self.bucket(n)][1].replay()
