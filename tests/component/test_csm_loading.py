"""Loading CSM checkpoints and tokenizers: clear errors for what is missing or broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from assistant.tts.csm import CheckpointError, CSMEngine
from assistant.tts.csm.prompt import TextEncoder
from assistant.tts.csm.weights import read_checkpoint, resolve_checkpoint


@pytest.fixture
def checkpoint_copy(tiny_csm_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_csm_dir, tmp_path / "ckpt"))


def test_reads_the_transformers_layout(tiny_csm_dir):
    config, weights = read_checkpoint(tiny_csm_dir)
    assert config.num_codebooks == 8 and config.backbone.dim == 64 and config.decoder.dim == 32
    assert weights["audio_head"].shape == (7, 2051, 32)
    assert weights["backbone.layers.1.qkv"].shape == ((4 + 2 * 2) * 16, 64)


def test_missing_directory_or_bad_name(tmp_path):
    with pytest.raises(CheckpointError, match="neither a folder nor a hub id"):
        resolve_checkpoint(tmp_path / "nowhere")


def test_directory_without_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        read_checkpoint(tmp_path)


def test_missing_weights_file(checkpoint_copy):
    (checkpoint_copy / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        read_checkpoint(checkpoint_copy)


def test_corrupt_weights_file(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(checkpoint_copy)


def test_missing_weight(checkpoint_copy):
    path = checkpoint_copy / "model.safetensors"
    tensors = load_file(path)
    del tensors["lm_head.weight"]
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match="lacks the weight 'lm_head.weight'"):
        read_checkpoint(checkpoint_copy)


def test_hub_id_offline_says_what_to_do(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="connect once to download it, or set csm.model to a local folder"):
        resolve_checkpoint("sesame/csm-1b")


def test_gated_hub_repo_says_accept_the_licence(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        raise GatedRepoError("403 gated")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(CheckpointError, match="accept its licence at https://huggingface.co/sesame/csm-1b"):
        resolve_checkpoint("sesame/csm-1b")


def test_missing_tokenizer_is_a_clear_error(tiny_csm_dir, tiny_mimi):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi)


def test_exactly_one_bos_and_eos(llama3_tokenizer_json):
    encoder = TextEncoder(str(llama3_tokenizer_json))  # from a path (loaded once: it takes seconds)
    assert encoder.tokenizer.encode("Hi").ids[0] == 128000  # its post-processor adds bos by itself
    with_template = encoder.encode("Hello, world!", 0)
    encoder.tokenizer.post_processor = None
    bare = TextEncoder(encoder.tokenizer).encode("Hello, world!", 0)
    assert with_template == bare == [128000, 58, 15, 60, 9906, 11, 1917, 0, 128001]
