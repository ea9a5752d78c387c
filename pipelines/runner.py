"""Choose and run a mode (live voice, text, wav file) with the shared listeners on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from assistant.audio.streams import PLAYBACK_RATE, AudioSink, FileSink, FileSource
from assistant.audio.wavfile import WavError
from assistant.config import Config
from assistant.events import EventBus, UtteranceEnded
from assistant.llm.backend import ChatBackend
from assistant.llm.factory import make_backend
from assistant.logs import log_turns
from assistant.tools.toolbox import Toolbox
from assistant.vad import VadSegmenter
from pipelines.assistant import Assistant, device_reporter
from pipelines.components import Models, load_models, start_backend
from pipelines.keyboard import key_binding
from pipelines.text_mode import run_text_mode
from pipelines.voice_loop import VoiceLoop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mode:
    text: bool = False
    speech: bool = True  # text mode only: False prints replies without loading the speech model
    input_wav: Path | None = None
    output_wav: Path | None = None

    @property
    def name(self) -> str:
        return "text" if self.text else "file" if self.input_wav else "live"


async def run(config: Config, mode: Mode) -> None:
    bus = EventBus()
    backend = make_backend(config.llm)
    listeners = [asyncio.create_task(log_turns(bus))] if config.logging.turn_lines else []
    try:
        runner = {"text": _text, "file": _file, "live": _live}[mode.name]
        await runner(config, mode, bus, backend)
        await asyncio.sleep(0)  # let listeners see the last events
    finally:
        for task in listeners:
            task.cancel()
        for task in listeners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await backend.aclose()


async def _text(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    if not mode.speech:
        async with Toolbox(config.tools, bus) as toolbox:
            await start_backend(backend)
            await run_text_mode(VoiceLoop(config, bus, backend, tools=toolbox.registry), bus)
        return
    from assistant.audio.speaker import Speaker

    audio = config.audio
    speaker = Speaker(
        audio.output_device,
        playback_rate=audio.playback_rate,
        on_error=device_reporter(bus),
        latency_ms=audio.output_latency_ms,
    )
    async with speaker, Toolbox(config.tools, bus) as toolbox:
        models = await load_models(config, backend, transcriber=False)
        voice = _voice_loop(config, bus, backend, speaker, models, toolbox)
        try:
            await run_text_mode(voice, bus)
        finally:
            await voice.aclose()
            await models.aclose()


async def _file(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    assert mode.input_wav is not None and mode.output_wav is not None
    source, sink = FileSource(mode.input_wav, block_ms=config.vad.frame_ms), FileSink(mode.output_wav)
    async with Toolbox(config.tools, bus) as toolbox:
        models = await load_models(config, backend)
        voice = _voice_loop(config, bus, backend, sink, models, toolbox)
        heard = bus.subscribe(UtteranceEnded)
        try:
            await voice.listen(source, sequential=True)
        finally:
            await voice.aclose()
            await sink.aclose()
            await models.aclose()
    if heard.queue.empty():  # an empty reply file would look like an answer
        mode.output_wav.unlink(missing_ok=True)
        raise WavError(f"{mode.input_wav}: no speech found in it, so nothing to answer (no {mode.output_wav} written)")
    log.info(
        "wrote %d frames (%.2f s) of reply audio to %s",
        voice.frames_spoken,
        sink.played / PLAYBACK_RATE,
        mode.output_wav,
    )


async def _live(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    key, loop = config.barge_in.key, asyncio.get_running_loop()
    async with Assistant(config, bus=bus, backend=backend) as assistant:  # with the MQTT bridge when enabled
        with key_binding(key, lambda: loop.call_soon_threadsafe(assistant.interrupt, "key")) as bound:
            log.info("listening; %s", f"press {key!r} to interrupt" if bound else "no terminal, so no interrupt key")
            await assistant.wait()


def _voice_loop(
    config: Config, bus: EventBus, backend: ChatBackend, sink: AudioSink, models: Models, toolbox: Toolbox
) -> VoiceLoop:
    engine = models.engine
    assert engine is not None
    segmenter = VadSegmenter(config.vad) if models.transcriber is not None else None
    return VoiceLoop(
        config,
        bus,
        backend,
        transcriber=models.transcriber,
        engine=engine,
        encode_audio=engine.encode,
        sink=sink,
        segmenter=segmenter,
        turn_model=models.turn_model,
        reference=models.voice,
        tools=toolbox.registry,
    )
