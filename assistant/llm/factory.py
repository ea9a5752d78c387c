"""Build the configured LLM backend."""

from __future__ import annotations

from assistant.config import LlmConfig
from assistant.llm.backend import ChatBackend
from assistant.llm.scripted import ScriptedBackend


class BackendUnavailable(RuntimeError):
    """The configured backend cannot be built in this version."""


def make_backend(config: LlmConfig) -> ChatBackend:
    if config.backend == "scripted":
        return ScriptedBackend(config.scripted)
    raise BackendUnavailable(
        f"llm.backend={config.backend!r} is not available in this version yet; "
        "use --set llm.backend=scripted (fixed replies) for now"
    )
