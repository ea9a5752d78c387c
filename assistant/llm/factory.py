"""Build the configured LLM backend; heavy libraries are imported only for the backend in use."""

from __future__ import annotations

from assistant.config import LlmConfig
from assistant.llm.backend import ChatBackend
from assistant.llm.scripted import ScriptedBackend


def make_backend(config: LlmConfig) -> ChatBackend:
    """Raises BackendUnavailable when a setting the backend needs (such as its API key) is missing."""
    if config.backend == "openai":
        from assistant.llm.openai_compatible import OpenAICompatibleBackend

        return OpenAICompatibleBackend(config.openai)
    if config.backend == "local":
        from assistant.llm.local_transformers import LocalBackend

        return LocalBackend(config.local)
    return ScriptedBackend(config.scripted)
