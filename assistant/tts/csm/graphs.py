"""CUDA graphs over the per-frame work (the backbone step; codebook 0 plus all depth-decoder steps with sampling)
and over the prompt's prefill, one graph per bucket of row counts.

Between two frames a GPU would otherwise wait on hundreds of small kernel launches from Python; replaying a
captured graph launches them all at once. The captured code is `CSMModel.decode_codes`, `CSMModel.backbone_step`
and `CSMModel.prefill_rows` unchanged, with the backbone attending over its whole cache masked by the position
tensor (`static`), so their shapes never change; tests run that same form eagerly on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from .model import CSMModel
from .sampling import TopKSampler

PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)
"""Row counts a prefill graph is captured for: a prompt's new rows are padded up to the next one."""


class CUDAGraphFrames:
    """`prefill`, `decode_frame` and `append_frame` of a CSMModel on CUDA, replayed from graphs.

    One decode graph is captured per sampling mode (greedy, or each top-k with its generator); the
    temperature lives in a device tensor, so changing it needs no new capture. A prefill pads its rows with empty
    ones (all columns masked) up to its bucket; their keys and values land in positions past the prompt, which
    nothing reads before a frame overwrites them.
    """

    def __init__(self, model: CSMModel):
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {model.device}")
        model.static = True
        self.model = model
        device, width = model.device, model.config.num_codebooks + 1
        self.hidden = torch.zeros(1, model.config.backbone.dim, dtype=model.dtype, device=device)
        self.codes = torch.zeros(model.config.num_codebooks, dtype=torch.long, device=device)
        self.temperature = torch.ones((), device=device)
        self.pool = torch.cuda.graph_pool_handle()
        self.decoders: dict[tuple[int, torch.Generator | None], torch.cuda.CUDAGraph] = {}
        # The capture runs write scratch rows into the cache; the engine prefills afresh after them.
        self.append = capture(lambda: self.hidden.copy_(model.backbone_step(self.codes, None)), self.pool)
        buckets = [b for b in PREFILL_BUCKETS if b <= model.config.max_seq_len]
        self.rows = torch.zeros(buckets[-1], width, dtype=torch.long, device=device)
        self.row_mask = torch.zeros(buckets[-1], width, dtype=torch.bool, device=device)
        self.row_pos = torch.zeros(buckets[-1], dtype=torch.long, device=device)
        self.prefills: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # Largest first, so the smaller ones reuse its memory in the pool. Graphs sharing a pool may overwrite each
        # other's outputs; each output here is consumed (copied into `hidden` or read) before another graph replays.
        for bucket in reversed(buckets):
            out: list[torch.Tensor] = []

            def run(b: int = bucket, out: list[torch.Tensor] = out) -> None:
                out.append(model.prefill_rows(self.rows[:b], self.row_mask[:b], self.row_pos[:b], None))

            graph = capture(run, self.pool)
            self.prefills[bucket] = (graph, out[-1])

    def warm_up(self, *samplers: TopKSampler) -> None:
        """Capture the decode graphs of these sampling modes now rather than on their first frame."""
        for sampler in samplers:
            self._decoder(sampler)

    def prefill(self, tokens: torch.Tensor, mask: torch.Tensor, start: int = 0) -> torch.Tensor:
        n, model = tokens.shape[0], self.model
        bucket = next((b for b in sorted(self.prefills) if b >= n and start + b <= model.config.max_seq_len), None)
        if bucket is None:  # near the end of the window: run it as it is
            return model.prefill(tokens, mask, start)
        graph, out = self.prefills[bucket]
        self.rows[:n].copy_(tokens, non_blocking=True)
        self.row_mask[:n].copy_(mask, non_blocking=True)
        self.rows[n:bucket].zero_()
        self.row_mask[n:bucket].zero_()
        torch.arange(start, start + bucket, out=self.row_pos[:bucket])
        graph.replay()
        model.position = start + n
        model.pos.fill_(start + n)
        return out[n - 1 : n]

    def decode_frame(self, hidden: torch.Tensor, sampler: TopKSampler) -> torch.Tensor:
        graph = self._decoder(sampler)
        if not sampler.greedy:
            self.temperature.fill_(sampler.temperature)
        if hidden is not self.hidden:
            self.hidden.copy_(hidden)
        graph.replay()
        return self.codes.clone()

    def append_frame(self, codes: torch.Tensor) -> torch.Tensor:
        self.model.claim_position()
        self.codes.copy_(codes)
        self.append.replay()
        return self.hidden

    def _decoder(self, sampler: TopKSampler) -> torch.cuda.CUDAGraph:
        key = (0 if sampler.greedy else sampler.topk, sampler.generator)
        if key not in self.decoders:
            captured = sampler if sampler.greedy else replace(sampler, temperature=self.temperature)
            generator = sampler.generator
            state = generator.get_state() if generator is not None else None
            run = lambda: self.codes.copy_(self.model.decode_frame(self.hidden, captured))  # noqa: E731
            self.decoders[key] = capture(run, self.pool, generator)
            if generator is not None and state is not None:  # warm-up and capture drew numbers: rewind the stream
                generator.set_state(state)
        return self.decoders[key]


def capture(
    run: Callable[[], object], pool: torch.cuda._POOL_HANDLE, generator: torch.Generator | None = None
) -> torch.cuda.CUDAGraph:
    """Run `run` eagerly on a side stream (lazy initialisation must not happen during capture), then capture it
    into a graph drawing on `pool`, with `generator`'s state registered when it is a CUDA one."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    if generator is not None and generator.device.type == "cuda":
        graph.register_generator_state(generator)
    # thread_local: other threads (ASR, a local LLM) may keep using the GPU while this one captures.
    with torch.inference_mode(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        run()
    return graph
