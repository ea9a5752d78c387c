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
from .stack import Stack

Sampler = Callable[[torch.Tensor], torch.Tensor]
"""Maps logits `[1, vocab]` to one code, a LongTensor `[1]` on the model's device."""


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
        # codebooks 0..K-2 once here, so each decoder step looks its input up instead of running a matmul. Inputs
        # and heads are kept as one view per codebook, so that a step takes its own with no indexing op.
        inputs = torch.mm(self.audio_embeddings[: (k - 1) * config.audio_vocab_size], self.projection)
        self.decoder_inputs = inputs.view(k - 1, config.audio_vocab_size, -1).unbind(0)
        self.audio_head = weights["audio_head"].transpose(1, 2).unbind(0)
        sub = lambda prefix: {n[len(prefix) :]: w for n, w in weights.items() if n.startswith(prefix)}  # noqa: E731
        self.backbone = Stack(config.backbone, sub("backbone."), config.max_seq_len)
        self.decoder = DepthDecoder(config.decoder, sub("decoder."), k)
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
        """Predict one frame `[K]` from the backbone's last hidden state `[1, dim]`: codebook 0, then the depth decoder
        at positions 0 (the projected state) to K-1 (each code so far, projected), each predicting the next code.

        Every shape here is fixed, so a CUDA graph can capture it as it is.
        """
        dec = self.decoder
        code = sample(torch.mm(hidden, self.codebook0_head))
        codes = [code]
        torch.mm(hidden, self.projection, out=dec.x)
        dec.step(0)
        for i in range(1, self.config.num_codebooks):
            torch.index_select(self.decoder_inputs[i - 1], 0, code, out=dec.x)
            dec.step(i)
            code = sample(torch.mm(dec.normalized(), self.audio_head[i - 1]))
            codes.append(code)
        return torch.cat(codes)

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (self.config.backbone.dim,), self.backbone_norm, self.config.backbone.norm_eps)
