"""Before any model loads: is every model the chosen mode needs on this machine, or can it be downloaded?

Loading fails one model at a time, and which one first depends on which loader thread gets there first. So the
models are looked for up front (a local folder, or the hub cache), and when some are missing and the hub cannot
be reached (HF_HUB_OFFLINE, or no answer), all of them are listed at once, each with the setting that points it
at a local folder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Config
from assistant.hub import is_hub_id


@dataclass(frozen=True)
class Needed:
    setting: str  # the config key naming the model
    value: str
    found: Callable[[], bool]  # on this machine (a local folder or file, or in the hub cache)
    hub: bool = True  # whether the hub could supply it (False: a local path, which must exist)


def needed_models(config: Config, *, engine: bool, transcriber: bool, local_llm: str | None) -> list[Needed]:
    """The models a run loads: CSM with its tokenizer and Mimi (unless a speech server runs it), Whisper, the
    local LLM `local_llm` (those that apply)."""
    from assistant.llm.local_transformers import MODEL_FILES
    from assistant.tts.csm.weights import HUB_FILES

    needed: list[Needed] = []
    if engine and config.csm.backend == "local":
        csm = config.csm
        found = lambda: _model_here(csm.model, HUB_FILES)  # noqa: E731
        needed.append(Needed("csm.model", csm.model, found, is_hub_id(csm.model)))
        if csm.tokenizer is not None:
            tokenizer = Path(csm.tokenizer).expanduser()
            needed.append(Needed("csm.tokenizer", csm.tokenizer, tokenizer.is_file, hub=False))
        elif Path(csm.model).expanduser().is_dir():
            in_folder = Path(csm.model).expanduser() / "tokenizer.json"
            needed.append(Needed("csm.tokenizer", f"null, so {in_folder}", in_folder.is_file, hub=False))
        mimi = csm.mimi or "moshi's default (kyutai/moshiko-pytorch-bf16)"
        needed.append(Needed("csm.mimi", mimi, lambda: _mimi_here(csm.mimi), hub=csm.mimi is None))
    if transcriber:
        asr = config.asr
        found = lambda: _whisper_here(asr.model, asr.download_root)  # noqa: E731
        needed.append(Needed("asr.model", asr.model, found, _whisper_id(asr.model)))
    if local_llm is not None:
        found = lambda: _model_here(local_llm, MODEL_FILES)  # noqa: E731
        needed.append(Needed("llm.local.model", local_llm, found, is_hub_id(local_llm)))
    return needed


def missing_models(needed: Sequence[Needed], hub_reachable: Callable[[], bool]) -> str | None:
    """One message listing every model that is neither here nor downloadable; None when nothing is missing."""
    missing = [n for n in needed if not n.found()]
    absent = [n for n in missing if not n.hub]  # local paths that are not there: no hub helps
    offline = [n for n in missing if n.hub]
    if offline and hub_reachable():
        offline = []  # they will be downloaded as they load
    if not absent and not offline:
        return None
    parts = [f"{n.setting} = {n.value}: no such file or folder" for n in absent]
    if offline:
        listed = "; ".join(f"{n.setting} = {n.value}" for n in offline)
        parts.append(
            f"the hub cannot be reached (offline, or HF_HUB_OFFLINE=1) and these are not on this machine: {listed}"
        )
    settings = " ".join(f"--set {n.setting}=/local/path" for n in absent + offline)
    return (
        f"{len(absent) + len(offline)} model(s) missing: "
        + "; and ".join(parts)
        + (f". Connect once to download them, or point each at a local copy: {settings}")
    )


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
    if Path(model).expanduser().is_dir():
        return True
    if not is_hub_id(model):
        return False  # a path that is not there
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(model, allow_patterns=list(files), local_files_only=True)
        return True
    except Exception:  # not in the cache
        return False


def _mimi_here(mimi: str | None) -> bool:
    if mimi is not None:
        return Path(mimi).expanduser().is_file()
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
