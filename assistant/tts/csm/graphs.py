"""CUDA graphs over the per-frame work: the backbone step, and codebook 0 plus all depth-decoder steps with sampling.

Between two frames a GPU would otherwise wait on hundreds of small kernel launches from Python; replaying a
captured graph launches them all at once. The captured code is `CSMModel.decode_frame` and
`CSMModel.backbone_step` unchanged, with the backbone attending over its whole cache masked by the position
tensor (`static`), so their shapes never change; tests run that same form eagerly on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from .model import CSMModel
from .sampling import TopKSampler


class CUDAGraphFrames:
    """`prefill`, `decode_frame` and `append_frame` of a CSMModel on CUDA, the last two replayed from graphs.

    One decode graph is captured per sampling mode (greedy, or each top-k with its generator); the
    temperature lives in a device tensor, so changing it needs no new capture.
    """

    def __init__(self, model: CSMModel):
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {model.device}")
        model.static = True
        self.model = model
        self.hidden = torch.zeros(1, model.config.backbone.dim, dtype=model.dtype, device=model.device)
        self.codes = torch.zeros(model.config.num_codebooks, dtype=torch.long, device=model.device)
        self.temperature = torch.ones((), device=model.device)
        self.pool = torch.cuda.graph_pool_handle()
        self.decoders: dict[tuple[int, torch.Generator | None], torch.cuda.CUDAGraph] = {}
        # The warm-up runs write scratch frames into the cache; every prefill starts afresh anyway.
        self.append = self._capture(lambda: self.hidden.copy_(model.backbone_step(self.codes, None)))

    def warm_up(self, *samplers: TopKSampler) -> None:
        """Capture the decode graphs of these sampling modes now rather than on their first frame."""
        for sampler in samplers:
            self._decoder(sampler)

    def prefill(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.prefill(tokens, mask)

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
            self.decoders[key] = self._capture(run, generator)
            if generator is not None:  # warm-up and capture drew numbers: leave the seeded stream as it was
                generator.set_state(state)
        return self.decoders[key]

    def _capture(self, run: Callable[[], object], generator: torch.Generator | None = None) -> torch.cuda.CUDAGraph:
        """Run `run` eagerly on a side stream (lazy initialisation must not happen during capture), then capture it."""
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
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            run()
        return graph
