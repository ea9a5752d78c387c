"""The CUDA-graph path of CSMEngine (needs a CUDA GPU).

What the graphs capture, the fixed-shape step, is checked against transformers on the CPU too:
test_csm_oracle's `static` case.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer

from assistant.tts.csm import CSMEngine
from assistant.tts.csm.graphs import CUDAGraphFrames

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")

TEXT = "Graphs replay the whole frame."


@pytest.fixture(scope="module")
def engines(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json) -> tuple[CSMEngine, CSMEngine]:
    """The same checkpoint on CUDA in float32: eager, and with CUDA graphs."""
    tokenizer = Tokenizer.from_file(str(llama3_tokenizer_json))
    mimi = copy.deepcopy(tiny_mimi).to("cuda")  # the session's Mimi stays on the CPU for the other tests

    def load(graphs: bool) -> CSMEngine:
        return CSMEngine.from_pretrained(
            tiny_csm_dir, mimi=mimi, tokenizer=tokenizer, device="cuda", dtype=torch.float32, cuda_graphs=graphs
        )

    return load(False), load(True)


def test_load_captures_the_default_sampling_and_greedy(engines):
    eager, graphs = engines
    assert eager.steps is eager.model
    assert isinstance(graphs.steps, CUDAGraphFrames) and len(graphs.steps.decoders) == 2


def test_greedy_frames_equal_the_eager_path(engines):
    eager, graphs = engines
    a = eager.generate(TEXT, temperature=0, max_audio_ms=1600)
    b = graphs.generate(TEXT, temperature=0, max_audio_ms=1600)
    assert a.codes.shape == (8, 20) and torch.equal(a.codes, b.codes)


def test_seeded_sampling_reproduces_across_temperatures_without_new_graphs(engines):
    _, graphs = engines
    a = graphs.generate(TEXT, temperature=0.9, topk=50, seed=4, max_audio_ms=800).codes
    hotter = graphs.generate(TEXT, temperature=3.0, topk=50, seed=4, max_audio_ms=800).codes
    b = graphs.generate(TEXT, temperature=0.9, topk=50, seed=4, max_audio_ms=800).codes
    assert torch.equal(a, b) and not torch.equal(a, hotter)
    assert len(graphs.steps.decoders) == 2


def test_a_new_topk_is_captured_on_first_use_without_moving_the_seed(engines):
    _, graphs = engines
    first = graphs.generate(TEXT, temperature=0.9, topk=7, seed=1, max_audio_ms=800).codes  # captures
    again = graphs.generate(TEXT, temperature=0.9, topk=7, seed=1, max_audio_ms=800).codes
    assert torch.equal(first, again) and len(graphs.steps.decoders) == 3
