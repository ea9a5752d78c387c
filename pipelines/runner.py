"""Choose and run a mode (live voice, text, wav file) with the shared listeners on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant.audio.streams import PLAYBACK_RATE, AudioSink, FileSink, FileSource
from assistant.audio.wavfile import WavError
from assistant.config import Config, VadConfig
from assistant.events import EventBus, Subscription, UserTranscript, UtteranceEnded
from assistant.llm.backend import ChatBackend
from assistant.llm.factory import make_backend
from assistant.logs import log_turns
from assistant.tools.toolbox import Toolbox
from assistant.vad import VadSegmenter
from pipelines.assistant import Assistant, device_reporter
from pipelines.attention import Attention, load_attention
from pipelines.components import Models, StartupError, load_models, start_backend
from pipelines.keyboard import key_binding
from pipelines.reply import Spoken
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
    listeners = [asyncio.create_task(_log_cut_turns(bus.subscribe(UtteranceEnded), config.vad))]
    listeners += [asyncio.create_task(log_turns(bus))] if config.logging.turn_lines else []
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


async def _log_cut_turns(ended: Subscription, vad: VadConfig) -> None:
    """Say so when a turn ends because it reached `vad.max_utterance_s`, not because the speaker paused."""
    with ended:
        while True:
            event = await ended.get()
            assert isinstance(event, UtteranceEnded)
            if event.duration_s >= vad.max_utterance_s - vad.frame_ms / 2000:
                log.info(
                    "a turn reached vad.max_utterance_s (%g s) without a pause: it ends there and the speech that "
                    "follows is the next turn",
                    vad.max_utterance_s,
                )


async def _text(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    async with contextlib.AsyncExitStack() as stack:
        speaker = None
        if mode.speech:
            from assistant.audio.speaker import Speaker

            audio = config.audio
            speaker = Speaker(
                audio.output_device,
                playback_rate=audio.playback_rate,
                on_error=device_reporter(bus),
                latency_ms=audio.output_latency_ms,
            )
            await stack.enter_async_context(speaker)
        toolbox = await stack.enter_async_context(Toolbox(config.tools, bus))
        if speaker is not None:
            models = await load_models(config, backend, transcriber=False)
            stack.push_async_callback(models.aclose)
            voice = _voice_loop(config, bus, backend, speaker, models, toolbox)
        else:
            await start_backend(backend)
            voice = VoiceLoop(config, bus, backend, tools=toolbox.registry)
        stack.push_async_callback(voice.aclose)
        await _start_bridge(config, bus, voice, toolbox, stack)
        await run_text_mode(voice, bus)


async def _file(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    assert mode.input_wav is not None and mode.output_wav is not None
    source, sink = FileSource(mode.input_wav, block_ms=config.vad.frame_ms), FileSink(mode.output_wav)
    if config.mqtt.enabled:
        log.info("mqtt: the bridge is off in file mode (it answers a recording, not commands); it runs live and --text")
    attention = load_attention(config.listen)  # a recording with the wake word in it can be tried
    async with Toolbox(config.tools, bus) as toolbox:
        models = await load_models(config, backend)
        voice = _voice_loop(config, bus, backend, sink, models, toolbox, attention)
        heard, said = bus.subscribe(UtteranceEnded), bus.subscribe(UserTranscript)
        try:
            await voice.listen(source, sequential=True)
        finally:
            await voice.aclose()
            if not said.queue.empty():  # a reply file only for words heard (a stopped run keeps what it has)
                await sink.aclose()
            await models.aclose()
    turns = heard.queue.qsize() + heard.dropped
    if not turns:  # an empty reply file would look like an answer
        raise WavError(f"{mode.input_wav}: no speech found in it, so nothing to answer (no {mode.output_wav} written)")
    if said.queue.empty():
        raise WavError(
            f"{mode.input_wav}: no words heard in its {turns} turn{'s' if turns > 1 else ''} of sound, so nothing to "
            f"answer (no {mode.output_wav} written)"
        )
    log.info(
        "wrote %d frames (%.2f s) of reply audio to %s",
        voice.frames_spoken,
        sink.played / PLAYBACK_RATE,
        mode.output_wav,
    )


async def _live(config: Config, mode: Mode, bus: EventBus, backend: ChatBackend) -> None:
    key, loop = config.barge_in.key, asyncio.get_running_loop()
    talk = config.listen.mode == "push_to_talk"
    async with Assistant(config, bus=bus, backend=backend) as assistant:  # with the MQTT bridge when enabled
        talking = False

        def pressed() -> None:
            """The key interrupts; with push-to-talk it starts a turn, and a second press ends it (a terminal sees
            no key going up)."""
            nonlocal talking
            if talk:
                talking = not talking
                assistant.listen("key", release=not talking)
            else:
                assistant.interrupt("key")

        with key_binding(key, lambda: loop.call_soon_threadsafe(pressed)) as bound:
            off = (
                "the interrupt key is off (barge_in.key is null)" if key is None else "no terminal, so no interrupt key"
            )
            what = "to talk, and again when you are done" if talk else "to interrupt"
            log.info("listening; %s", f"press {key!r} {what}" if bound else off)
            await assistant.wait()


def _voice_loop(
    config: Config,
    bus: EventBus,
    backend: ChatBackend,
    sink: AudioSink,
    models: Models,
    toolbox: Toolbox,
    attention: Attention | None = None,
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
        wake_word=attention.wake_word if attention is not None else None,
        earcon=attention.earcon if attention is not None else None,
    )


async def _start_bridge(
    config: Config, bus: EventBus, voice: VoiceLoop, toolbox: Toolbox, stack: contextlib.AsyncExitStack
) -> None:
    """The MQTT bridge on a voice loop without a microphone (text mode), when `mqtt.enabled`; closed by `stack`."""
    if not config.mqtt.enabled:
        return
    from assistant.mqtt import MqttBridge, MqttSetupError

    bridge = MqttBridge(config.mqtt, bus, LoopCommands(voice), toolbox.registry if config.tools.mqtt else None)
    stack.push_async_callback(bridge.aclose)
    try:
        await bridge.start()
    except MqttSetupError as error:
        raise StartupError(str(error)) from None


class LoopCommands:
    """The MQTT bridge's commands carried out by a voice loop (what `Assistant` does live)."""

    def __init__(self, voice: VoiceLoop) -> None:
        self.voice = voice

    def interrupt(self, source: str = "api", *, all: bool = False) -> bool:
        return self.voice.interrupt(source, all=all)

    def say(self, text: str) -> asyncio.Future[str]:
        return _heard(self.voice.say(text))

    def ask(self, text: str) -> asyncio.Future[str]:
        return _heard(self.voice.ask(text))

    def mute(self) -> None:
        self.voice.set_muted(True)

    def unmute(self) -> None:
        self.voice.set_muted(False)

    def listen(self, source: str = "api", *, release: bool = False) -> None:  # as Assistant.listen
        if release:
            self.voice.release()
        else:
            self.voice.attend(source)

    def reset(self) -> asyncio.Task[Any]:
        return self.voice.reset()


def _heard(turn: asyncio.Task[Spoken | None]) -> asyncio.Future[str]:
    async def text() -> str:
        spoken = await turn
        return spoken.text if spoken is not None else ""

    return asyncio.ensure_future(text())
