"""Before any model loads: is every model the chosen mode needs on this machine, or can it be downloaded?

Loading fails one model at a time, and which one first depends on which loader thread gets there first. So the
models are looked for up front (a local folder, or the hub cache), and when some are missing and the hub cannot
be reached (HF_HUB_OFFLINE, or no answer), all of them are listed at once, each with the setting that points it
at a local folder. A local path that is not what it must be (a folder where a file belongs, a file that is not a
tokenizer.json, ...) is named with what is wrong with it, and so is a device setting of `cuda` on a machine without
one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Config
from assistant.hub import PathError, check_folder, is_hub_id


@dataclass(frozen=True)
class Needed:
    setting: str  # the config key naming the model
    value: str
    found: Callable[[], bool]  # in the hub cache; a local path: True, or PathError saying what is wrong with it


def needed_models(config: Config, *, engine: bool, transcriber: bool, local_llm: str | None) -> list[Needed]:
    """The models a run loads: CSM with its tokenizer and Mimi (unless a speech server runs it), Whisper, the
    local LLM `local_llm` (those that apply)."""
    from assistant.llm.local_transformers import MODEL_FILES
    from assistant.tts.csm.codec import check_mimi
    from assistant.tts.csm.weights import HUB_FILES, check_tokenizer

    needed: list[Needed] = []
    if engine and config.csm.backend == "local":
        csm = config.csm
        needed.append(_model(csm.model, "csm.model", HUB_FILES))
        if csm.tokenizer is not None:
            needed.append(_local("csm.tokenizer", csm.tokenizer, check_tokenizer))
        elif Path(csm.model).expanduser().is_dir():
            in_folder = str(Path(csm.model).expanduser() / "tokenizer.json")
            needed.append(_local("csm.tokenizer", in_folder, check_tokenizer, shown=f"null, so {in_folder}"))
        if csm.mimi is not None:
            needed.append(_local("csm.mimi", csm.mimi, check_mimi))
        else:
            needed.append(Needed("csm.mimi", "moshi's default (kyutai/moshiko-pytorch-bf16)", _mimi_cached))
    if transcriber:
        asr = config.asr
        if _whisper_id(asr.model):
            needed.append(Needed("asr.model", asr.model, lambda: _whisper_here(asr.model, asr.download_root)))
        else:
            needed.append(_local("asr.model", asr.model, check_folder))
    if local_llm is not None:
        needed.append(_model(local_llm, "llm.local.model", MODEL_FILES))
    return needed


def _model(model: str, setting: str, files: Sequence[str]) -> Needed:
    """A model that is a hub id or a local folder."""
    if is_hub_id(model):
        return Needed(setting, model, lambda: _model_here(model, files))
    return _local(setting, model, check_folder)


def _local(setting: str, path: str, check: Callable[[str], Path], shown: str | None = None) -> Needed:
    """A local path, which `check` finds right (or raises PathError saying what is wrong with it)."""
    return Needed(setting, shown or path, lambda: bool(check(path)))


def missing_models(needed: Sequence[Needed], hub_reachable: Callable[[], bool]) -> str | None:
    """One message naming every local path that is wrong, with what is wrong with it, and every model neither here
    nor downloadable; None when nothing is amiss."""
    wrong: list[str] = []  # local paths: no hub helps
    offline: list[Needed] = []
    for n in needed:
        try:
            if not n.found():
                offline.append(n)
        except PathError as error:
            wrong.append(error.named(n.setting, n.value))
    if offline and hub_reachable():
        offline = []  # they will be downloaded as they load
    if offline:
        listed = "; ".join(f"{n.setting} = {n.value}" for n in offline)
        settings = " ".join(f"--set {n.setting}=/local/path" for n in offline)
        wrong.append(
            f"{len(offline)} model(s) missing: the hub cannot be reached (offline, or HF_HUB_OFFLINE=1) and these are "
            f"not on this machine: {listed}. Connect once to download them, or point each at a local copy: {settings}"
        )
    return "; and ".join(wrong) or None


def missing_cuda(config: Config, *, engine: bool, transcriber: bool, local_llm: str | None) -> list[str]:
    """A line for each device setting of `cuda` (of the parts a run loads) where no CUDA device can be had."""
    asked = (
        ("csm.device", "torch", engine and config.csm.backend == "local" and config.csm.device == "cuda"),
        ("asr.device", "ctranslate2", transcriber and config.asr.device == "cuda"),
        ("llm.local.device", "torch", local_llm is not None and config.llm.local.device == "cuda"),
    )
    return [
        f"{setting} = cuda: {library} finds no CUDA device here; set {setting} to cpu, or auto"
        for setting, library, wanted in asked
        if wanted and not cuda_devices(library)
    ]


def cuda_devices(library: str) -> int:
    """How many CUDA devices `library` (torch or ctranslate2: each has its own CUDA build) can use."""
    if library == "ctranslate2":
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count())
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """Whether the Hugging Face hub answers (never, with HF_HUB_OFFLINE set)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    import urllib.request

    try:
        with urllib.request.urlopen(constants.ENDPOINT, timeout=timeout_s):
            return True
    except OSError:
        return False


def _whisper_id(model: str) -> bool:
    """Whether `model` names a faster-whisper size (tiny.en, small, ...) or a hub repository, not a local path."""
    return is_hub_id(model) or ("/" not in model and not Path(model).expanduser().exists())


def _model_here(model: str, files: Sequence[str]) -> bool:
    """Whether the hub repository `model` is in the hub cache."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, allow_patterns=list(files), local_files_only=True)
        return True
    except Exception:  # not in the cache
        return False


def _mimi_cached() -> bool:
    from huggingface_hub import try_to_load_from_cache
    from moshi.models import loaders

    return isinstance(try_to_load_from_cache(loaders.DEFAULT_REPO, loaders.MIMI_NAME), str)


def _whisper_here(model: str, download_root: str | None) -> bool:
    if Path(model).expanduser().is_dir():
        return True
    from faster_whisper import download_model

    try:
        download_model(model, local_files_only=True, cache_dir=download_root)
        return True
    except Exception:  # not in the cache (or not a size name or hub id at all)
        return False
