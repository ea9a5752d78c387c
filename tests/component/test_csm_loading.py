"""Loading CSM checkpoints and tokenizers: clear errors for what is missing or broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
from safetensors.torch import load_file, save_file

from assistant.hub import PathError
from assistant.tts.csm import CheckpointError, CSMEngine
from assistant.tts.csm.codec import check_mimi, load_mimi
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
    with pytest.raises(PathError) as info:
        CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi)
    assert info.value.argument == "tokenizer" and info.value.path == str(tiny_csm_dir / "tokenizer.json")
    assert info.value.problem == "no such file or folder"


def test_a_file_given_as_the_checkpoint_folder_says_so(tiny_csm_dir):
    with pytest.raises(CheckpointError, match=r"csm.model='.*model.safetensors' is a file, not a folder: point csm"):
        resolve_checkpoint(tiny_csm_dir / "model.safetensors")


def test_a_folder_as_mimi_names_the_folder_and_the_files_in_it_for_either_setting(tmp_path, tiny_csm_dir):
    folder = tmp_path / "mimi"
    folder.mkdir()
    (folder / "tokenizer-e351c8d8-checkpoint125.safetensors").write_bytes(b"")
    with pytest.raises(PathError) as info:
        CSMEngine.from_pretrained(tiny_csm_dir, mimi=folder)
    fix = "point {} at the weights file in it (tokenizer-e351c8d8-checkpoint125.safetensors?)"
    assert info.value.named("csm.mimi") == f"csm.mimi = {folder}: a folder, not a file; " + fix.format("csm.mimi")
    assert info.value.named("--mimi") == f"--mimi {folder}: a folder, not a file; " + fix.format("--mimi")


def test_a_wav_or_other_weights_as_mimi_say_they_are_not_mimis_weights(tmp_path, tiny_csm_dir, llama3_tokenizer_json):
    wav = tmp_path / "voice.wav"
    soundfile.write(wav, np.zeros(1600, np.float32), 16_000)
    with pytest.raises(PathError, match=r"voice.wav: not Mimi's weights: neither a safetensors file nor a torch"):
        CSMEngine.from_pretrained(tiny_csm_dir, mimi=wav, tokenizer=llama3_tokenizer_json)
    with pytest.raises(PathError, match=r"not Mimi's weights \(Missing key\(s\) in state_dict: "):
        load_mimi(tiny_csm_dir / "model.safetensors", 8, "cpu")  # a safetensors file, of another model
    fake = tmp_path / "mimi.safetensors"
    fake.write_bytes(b"not a safetensors file")
    with pytest.raises(PathError, match="named as a safetensors file, but it is not one"):
        check_mimi(fake)
    renamed = tmp_path / "mimi.bin"
    shutil.copy(tiny_csm_dir / "model.safetensors", renamed)
    with pytest.raises(PathError) as info:
        check_mimi(renamed)
    assert info.value.named("--mimi").endswith("moshi would not read it as one; rename it to end in .safetensors")


def test_a_config_json_as_the_tokenizer_says_it_is_not_a_tokenizer_json(checkpoint_copy, tiny_mimi):
    config = checkpoint_copy / "config.json"
    with pytest.raises(PathError) as info:
        CSMEngine.from_pretrained(checkpoint_copy, mimi=tiny_mimi, tokenizer=config)
    assert info.value.named("csm.tokenizer") == (
        f"csm.tokenizer = {config}: JSON, but not a tokenizer.json (no tokenizer 'model' in it); point csm.tokenizer "
        "at a Hugging Face tokenizers file (the checkpoint's tokenizer.json)"
    )
    with pytest.raises(PathError) as info:
        CSMEngine.from_pretrained(checkpoint_copy, mimi=tiny_mimi, tokenizer=checkpoint_copy)
    assert info.value.named("--tokenizer").startswith(f"--tokenizer {checkpoint_copy}: a folder, not a file; point")


def test_exactly_one_bos_and_eos(llama3_tokenizer_json):
    encoder = TextEncoder(str(llama3_tokenizer_json))  # from a path (loaded once: it takes seconds)
    assert encoder.tokenizer.encode("Hi").ids[0] == 128000  # its post-processor adds bos by itself
    with_template = encoder.encode("Hello, world!", 0)
    encoder.tokenizer.post_processor = None
    bare = TextEncoder(encoder.tokenizer).encode("Hello, world!", 0)
    assert with_template == bare == [128000, 58, 15, 60, 9906, 11, 1917, 0, 128001]
