"""A compact CSM: the backbone (`stack.py`) and the depth decoder (`depth_decoder.py`) with their heads.

Weights use this package's own names (see `weights.py`), every matrix `[out, in]`: per stack `layers.N.{qkv, o,
gate_up, down}` (q/k/v and gate/up fused, q/k in rotate-half RoPE order, the RMSNorm weight before each of qkv
and gate_up folded into its columns with sqrt(dim), q scaled by 1/sqrt(head_dim)) and, for the backbone, `norm`;
`audio_head` `[num_codebooks - 1, vocab, decoder_dim]` with the decoder's final norm folded in the same way.
Folding leaves each norm a single scale per row, applied to the matmul's output: on a CPU the ops between
matmuls, not the arithmetic, are what cost (see `hugepages.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import CSMConfig
from .depth_decoder import DepthDecoder
from .sampling import TopKSampler
from .stack import Stack


def subtree(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The weights under `prefix`, named without it."""
    return {n[len(prefix) :]: w for n, w in weights.items() if n.startswith(prefix)}


DecodeCodes = Callable[[torch.Tensor, TopKSampler, "torch.Tensor | None"], torch.Tensor]


class CSMModel:
    """Backbone + depth decoder; `prefill` a prompt, then alternate `decode_frame` and `append_frame`.

    `prefill(..., start=n)` keeps the cache's first n positions and runs only the rows after them: a new turn
    whose prompt begins with what the cache already holds pays only for its new rows. With `static` set,
    `append_frame` attends over the whole backbone cache, masked by the position held in the device tensor `pos`
    (see `Stack.forward`): the form `CUDAGraphFrames` captures, run eagerly.
    """

    def __init__(self, config: CSMConfig, weights: dict[str, torch.Tensor], slots: int = 1):
        self.config = config
        k = config.num_codebooks
        self.text_embeddings = weights["text_embeddings"]
        self.audio_embeddings = weights["audio_embeddings"]
        self.backbone_norm = weights["backbone.norm"]
        # [in, out] views for torch.mm
        self.codebook0_head = weights["codebook0_head"].t()
        self.projection = weights["projection"].t()
        # Codes reach the depth decoder only through the projection of their embeddings: project the rows of
        # codebooks 0..K-2 once here, so each decoder step looks its input up instead of running a matmul. Inputs
        # and heads are kept as one view per codebook, so that a step takes its own with no indexing op.
        inputs = torch.mm(self.audio_embeddings[: (k - 1) * config.audio_vocab_size], self.projection)
        self.decoder_inputs = inputs.view(k - 1, config.audio_vocab_size, -1).unbind(0)
        self.audio_head = weights["audio_head"].transpose(1, 2).unbind(0)
        self.backbone = Stack(config.backbone, subtree(weights, "backbone."), config.max_seq_len, slots)
        self.decoder = DepthDecoder(config.decoder, subtree(weights, "decoder."), k)
        device = self.projection.device
        self.offsets = torch.arange(k, device=device) * config.audio_vocab_size
        self.position = 0  # the backbone position the next frame takes
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # the same, on the device
        self.static = False
        self.decode_codes: DecodeCodes = self.decode_with  # `fuse()` swaps in a compiled one

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

    def prefill(self, tokens: torch.Tensor, mask: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run prompt rows at positions `start`.. after the `start` positions already in the cache (0: a new
        sequence); returns the backbone's last hidden state `[1, dim]`."""
        n = start + tokens.shape[0]
        if n > self.config.max_seq_len:
            raise ValueError(f"prompt of {n} positions exceeds the model's {self.config.max_seq_len}")
        out = self.prefill_rows(tokens.to(self.device), mask.to(self.device), self.backbone.positions[start:n], n)
        self.position = n
        self.pos.fill_(n)
        return out[-1:]

    def prefill_rows(
        self, tokens: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, length: int | None, slot: int = 0
    ) -> torch.Tensor:
        """The tensor work of `prefill`: rows at positions `pos` of the sequence in `slot`, final-normed (`length`
        as in `Stack.forward`)."""
        return self.final_norm(self.backbone.forward(self.embed_rows(tokens, mask), pos, length, slot))

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
        out = self.backbone.forward(self.embed_frames(codes[None]), self.pos, length)
        self.pos += 1
        return self.final_norm(out)

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """Frames `[n, K]` as backbone rows `[n, dim]`: the sum of their codes' embeddings."""
        return F.embedding(codes + self.offsets, self.audio_embeddings).sum(1)

    def decode_frame(self, hidden: torch.Tensor, sample: TopKSampler) -> torch.Tensor:
        """Predict one frame `[K]` from the backbone's last hidden state `[1, dim]` (see `decode_with`)."""
        return self.decode_codes(hidden, sample, sample.race(self.config.num_codebooks, self.device))

    def decode_with(self, hidden: torch.Tensor, sample: TopKSampler, race: torch.Tensor | None) -> torch.Tensor:
        """Codebook 0, then the depth decoder at positions 0 (the projected state) to K-1 (each code so far,
        projected), each predicting the next code; code i uses row i of the frame's sampling noise `race`.

        Every shape here is fixed and no random state is touched, so a CUDA graph can capture it as it is and
        `torch.compile` can fuse it.
        """
        dec = self.decoder
        row = (lambda i: None) if race is None else race.__getitem__
        code = sample(torch.mm(hidden, self.codebook0_head), row(0))
        codes = [code]
        torch.mm(hidden, self.projection, out=dec.x)
        dec.step(0)
        for i in range(1, self.config.num_codebooks):
            torch.index_select(self.decoder_inputs[i - 1], 0, code, out=dec.x)
            dec.step(i)
            code = sample(torch.mm(dec.normalized(), self.audio_head[i - 1]), row(i))
            codes.append(code)
        return torch.cat(codes)

    def fuse(self) -> None:
        """Compile the per-frame work with TorchInductor: the norms, softmaxes, activations and sampling between
        the matmuls become a few generated kernels (on a GPU, far fewer launches per frame). Compiles on first use
        of each sampling mode; greedy frames stay those of the plain path. The backbone step takes its fixed-shape
        form (`static`), so that one compiled step serves every position."""
        self.static = True
        # No FX graph cache: with it, a greedy graph was served another compile's inputs (torch 2.9, "expected size").
        compile = lambda fn: torch.compile(fn, fullgraph=True, dynamic=False, options={"fx_graph_cache": False})  # noqa: E731
        self.decode_codes = compile(self.decode_with)
        self.backbone_step = compile(self.backbone_step)  # type: ignore[method-assign]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.config.backbone.dim,), self.backbone_norm, self.config.backbone.norm_eps)
