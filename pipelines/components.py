"""Build the heavy parts (Whisper, CSM, the LLM's model) from the config, each failing with one clear line."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from assistant.config import AsrConfig, Config, CsmConfig, TurnConfig
from assistant.llm.backend import ChatBackend, LlmError
from pipelines.model_check import hub_reachable, missing_models, needed_models

if TYPE_CHECKING:
    from assistant.asr import WhisperTranscriber
    from assistant.tts.csm import CSMEngine
    from assistant.turn_model import SmartTurn

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A part the chosen mode needs could not be loaded or opened."""


def load_transcriber(config: AsrConfig) -> WhisperTranscriber:
    from assistant.asr import AsrError, WhisperTranscriber

    try:
        return WhisperTranscriber(config)
    except AsrError as error:
        raise StartupError(str(error)) from None


def load_turn_model(config: TurnConfig) -> SmartTurn | None:
    """The end-of-turn model, when `turn.detector` is `model` (None otherwise)."""
    if config.detector != "model":
        return None
    from assistant.turn_model import SmartTurn, TurnModelError

    try:
        return SmartTurn(config.model)
    except TurnModelError as error:
        raise StartupError(str(error)) from None


async def start_backend(backend: ChatBackend) -> None:
    """Load what the LLM backend needs (the local model) before the first turn."""
    try:
        await backend.start()
    except LlmError as error:
        raise StartupError(str(error)) from None


def load_engine(config: CsmConfig) -> CSMEngine:
    import torch

    from assistant.tts.csm import CheckpointError, CSMEngine

    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    start = time.monotonic()
    try:
        engine = CSMEngine.from_pretrained(
            config.model, config.mimi, config.tokenizer, device=device, dtype=dtype, cuda_graphs=config.cuda_graphs,
            fused=config.fused,
        )
    except CheckpointError as error:
        raise StartupError(f"cannot load the CSM speech model {config.model!r}: {error}") from None
    except Exception as error:  # tokenizer, Mimi or torch failures: still one line, not a traceback
        raise StartupError(
            f"cannot load the CSM speech model {config.model!r} (mimi={config.mimi!r}, tokenizer={config.tokenizer!r}): "
            f"{type(error).__name__}: {error}"
        ) from None
    log.info("CSM: %s on %s (%s) in %.1f s", config.model, device, engine.model.dtype, time.monotonic() - start)
    return engine


async def load_models(
    config: Config, backend: ChatBackend, *, engine: bool = True, transcriber: bool = True
) -> tuple[CSMEngine | None, WhisperTranscriber | None, SmartTurn | None]:
    """CSM and Whisper (those asked for), the end-of-turn model with Whisper, and the LLM backend's model, loaded
    side by side, once every model they need is known to be here or downloadable (`model_check.py`)."""
    from assistant.llm.local_transformers import LocalBackend

    local_llm = backend.model_name if isinstance(backend, LocalBackend) else None
    needed = needed_models(config, engine=engine, transcriber=transcriber, local_llm=local_llm)
    if (problem := await asyncio.to_thread(missing_models, needed, hub_reachable)) is not None:
        raise StartupError(problem)
    loaded_engine, loaded_transcriber, turn_model, _ = await asyncio.gather(  # asyncio.sleep(0): not asked for is None
        asyncio.to_thread(load_engine, config.csm) if engine else asyncio.sleep(0),
        asyncio.to_thread(load_transcriber, config.asr) if transcriber else asyncio.sleep(0),
        asyncio.to_thread(load_turn_model, config.turn) if transcriber else asyncio.sleep(0),
        start_backend(backend),
    )
    return loaded_engine, loaded_transcriber, turn_model
