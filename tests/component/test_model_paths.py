"""A local model path that is not what it must be, or a device that is not there, is named with what is wrong and the
setting to change, before any model loads and when one loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from assistant.asr import AsrError, WhisperTranscriber
from assistant.config import AsrConfig, CsmConfig, load_config
from pipelines.components import StartupError, load_engine
from pipelines.model_check import missing_cuda, missing_models, needed_models


def problems(overrides: list[str], hub: bool = True) -> str | None:
    config = load_config(None, ["llm.backend=scripted", *overrides])
    return missing_models(needed_models(config, engine=True, transcriber=True, local_llm=None), lambda: hub)


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "voice.wav"
    soundfile.write(path, np.zeros(1600, np.float32), 16_000)
    return path


def test_wrong_local_paths_are_named_with_what_is_wrong_before_anything_loads(tmp_path: Path, wav: Path) -> None:
    config_json = tmp_path / "config.json"
    config_json.write_text('{"architectures": ["CsmForConditionalGeneration"]}')
    line = problems(
        [f"csm.model={wav}", f"csm.mimi={tmp_path}", f"csm.tokenizer={wav}", f"asr.model={tmp_path / 'nothere'}"]
    )
    assert line is not None and "Connect once" not in line and "hub" not in line
    assert f"csm.model = {wav}: a file, not a folder; point csm.model at the folder that holds the model" in line
    assert f"csm.mimi = {tmp_path}: a folder, not a file; point csm.mimi at Mimi's weights file (moshi's " in line
    assert f"csm.tokenizer = {wav}: not a tokenizer.json: not JSON at all; point csm.tokenizer at " in line
    assert f"asr.model = {tmp_path / 'nothere'}: no such file or folder; point asr.model at the model's folder" in line
    wav_as_mimi = problems([f"csm.mimi={wav}", f"csm.tokenizer={config_json}", f"asr.model={tmp_path}"])
    assert wav_as_mimi == (
        f"csm.mimi = {wav}: not Mimi's weights: neither a safetensors file nor a torch checkpoint; point csm.mimi at "
        "Mimi's weights file (moshi's tokenizer-e351c8d8-checkpoint125.safetensors), or unset it"
    )  # a config.json as the tokenizer is told when it loads (test_csm_loading.py)


def test_only_models_the_hub_could_give_are_told_to_connect_once(tmp_path: Path) -> None:
    line = problems([f"csm.mimi={tmp_path}", f"csm.model={tmp_path / 'no'}"], hub=False)
    assert line is not None
    wrong, offline = line.split("; and ", 2)[:2], line.split("; and ")[-1]
    assert wrong[0].startswith(f"csm.model = {tmp_path / 'no'}: no such file or folder")
    assert offline.startswith("1 model(s) missing: the hub cannot be reached") and "asr.model = tiny.en" in offline
    assert offline.endswith("Connect once to download them, or point each at a local copy: --set asr.model=/local/path")


def test_a_wrong_mimi_or_tokenizer_that_gets_to_loading_names_the_setting(tmp_path: Path, tiny_csm_dir: Path) -> None:
    with pytest.raises(StartupError) as info:
        load_engine(CsmConfig(model=str(tiny_csm_dir), mimi=str(tmp_path), device="cpu"))
    assert str(info.value).startswith(f"csm.mimi = {tmp_path}: a folder, not a file; point csm.mimi at ")
    with pytest.raises(StartupError) as info:
        load_engine(CsmConfig(model=str(tiny_csm_dir), device="cpu"))  # the folder has no tokenizer.json
    in_folder = tiny_csm_dir / "tokenizer.json"
    assert str(info.value).startswith(f"csm.tokenizer = null, so {in_folder}: no such file or folder; point csm.")


def test_cuda_asked_for_where_there_is_none_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctranslate2
    import torch

    monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AsrError) as info:
        WhisperTranscriber(AsrConfig(model="tiny.en", device="cuda"))
    assert str(info.value) == "asr.device = cuda: ctranslate2 finds no CUDA device here; set asr.device to cpu, or auto"
    config = load_config(None, ["asr.device=cuda", "csm.device=cuda", "llm.local.device=cuda"])
    assert missing_cuda(config, engine=True, transcriber=True, local_llm="some/model") == [
        "csm.device = cuda: torch finds no CUDA device here; set csm.device to cpu, or auto",
        "asr.device = cuda: ctranslate2 finds no CUDA device here; set asr.device to cpu, or auto",
        "llm.local.device = cuda: torch finds no CUDA device here; set llm.local.device to cpu, or auto",
    ]
    assert missing_cuda(config, engine=False, transcriber=False, local_llm=None) == []
