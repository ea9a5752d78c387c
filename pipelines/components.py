"""Build the heavy parts (Whisper, CSM, the LLM's model) from the config, each failing with one clear line."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from assistant.config import AsrConfig, Config, CsmConfig, TurnConfig, VoiceConfig
from assistant.llm.backend import ChatBackend, LlmError
from assistant.tts.reference_voice import (
    ReferenceVoice,
    VoiceError,
    check_voice_source,
    is_voice_file,
    locked_voice,
    voice_from_clip,
)
from pipelines.model_check import hub_reachable, missing_cuda, missing_models, needed_models

if TYPE_CHECKING:
    from assistant.asr import WhisperTranscriber
    from assistant.tts.csm import CSMEngine
    from assistant.tts.remote import RemoteCSM
    from assistant.turn_model import SmartTurn

    Engine = CSMEngine | RemoteCSM

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
    """The end-of-turn model, when `turn.detector` is `model` or `both` (None otherwise)."""
    if config.detector == "words":
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
    """CSM in this process (`csm.backend: local`); `connect_engine` is the speech server's."""
    import torch

    from assistant.hub import PathError
    from assistant.tts.csm import CheckpointError, CSMEngine

    device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
    start = time.monotonic()
    try:
        engine = CSMEngine.from_pretrained(
            config.model,
            config.mimi,
            config.tokenizer,
            device=device,
            dtype=dtype,
            cuda_graphs=config.cuda_graphs,
            fused=config.fused,
        )
    except PathError as error:  # names the file; the setting that gave it is named here
        unset = error.argument == "tokenizer" and config.tokenizer is None  # the model folder's
        raise StartupError(error.named(f"csm.{error.argument}", f"null, so {error.path}" if unset else None)) from None
    except CheckpointError as error:
        raise StartupError(f"cannot load the CSM speech model {config.model!r}: {error}") from None
    except Exception as error:  # tokenizer, Mimi or torch failures: still one line, not a traceback
        raise StartupError(
            f"cannot load the CSM speech model {config.model!r} "
            f"(mimi={config.mimi!r}, tokenizer={config.tokenizer!r}): "
            f"{type(error).__name__}: {error}"
        ) from None
    log.info("CSM: %s on %s (%s) in %.1f s", config.model, device, engine.model.dtype, time.monotonic() - start)
    return engine


async def connect_engine(config: CsmConfig) -> RemoteCSM:
    """The speech server's engine (`csm.backend: server`), its model's facts fetched."""
    from assistant.tts.remote import RemoteCSM, SpeechServerError

    server = config.server
    try:
        engine = await RemoteCSM(server.url, server.api_key(), server.timeout_s).start()
    except SpeechServerError as error:
        raise StartupError(f"csm.backend is server: {error}") from None
    log.info("CSM: speech server %s (model %s)", engine.url, engine.model_id)
    return engine


def check_voice(config: VoiceConfig) -> None:
    """The voice's clip or file, checked before any model loads (StartupError naming it)."""
    if config.path is not None:
        try:
            check_voice_source(Path(config.path), config.text)
        except VoiceError as error:
            raise StartupError(f"voice.path: {error}") from None


async def load_voice(config: Config, engine: Engine) -> ReferenceVoice | None:
    """The assistant's voice (`voice.path`, else the locked voice, unless `voice.locked` is off), checked to fit."""
    settings, csm = config.voice, config.csm
    speaker = settings.speaker if settings.speaker is not None else csm.speaker
    try:
        if settings.path is None:
            voice = await locked_voice(speaker, engine, csm.temperature, csm.topk) if settings.locked else None
        elif is_voice_file(path := Path(settings.path)):
            voice = await asyncio.to_thread(ReferenceVoice.load, path)
            if settings.speaker is not None:
                voice = dataclasses.replace(voice, speaker=settings.speaker)
        else:
            voice = await voice_from_clip(path, settings.text, speaker, engine)
        if voice is not None:  # a speech server counts them: off the loop
            await asyncio.to_thread(engine.reference_positions, voice.segment())
    except ValueError as error:  # VoiceError, or too long for the window
        raise StartupError(f"voice: {error}") from None
    if voice is not None:
        log.info("voice: %s (speaker %d, %.1f s: %r)", voice.origin, voice.speaker, voice.seconds, voice.text[:60])
    return voice


@dataclass(frozen=True)
class Models:
    """What `load_models` loaded; a part not asked for is None. `aclose()` closes the speech server's connections."""

    engine: Engine | None = None
    voice: ReferenceVoice | None = None
    transcriber: WhisperTranscriber | None = None
    turn_model: SmartTurn | None = None

    async def aclose(self) -> None:
        await _close(self.engine)


async def _close(engine: Engine | None) -> None:
    from assistant.tts.remote import RemoteCSM

    if isinstance(engine, RemoteCSM):
        await engine.aclose()


async def load_models(config: Config, backend: ChatBackend, *, engine: bool = True, transcriber: bool = True) -> Models:
    """CSM with its voice and Whisper (those asked for), the end-of-turn model with Whisper, and the LLM backend's
    model, loaded side by side, once every model they need is known to be here or downloadable (`model_check.py`)."""
    from assistant.llm.local_transformers import LocalBackend

    if engine:
        check_voice(config.voice)
    local_llm = backend.model_name if isinstance(backend, LocalBackend) else None
    problems = await asyncio.to_thread(
        missing_cuda, config, engine=engine, transcriber=transcriber, local_llm=local_llm
    )
    needed = needed_models(config, engine=engine, transcriber=transcriber, local_llm=local_llm)
    if (missing := await asyncio.to_thread(missing_models, needed, hub_reachable)) is not None:
        problems.append(missing)
    if problems:
        raise StartupError("; and ".join(problems))
    served = engine and config.csm.backend == "server"
    remote = await connect_engine(config.csm) if served else None  # first: an absent server is told in a moment
    try:
        local, loaded_transcriber, turn_model, _ = await asyncio.gather(  # asyncio.sleep(0): not asked for is None
            asyncio.to_thread(load_engine, config.csm) if engine and not served else asyncio.sleep(0),
            asyncio.to_thread(load_transcriber, config.asr) if transcriber else asyncio.sleep(0),
            asyncio.to_thread(load_turn_model, config.turn) if transcriber else asyncio.sleep(0),
            start_backend(backend),
        )
        loaded_engine = remote or local
        voice = await load_voice(config, loaded_engine) if loaded_engine is not None else None
    except BaseException:
        await _close(remote)
        raise
    return Models(loaded_engine, voice, loaded_transcriber, turn_model)
