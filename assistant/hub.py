"""Find a model: a local folder as it is, or a Hugging Face hub id downloaded (with progress bars) into the hub cache.

Failures name the model and say what to do: connect once, log in for a gated model, or point the setting at a
local folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ModelNotFound(RuntimeError):
    """The model is neither a folder nor a hub repository this machine can get; the message says what to do."""


def resolve_model(model: str, files: Sequence[str], setting: str) -> Path:
    """`model` as a local folder, or the snapshot folder of the hub repository `model` (only `files`, glob patterns).

    `setting` is the config key that names the model, for the messages (e.g. "llm.local.model").
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if not is_hub_id(model):
        raise ModelNotFound(f"{setting}={model!r} is neither a folder nor a hub id like 'organisation/name'")
    return _download(model, files, setting)


def is_hub_id(model: str) -> bool:
    """Whether `model` can only mean a hub repository ('organisation/name'), not a local path."""
    return not Path(model).expanduser().exists() and model.count("/") == 1 and not model.startswith((".", "/", "~"))


def _download(repo: str, files: Sequence[str], setting: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    instead = f"or set {setting} to a local folder holding the model"
    try:
        return Path(snapshot_download(repo, allow_patterns=list(files)))
    except GatedRepoError as error:
        raise ModelNotFound(
            f"{repo} is gated: accept its licence at https://huggingface.co/{repo} and log in "
            f"(`huggingface-cli login` or HF_TOKEN), {instead}"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotFound(
            f"{repo} is not on the Hugging Face hub (or it is private): check {setting}, {instead}"
        ) from error
    except LocalEntryNotFoundError as error:
        raise ModelNotFound(
            f"{repo} is not downloaded yet and the hub cannot be reached (offline, or HF_HUB_OFFLINE=1): "
            f"connect once to download it, {instead}"
        ) from error
