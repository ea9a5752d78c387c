"""The assistant as a library, for programs that embed it (a kiosk's or a robot's own software).

```python
async with Assistant.from_config("configs/kiosk.yaml") as assistant:
    with assistant.subscribe(ReplyText) as replies:
        print(await assistant.ask("What can you do?"))
```

Tools the model may call are Python functions handed in (`Assistant(config, tools=[move])`) or registered with
`@assistant.tool`, besides the config's MCP servers and, with MQTT, the tools a host announces.

Every part can be handed in ready-made (tests pass fakes; a program may share a loaded model);
what is not given is opened or loaded by `start()` from the config: the devices first, so a
missing microphone is reported before minutes of model loading, then the models side by side.
Parts the assistant opened it also closes. Call its methods on the event loop it runs on (from
another thread, through `loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from assistant.asr import Transcriber
from assistant.audio.aec3 import EchoCancellerError
from assistant.audio.echo import EchoCanceller
from assistant.audio.streams import AudioSink, AudioSource
from assistant.config import Config, load_config
from assistant.conversation import Conversation
from assistant.events import ErrorEvent, Event, EventBus, Subscription
from assistant.llm.backend import ChatBackend
from assistant.llm.factory import make_backend
from assistant.mqtt import MqttBridge, MqttSetupError
from assistant.tools.python import PythonTool
from assistant.tools.toolbox import Toolbox, ToolFunction
from assistant.tts.reference_voice import ReferenceVoice
from assistant.vad import VadSegmenter
from pipelines.attention import Attention, load_attention
from pipelines.components import Models, StartupError, load_models, load_voice
from pipelines.reply import SpeechEngine, Spoken
from pipelines.voice_loop import AudioEncoder, TurnDetector, VoiceLoop

if TYPE_CHECKING:
    from assistant.audio.live import DeviceStream

log = logging.getLogger(__name__)


class Assistant:
    """Listens on `source`, answers through `sink`; `say`, `ask`, `interrupt`, mute and reset it from code.

    `encode_audio` (Mimi-encoding the user's voice for CSM's context) comes with an engine that
    `start()` loads; with an engine handed in, pass it too, or the voice context is text-only.

    `voice` is the assistant's voice: a reference clip or saved voice file (a path, as `voice.path`), or a
    ReferenceVoice. Without it, an engine that `start()` loads speaks in the config's voice (`voice.*`, by default
    the locked voice); an engine handed in speaks in `voice.path` if set, else without a reference.
    """

    def __init__(
        self,
        config: Config,
        *,
        bus: EventBus | None = None,
        backend: ChatBackend | None = None,
        engine: SpeechEngine | None = None,
        encode_audio: AudioEncoder | None = None,
        transcriber: Transcriber | None = None,
        source: AudioSource | None = None,
        sink: AudioSink | None = None,
        voice: ReferenceVoice | str | Path | None = None,
        tools: Sequence[ToolFunction] = (),
    ) -> None:
        # a path is loaded with the engine, as the config's would be; a ReferenceVoice is used as is
        if voice is not None:
            path = None if isinstance(voice, ReferenceVoice) else str(voice)
            config = config.model_copy(
                update={"voice": config.voice.model_copy(update={"path": path, "locked": False})}
            )
        self.config = config
        self.bus = bus or EventBus()
        self._backend, self._engine, self._encode_audio = backend, engine, encode_audio
        self._transcriber, self._source, self._sink = transcriber, source, sink
        self._turn_model: TurnDetector | None = None  # loaded with Whisper when turn.detector is model
        self._reference = voice if isinstance(voice, ReferenceVoice) else None
        self.echo_canceller: EchoCanceller | None = None  # with audio.echo_cancellation, on the devices it opened
        self._owned: list[DeviceStream | ChatBackend | Models] = []  # closed by stop(), last opened first
        self._voice: VoiceLoop | None = None
        self._listening: asyncio.Task[None] | None = None
        self._bridge: MqttBridge | None = None
        self._attention = Attention()  # the wake word and its earcon, loaded by start()
        self.toolbox = Toolbox(config.tools, self.bus, tools)
        self._tools_open = False

    @classmethod
    def from_config(
        cls,
        config: Config | str | Path,
        overrides: list[str] | tuple[str, ...] = (),
        *,
        tools: Sequence[ToolFunction] = (),
        **parts: Any,
    ) -> Assistant:
        """An assistant from the config (a Config, or a YAML path with `--set`-style overrides; a preset's name such as
        `configs/kiosk.yaml` is found from any folder), with the Python functions `tools` for the model to call and
        any part handed in ready-made (`parts`: the keyword arguments of `Assistant`)."""
        return cls(config if isinstance(config, Config) else load_config(config, overrides), tools=tools, **parts)

    async def __aenter__(self) -> Assistant:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the devices and load the models not handed in, then listen (and bridge MQTT when enabled).

        Raises StartupError or AudioDeviceError, naming the part, when one cannot be had, and AttentionError for a
        `listen` setting that cannot be used (before anything opens).
        """
        if self._voice is not None:
            raise RuntimeError("the assistant is already started")
        self._attention = load_attention(self.config.listen)
        try:
            await self._open_devices()
            self._tools_open = True
            await asyncio.gather(self._load_models(), self.toolbox.start())
            self._voice = self._voice_loop()
            assert self._source is not None
            self._listening = asyncio.create_task(self._voice.listen(self._source), name="VoiceLoop.listen")
            if self.config.mqtt.enabled:
                tools = self.toolbox.registry if self.config.tools.mqtt else None
                self._bridge = MqttBridge(self.config.mqtt, self.bus, self, tools)
                await self._bridge.start()
        except MqttSetupError as error:
            await self.stop()
            raise StartupError(str(error)) from None
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop the bridge, end what is being said and drop what is queued, stop listening and close what `start()`
        opened. Every part is closed even when closing one fails or the task stopping them is cancelled meanwhile
        (Ctrl-C at `asyncio.run`, a timeout): then the cancellation, or else the first error, is raised at the end."""
        errors: list[BaseException] = []

        async def close(closing: Awaitable[Any]) -> None:
            try:
                await closing
            except (Exception, asyncio.CancelledError) as error:
                errors.append(error)

        bridge, self._bridge = self._bridge, None
        if bridge is not None:
            await close(bridge.aclose())
        if self._voice is not None:
            await close(self._voice.aclose())
        listening, self._listening = self._listening, None
        if listening is not None:
            listening.cancel()
            await close(asyncio.wait([listening]))  # its cancellation is not this task's
            if listening.done() and not listening.cancelled() and (failed := listening.exception()) is not None:
                errors.append(failed)
        while self._owned:
            await close(self._owned.pop().aclose())
        if self._tools_open:
            self._tools_open = False
            await close(self.toolbox.aclose())
        self._voice = None
        if errors:
            raise next((e for e in errors if isinstance(e, asyncio.CancelledError)), errors[0])

    async def wait(self) -> None:
        """Until the audio source ends (a microphone: until `stop()`)."""
        if self._listening is not None:
            await asyncio.wait([self._listening])

    def interrupt(self, source: str = "api", *, all: bool = False) -> bool:
        """Stop what is sounding or about to sound, at once; what was heard of it is kept. With `all`, every turn queued
        behind it is dropped too. False when nothing was being said or waiting to be."""
        return self._loop().interrupt(source, all=all)

    def say(self, text: str) -> asyncio.Task[str]:
        """Speak `text` in the assistant's voice, as its own turn of the conversation.

        Starts at once (after the turn before it); the task gives the text the user heard.
        """
        return _heard(self._loop().say(_words(text, "say")))

    def ask(self, text: str) -> asyncio.Task[str]:
        """A typed turn: the reply is spoken, and the task gives the text of it the user heard."""
        return _heard(self._loop().ask(_words(text, "ask")))

    def tool(
        self, function: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None
    ) -> Any:
        """`@assistant.tool` (or `@assistant.tool(name=...)`): offer a function to the model, from its next request.
        The schema comes from the type hints, the description from the docstring (`assistant.tools.python`)."""

        def register(f: Callable[..., Any]) -> PythonTool:
            return self.toolbox.add(PythonTool(f, name=name, description=description))

        return register if function is None else register(function)

    def listen(self, source: str = "api", *, release: bool = False) -> None:
        """Listen now without the wake word (`listen.mode` wake_word or push_to_talk: a robot's button, a face at the
        kiosk). With push-to-talk, `release=True` says the button went up: what was said is the turn."""
        if release:
            self._loop().release()
        else:
            self._loop().attend(source)

    def mute(self) -> None:
        """Nothing said from now on is heard, transcribed or interrupts the assistant."""
        self._loop().set_muted(True)

    def unmute(self) -> None:
        self._loop().set_muted(False)

    @property
    def muted(self) -> bool:
        return self._loop().muted

    def reset(self) -> asyncio.Task[Any]:
        """Interrupt, drop the turns queued, and start a new conversation once the turn under way has ended (the task
        ends then)."""
        return self._loop().reset()

    def subscribe(self, *types: type[Event], maxsize: int = 1000) -> Subscription:
        """The assistant's events of these types (all when none are given), from now on."""
        return self.bus.subscribe(*types, maxsize=maxsize)

    @property
    def conversation(self) -> Conversation:
        return self._loop().conversation

    @property
    def busy(self) -> bool:
        """A turn is being answered (thinking or speaking)."""
        return self._loop().busy

    def _loop(self) -> VoiceLoop:
        if self._voice is None:
            raise RuntimeError("the assistant is not started: `await assistant.start()` or `async with assistant:`")
        return self._voice

    async def _open_devices(self) -> None:
        from assistant.audio.microphone import Microphone
        from assistant.audio.speaker import Speaker

        audio, report = self.config.audio, device_reporter(self.bus)
        canceller = None
        if self._source is None:
            if audio.echo_cancellation:
                try:
                    canceller = self.echo_canceller = EchoCanceller(audio.noise_suppression)
                except EchoCancellerError as error:
                    raise StartupError(f"audio.echo_cancellation: {error}") from None
            microphone = Microphone(
                audio.input_device,
                audio.block_ms,
                audio.capture_rate,
                on_error=report,
                latency_ms=audio.input_latency_ms,
            )
            microphone.process = canceller.clean if canceller is not None else None  # in its audio thread
            self._owned.append(microphone)
            await microphone.start()
            self._source = microphone
        if self._sink is None:
            speaker = Speaker(
                audio.output_device,
                playback_rate=audio.playback_rate,
                on_error=report,
                latency_ms=audio.output_latency_ms,
                on_render=canceller.rendered if canceller is not None else None,
                on_drop=canceller.dropped if canceller is not None else None,
            )
            self._owned.append(speaker)
            await speaker.start()
            self._sink = speaker

    async def _load_models(self) -> None:
        """CSM, Whisper and the LLM backend's model, those not handed in, loaded side by side."""
        if self._backend is None:
            self._backend = make_backend(self.config.llm)
            self._owned.append(self._backend)
        models = await load_models(
            self.config, self._backend, engine=self._engine is None, transcriber=self._transcriber is None
        )
        self._owned.append(models)  # a speech server's connections
        if models.engine is not None:
            self._engine, self._encode_audio = models.engine, models.engine.encode
            self._reference = self._reference or models.voice
        elif self.config.voice.path is not None and self._reference is None:
            self._reference = await load_voice(self.config, self._engine)  # type: ignore[arg-type]  # an engine
        if models.transcriber is not None:
            self._transcriber, self._turn_model = models.transcriber, models.turn_model

    def _voice_loop(self) -> VoiceLoop:
        assert self._backend is not None
        return VoiceLoop(
            self.config,
            self.bus,
            self._backend,
            transcriber=self._transcriber,
            engine=self._engine,
            encode_audio=self._encode_audio,
            sink=self._sink,
            segmenter=VadSegmenter(self.config.vad),
            turn_model=self._turn_model,
            reference=self._reference,
            tools=self.toolbox.registry,
            wake_word=self._attention.wake_word,
            earcon=self._attention.earcon,
        )


def device_reporter(bus: EventBus) -> Callable[[str], None]:
    """Device trouble (already phrased, naming the device) to the log and the bus, from any thread."""

    def report(message: str) -> None:
        log.warning("%s", message)
        bus.publish_threadsafe(ErrorEvent(source="audio", message=message))

    return report


def _words(text: str, what: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{what}() needs some text, got {text!r}")
    return text


def _heard(turn: asyncio.Task[Spoken | None]) -> asyncio.Task[str]:
    async def text() -> str:
        spoken = await turn
        return spoken.text if spoken is not None else ""

    return asyncio.ensure_future(text())
