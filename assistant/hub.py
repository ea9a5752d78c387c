"""Find a model: a local folder as it is, or a Hugging Face hub id downloaded (with progress bars) into the hub cache.

Failures name the model and say what to do: connect once, log in for a gated model, or point the setting at a
local folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class ModelNotFound(RuntimeError):
    """The model is neither a folder nor a hub repository this machine can get; the message says what to do."""


class PathError(ValueError):
    """A local path given to a loader is not what it must be. Loaders know the path and their own parameter
    (`argument`: "mimi", "tokenizer", "model"), not the setting that named it: the caller names that with
    `named(setting)`, the assistant `csm.mimi`, the speech server `--mimi`. `fix` says what to do, `{setting}` in it
    standing for the setting."""

    def __init__(self, argument: str, path: str | Path, problem: str, fix: str) -> None:
        self.argument, self.path, self.problem, self.fix = argument, str(path), problem, fix
        super().__init__(f"{path}: {problem}; {fix.replace('{setting}', f'the {argument} setting')}")

    def named(self, setting: str, value: str | None = None) -> str:
        """One line naming `setting` and its value (the path, unless `value` says it otherwise)."""
        shown = f"{setting} {value or self.path}" if setting.startswith("-") else f"{setting} = {value or self.path}"
        return f"{shown}: {self.problem}; {self.fix.replace('{setting}', setting)}"


def check_folder(path: str | Path, argument: str = "model") -> Path:
    """`path` if it is a folder; PathError saying what it is instead (nothing, or a file)."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if not folder.exists():
        raise PathError(argument, path, "no such file or folder", "point {setting} at the model's folder")
    raise PathError(argument, path, "a file, not a folder", "point {setting} at the folder that holds the model")


def resolve_model(model: str, files: Sequence[str], setting: str) -> Path:
    """`model` as a local folder, or the snapshot folder of the hub repository `model` (only `files`, glob patterns).

    `setting` is the config key that names the model, for the messages (e.g. "llm.local.model").
    """
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelNotFound(f"{setting}={model!r} is a file, not a folder: point {setting} at the folder that holds it")
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
