"""Choose and run a mode (live voice, text, wav file) with the shared listeners on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Config
from assistant.events import ErrorEvent, EventBus
from assistant.llm.backend import ChatBackend
from assistant.llm.factory import make_backend
from assistant.logs import log_turns
from assistant.vad import VadSegmenter
from pipelines.components import load_engine, load_transcriber
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
        await run_text_mode(VoiceLoop(config, bus, backend), bus)
        return
    from assistant.audio.speaker import Speaker

    engine = await asyncio.to_thread(load_engine, config.csm)
    speaker = Speaker(config.audio.output_device, playback_rate=config.audio.playback_rate, on_error=_reporter(bus, "speaker"))
    voice = VoiceLoop(config, bus, backend, engine=engine, encode_audio=engine.codec.encode, sink=speaker)
    try:
        await run_text_mode(voice, bus)
    finally:
        await voice.aclose()
        await speaker.aclose()


async def _file(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    from assistant.audio.streams import FileSink, FileSource

    assert mode.input_wav is not None and mode.output_wav is not None
    source = FileSource(mode.input_wav, block_ms=config.vad.frame_ms)
    transcriber, engine = await asyncio.gather(
        asyncio.to_thread(load_transcriber, config.asr), asyncio.to_thread(load_engine, config.csm)
    )
    sink = FileSink(mode.output_wav)
    voice = VoiceLoop(
        config, bus, backend, transcriber=transcriber, engine=engine, encode_audio=engine.codec.encode, sink=sink,
        segmenter=VadSegmenter(config.vad),
    )
    try:
        await voice.listen(source, sequential=True)
    finally:
        await voice.aclose()
        await sink.aclose()
    log.info("wrote %.1f s of reply audio to %s", sink.played / 24_000, mode.output_wav)


async def _live(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    from assistant.audio.microphone import Microphone
    from assistant.audio.speaker import Speaker

    audio = config.audio
    transcriber, engine = await asyncio.gather(
        asyncio.to_thread(load_transcriber, config.asr), asyncio.to_thread(load_engine, config.csm)
    )
    microphone = Microphone(
        audio.input_device, block_ms=audio.block_ms, capture_rate=audio.capture_rate, on_error=_reporter(bus, "microphone")
    )
    speaker = Speaker(audio.output_device, playback_rate=audio.playback_rate, on_error=_reporter(bus, "speaker"))
    voice = VoiceLoop(
        config, bus, backend, transcriber=transcriber, engine=engine, encode_audio=engine.codec.encode, sink=speaker,
        segmenter=VadSegmenter(config.vad),
    )
    loop = asyncio.get_running_loop()
    key = config.barge_in.key
    try:
        with key_binding(key, lambda: loop.call_soon_threadsafe(voice.interrupt, "key")) as bound:
            log.info("listening; %s", f"press {key} to interrupt" if bound else "no terminal, so no interrupt key")
            await voice.listen(microphone)
    finally:
        await voice.aclose()
        await microphone.aclose()
        await speaker.aclose()


def _reporter(bus: EventBus, source: str) -> Callable[[str], None]:
    def report(message: str) -> None:
        log.warning("%s: %s", source, message)
        bus.publish_threadsafe(ErrorEvent(source=source, message=message))

    return report
