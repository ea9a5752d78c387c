"""The tiny random models that stand in for downloaded weights build, save and load here."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.support.random_models import TINY_CSM, TINY_MIMI, build_random_csm


def test_tiny_csm_round_trips_through_save_pretrained(tiny_csm_dir: Path) -> None:
    from transformers import CsmForConditionalGeneration

    config = json.loads((tiny_csm_dir / "config.json").read_text())
    assert config["model_type"] == "csm" and config["num_codebooks"] == TINY_CSM.num_codebooks
    assert config["rope_scaling"]["rope_type"] == "llama3"
    loaded = CsmForConditionalGeneration.from_pretrained(tiny_csm_dir).eval()
    rebuilt = build_random_csm(TINY_CSM, seed=0)
    ids = torch.tensor([[128000, 58, 16, 60, 9906, 128001]])
    with torch.no_grad():
        a = loaded(input_ids=ids).logits
        b = rebuilt(input_ids=ids).logits
    assert a.shape == (1, ids.shape[1], TINY_CSM.audio_vocab_size)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tiny_mimi_encodes_and_decodes_80ms_frames(tiny_mimi) -> None:
    assert tiny_mimi.sample_rate == 24_000 and tiny_mimi.frame_rate == 12.5
    audio = torch.randn(1, 1, 1920 * 5) * 0.1
    with torch.no_grad():
        codes = tiny_mimi.encode(audio)
        decoded = tiny_mimi.decode(codes)
    assert codes.shape == (1, TINY_MIMI.num_codebooks, 5)
    assert 0 <= int(codes.min()) and int(codes.max()) < TINY_MIMI.bins
    assert decoded.shape == (1, 1, 1920 * 5)
    assert torch.isfinite(decoded).all()
