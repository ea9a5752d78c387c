"""Every setting of the assistant as pydantic models, loaded from YAML with `--set a.b=c` overrides.

Secrets never live in the YAML: a section names the environment variable that holds them
(`api_key_env`, `password_env`) and `secret()` reads it when the component starts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

DeviceRef = int | str | None
KEY_NAMES = {"space": " ", "enter": "\n", "tab": "\t", "escape": "\x1b", "esc": "\x1b"}
"""Names a terminal key can be given by in the config (besides any single character)."""
PositiveMs = Annotated[int, Field(gt=0, le=60_000)]


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line a user should see."""


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans, only true and false: YAML 1.1 also reads on/off/yes/no as booleans, which
    string settings such as `barge_in.mode: off` must get as typed (pydantic still reads those words for booleans)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AudioConfig(Section):
    input_device: DeviceRef = Field(None, description="Microphone: index or (part of a) name; null = system default.")
    output_device: DeviceRef = Field(None, description="Speaker: index or (part of a) name; null = system default.")
    capture_rate: int | None = Field(None, ge=8000, le=192_000, description="null = the device's default rate.")
    playback_rate: int | None = Field(None, ge=8000, le=192_000, description="null = the device's default rate.")
    block_ms: int = Field(20, ge=5, le=200, description="Size of one sounddevice callback block.")
    input_latency_ms: int | None = Field(
        None, ge=1, le=2000, description="Microphone buffering asked of PortAudio; null = its 'high' default."
    )
    output_latency_ms: int = Field(
        400,
        ge=1,
        le=2000,
        description="Audio the speaker device holds: lower answers sooner, "
        "but stalls of a busy machine then chop speech.",
    )
    echo_cancellation: bool = Field(
        False, description="Take the assistant's own voice out of the microphone (WebRTC AEC3): for open speakers."
    )
    noise_suppression: bool = Field(False, description="With echo_cancellation: WebRTC's noise suppression too.")


class VadConfig(Section):
    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode: 0 lenient .. 3 strict.")
    min_level_db: float = Field(
        -60.0,
        ge=-120,
        le=0,
        description="Frames quieter than this (dBFS) are not speech: webrtcvad judges a sound's "
        "shape, not its loudness, and calls an echo canceller's faint residue speech. "
        "Lower it for a very quiet microphone.",
    )
    frame_ms: Literal[10, 20, 30] = 30
    preroll_ms: int = Field(300, ge=0, le=2000, description="Audio kept from before speech onset.")
    end_silence_ms: int = Field(
        600, ge=30, le=5000, description="Silence that ends a turn whose words do not decide it (see turn)."
    )
    min_speech_ms: int = Field(250, ge=0, le=5000, description="Shorter bursts (clicks, coughs) are dropped.")
    max_utterance_s: float = Field(30.0, gt=0, le=300)

    @model_validator(mode="after")
    def _end_covers_frames(self) -> VadConfig:
        if self.end_silence_ms < 3 * self.frame_ms:
            raise ValueError(
                f"end_silence_ms ({self.end_silence_ms}) must cover at least three VAD frames (3 x {self.frame_ms} ms)"
            )
        return self


HOLD_WORDS = (
    "and",
    "or",
    "but",
    "so",
    "because",
    "cause",
    "um",
    "uh",
    "er",
    "erm",
    "hmm",
    "like",
    "if",
    "then",
    "that",
    "which",
    "who",
    "when",
    "while",
    "with",
    "to",
    "of",
    "for",
    "the",
    "a",
    "an",
    "my",
    "your",
    "is",
    "are",
    "was",
    "i",
    "we",
    "you",
    "also",
    "although",
    "though",
    "unless",
    "until",
    "whether",
    "about",
    "in",
    "on",
    "at",
)


class ListenConfig(Section):
    """When the assistant listens: to everything (`always`), after its wake word (`wake_word`), or while it is asked
    to (`push_to_talk`: a key, `command/listen`, `Assistant.listen()`)."""

    mode: Literal["always", "wake_word", "push_to_talk"] = "always"
    wake_word: str = Field(
        "okay_nabu",
        description="A built-in microWakeWord model (okay_nabu, hey_jarvis, hey_mycroft, alexa) or a model's .json "
        "file with its .tflite beside it.",
    )
    threshold: float | None = Field(None, gt=0, lt=1, description="Detection threshold; null = the model's own.")
    follow_up_s: float = Field(
        8.0, ge=0, le=600, description="After a reply (or the wake word), listening without the wake word this long."
    )
    earcon: str | None = Field(None, description="A sound file played when the wake word is heard; null = none.")


class TurnConfig(Section):
    """When the user's turn is over: decided from the words said so far (`assistant/turn_end.py`)."""

    speculate_ms: int = Field(
        200,
        ge=0,
        le=5000,
        description="Silence after which the words so far are transcribed and the reply is prepared; 0 = off.",
    )
    look_ms: int = Field(
        150,
        ge=0,
        le=5000,
        description="Silence after which detectors model and both look at the turn so far (the quick transcript, "
        "the model's score), so that their verdict is ready when the pause comes at speculate_ms; 0 = at the pause.",
    )
    complete_ms: int = Field(250, ge=30, le=5000, description="Silence that ends a turn ending in a finished sentence.")
    incomplete_ms: int = Field(1200, ge=30, le=10_000, description="Silence that ends a turn ending mid-clause.")
    hold_words: list[str] = Field(
        default_factory=lambda: list(HOLD_WORDS), description="Last words that mark an unfinished clause."
    )
    detector: Literal["words", "model", "both"] = Field(
        "both",
        description="What decides a pause: the rules on its words, the Smart Turn model on its audio, or both (a "
        "quick transcript and the model must agree the turn is over; chosen on real speech, docs/benchmarks.md).",
    )
    model: str | None = Field(
        None, description="Smart Turn ONNX file for detectors model and both; null = the copy scripts/setup.sh placed."
    )
    model_threshold: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="Model probability above which a turn is complete (0.8: chosen on real speech, "
        "docs/benchmarks.md).",
    )
    take_back: bool = Field(
        True,
        description="Speech before the reply to a spoken turn is heard continues that turn: the reply is dropped "
        "unheard and the turn withdrawn (event TurnTakenBack).",
    )

    @field_validator("hold_words")
    @classmethod
    def _lower(cls, words: list[str]) -> list[str]:
        return [w.strip().lower() for w in words if w.strip()]

    @model_validator(mode="after")
    def _ordered(self) -> TurnConfig:
        if self.speculate_ms and not self.speculate_ms <= self.complete_ms <= self.incomplete_ms:
            raise ValueError(
                f"need speculate_ms ({self.speculate_ms}) <= complete_ms ({self.complete_ms}) <= incomplete_ms "
                f"({self.incomplete_ms})"
            )
        if self.speculate_ms and self.look_ms > self.speculate_ms:
            raise ValueError(f"look_ms ({self.look_ms}) must not exceed speculate_ms ({self.speculate_ms})")
        return self


class AsrConfig(Section):
    model: str = Field("tiny.en", description="faster-whisper size, hub id or local CT2 directory.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compute_type: str = "default"
    language: str | None = "en"
    beam_size: int = Field(1, ge=1, le=10)
    download_root: str | None = None
    window: Literal["full", "fitted"] = Field(
        "full",
        description="full: faster-whisper's own 30 s windows; fitted: Whisper's encoder reads the utterance and "
        "3 s of silence (about 10x faster on a CPU for a short turn, but it hears some last words differently).",
    )


def _check_http_url(value: str, example: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL, like {example}")
    return value


class OpenAIBackendConfig(Section):
    base_url: str | None = Field(None, description="null = https://api.openai.com/v1")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return value if value is None else _check_http_url(value, "http://localhost:11434/v1")

    model: str = "gpt-4o-mini"
    api_key_env: str | None = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(300, ge=1, le=32_768)
    timeout_s: float = Field(20.0, gt=0, le=600, description="Time allowed before the first token.")
    stall_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Time allowed between tokens once the reply has begun."
    )
    max_retries: int = Field(
        1, ge=0, le=5, description="Retries after a failed connection or a timeout, before any text."
    )

    def api_key(self) -> str | None:
        return secret(self.api_key_env)


class LocalBackendConfig(Section):
    model: str = Field("Qwen/Qwen2.5-0.5B-Instruct", description="Hub id or local directory.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_new_tokens: int = Field(200, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0, le=2)


class ScriptedCall(Section):
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedReply(Section):
    """A scripted reply that calls tools: `text` said first (may be empty), then `tool_calls` in one round."""

    text: str = ""
    tool_calls: list[ScriptedCall] = Field(default_factory=list)


class ScriptedBackendConfig(Section):
    replies: list[ScriptedReply] = Field(
        default_factory=lambda: [ScriptedReply(text="Hello! This is a scripted reply.")],
        min_length=1,
        description="Used in turn, one per request to the LLM (a reply that calls tools and the answer after the "
        "results are two): text, or {text, tool_calls}; '{result}' in a reply's text stands for the last tool "
        "result in the conversation.",
    )

    @field_validator("replies", mode="before")
    @classmethod
    def _text_is_a_reply(cls, replies: Any) -> Any:
        if isinstance(replies, list):
            return [{"text": reply} if isinstance(reply, str) else reply for reply in replies]
        return replies

    first_token_delay_s: float = Field(0.0, ge=0, le=60)
    token_delay_s: float = Field(0.0, ge=0, le=10)


class LlmConfig(Section):
    backend: Literal["openai", "local", "scripted"] = "local"
    system_prompt: str = (
        "You are a friendly voice assistant. Your replies are spoken aloud, so answer in one to three "
        "short, natural sentences. Never use markdown, lists, code, links or emoji."
    )
    apology: str | None = Field(
        "Sorry, I can't think right now.",
        description="Spoken when the LLM fails before its first token; null = silent.",
    )
    openai: OpenAIBackendConfig = Field(default_factory=OpenAIBackendConfig)
    local: LocalBackendConfig = Field(default_factory=LocalBackendConfig)
    scripted: ScriptedBackendConfig = Field(default_factory=ScriptedBackendConfig)


class SpeechServerConfig(Section):
    url: str = Field("http://127.0.0.1:8000", description="The speech server (python -m assistant.tts.server).")
    api_key_env: str | None = Field(None, description="Environment variable holding its API key; null = no key.")
    timeout_s: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Time allowed to connect, and between pieces of an answer (a request waiting for a free slot too).",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_http_url(value, "http://gpu-box:8000")

    def api_key(self) -> str | None:
        return secret(self.api_key_env)


class CsmConfig(Section):
    backend: Literal["local", "server"] = Field(
        "local", description="local: CSM runs inside the assistant; server: a speech server runs it (csm.server)."
    )
    model: str = Field("sesame/csm-1b", description="Hub id or local directory (either checkpoint layout).")
    mimi: str | None = Field(None, description="Mimi weights path; null = moshi's default repo.")
    tokenizer: str | None = Field(None, description="tokenizer.json path; null = the model directory's.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    speaker: int = Field(1, ge=0, le=9, description="The assistant's speaker id.")
    temperature: float = Field(0.9, ge=0, le=5)
    topk: int = Field(50, ge=1, le=2051)
    seed: int | None = None
    max_audio_ms: int | None = Field(
        None,
        gt=0,
        le=120_000,
        description="Cap on each spoken chunk (the first clause, then each sentence), not the whole reply; "
        "null = derived from the chunk's length.",
    )
    chunk_frames: int = Field(2, ge=1, le=50, description="80 ms frames per streamed audio chunk.")
    cuda_graphs: bool = True
    fused: bool = Field(
        False, description="Compile the per-frame work with TorchInductor (slower load, fewer GPU kernels)."
    )
    server: SpeechServerConfig = Field(default_factory=SpeechServerConfig)

    @model_validator(mode="after")
    def _server_key_is_there(self) -> CsmConfig:
        # checked with the rest of the config, before any model loads, not at the first reply
        if self.backend == "server" and self.server.api_key_env and self.server.api_key() is None:
            raise ValueError(
                f"server.api_key_env names ${self.server.api_key_env}, which is not set (the speech server's API key "
                "goes there)"
            )
        return self


class VoiceConfig(Section):
    path: str | None = Field(
        None,
        description="The assistant's voice: a reference clip (wav, flac, ogg...; any rate, mono or stereo) or a voice "
        "file (.safetensors) the assistant saved; null = the locked voice.",
    )
    text: str | None = Field(None, description="What the clip says, word for word; null = the .txt file beside it.")
    speaker: int | None = Field(
        None, ge=0, le=9, description="The speaker id the voice stands for; null = csm.speaker."
    )
    locked: bool = Field(
        True,
        description="Without a path: make a voice on the first run, keep it in the user's data directory and speak "
        "in it on every run (false: no reference, another voice each run).",
    )


class ConversationConfig(Section):
    max_turns: int = Field(20, ge=0, le=1000, description="Turns kept for the LLM's messages.")
    max_audio_turns: int = Field(6, ge=0, le=100, description="Most recent turns whose audio CSM hears.")
    max_audio_s: float = Field(60.0, ge=0, le=600, description="Audio seconds kept for CSM's context.")
    idle_reset_s: float | None = Field(
        None, gt=0, le=86_400, description="Forget the conversation after this long with no turn; null = never."
    )


class BargeInConfig(Section):
    mode: Literal["off", "vad"] = "off"
    min_speech_ms: int = Field(300, ge=30, le=5000, description="Speech needed before it interrupts.")
    tail_ms: int = Field(300, ge=0, le=5000, description="Mic stays ignored this long after speech ends (off mode).")
    hold_ms: int = Field(
        500,
        ge=0,
        le=10_000,
        description="vad mode: no barge-in in a reply's first milliseconds of sound or after it resumes from a pause, "
        "and speech heard then does not count toward min_speech_ms (an echo canceller converges meanwhile).",
    )
    resume_ms: int = Field(
        2000,
        ge=0,
        le=10_000,
        description="vad mode: speech pauses the reply; with words it interrupts, with none (a cough, 'mm-hm') "
        "within this long the reply resumes where it paused; 0 = speech interrupts at once.",
    )
    key: str | None = Field(
        "space",
        description="Terminal key that interrupts (with listen.mode push_to_talk: press to talk, again when done): "
        "one character, space, enter, tab or escape; null = none.",
    )

    @field_validator("key")
    @classmethod
    def _one_key(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1 and value.lower() not in KEY_NAMES:
            raise ValueError(f"must be one character, or one of {', '.join(KEY_NAMES)}")
        return value


class MqttConfig(Section):
    enabled: bool = Field(False, description="Run the MQTT bridge: events out, commands in (see the README).")
    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    tls: bool = False
    ca_file: str | None = Field(None, description="CA bundle for TLS; null = the system's.")
    username: str | None = None
    password_env: str | None = Field(None, description="Environment variable holding the broker password.")
    client_id: str | None = Field(None, description="null = '{topic_prefix}-{site_id}'; keep it stable and unique.")
    topic_prefix: str = "assistant"
    site_id: str = "default"
    keepalive_s: int = Field(30, ge=5, le=3600)
    max_payload_bytes: int = Field(16_384, ge=256, le=1_048_576, description="Larger commands are rejected.")
    reconnect_min_s: float = Field(0.5, gt=0, le=60, description="First wait before reconnecting; doubles per failure.")
    reconnect_max_s: float = Field(30.0, gt=0, le=600, description="Longest wait between reconnection attempts.")

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttConfig:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s}) is above reconnect_max_s ({self.reconnect_max_s})"
            )
        return self

    @model_validator(mode="after")
    def _password_is_there(self) -> MqttConfig:
        # checked with the rest of the config, before any model loads, not when the bridge first connects
        if self.enabled and self.password_env and self.password() is None:
            raise ValueError(
                f"password_env names ${self.password_env}, which is not set (the broker password goes there)"
            )
        return self

    @field_validator("topic_prefix", "site_id")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if not value or any(c in value for c in "+#\0"):
            raise ValueError("must be non-empty and contain no MQTT wildcards")
        return value

    def password(self) -> str | None:
        return secret(self.password_env)


class McpServerConfig(Section):
    """An MCP server whose tools the model may call: a program started over stdio (`command`, `args`, `env`), or a
    server reached over streamable HTTP (`url`, `headers`)."""

    name: str = Field(description="Names the server in logs and events.")
    command: str | None = Field(
        None, description="The program to start (stdio); python or python3 is the assistant's own interpreter."
    )
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] | None = Field(None, description="Its environment; null = the assistant's own.")
    cwd: str | None = Field(None, description="Its working folder; null = the assistant's.")
    url: str | None = Field(None, description="A streamable-HTTP server's endpoint, e.g. http://127.0.0.1:8000/mcp.")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP headers sent with each request.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return value if value is None else _check_http_url(value, "http://127.0.0.1:8000/mcp")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either command (a stdio server) or url (a streamable-HTTP server), not both")
        return self


class ToolsConfig(Section):
    """Tools the model may call: the embedding program's Python functions, MCP servers, and an MQTT host's."""

    enabled: list[str] | None = Field(
        None, description="The tools the model is offered, by name; null = every tool there is."
    )
    mcp: list[McpServerConfig] = Field(default_factory=list, description="MCP servers to start or reach.")
    mqtt: bool = Field(True, description="With mqtt.enabled, offer the tools a host announces on tool/manifest.")
    timeout_s: float = Field(10.0, gt=0, le=600, description="A call with no result by then fails (an error result).")
    start_timeout_s: float = Field(20.0, gt=0, le=600, description="Time an MCP server has to start and list tools.")
    filler: str | None = Field(
        "One moment.", description="Said when a call runs past filler_ms and nothing was said yet; null = never."
    )
    filler_ms: int = Field(700, ge=0, le=60_000)
    max_rounds: int = Field(
        4, ge=1, le=20, description="Rounds of calls in one reply; then the model must answer without tools."
    )
    max_result_chars: int = Field(4000, ge=100, le=1_000_000, description="Longer results are trimmed to this.")

    @field_validator("mcp")
    @classmethod
    def _unique_names(cls, servers: list[McpServerConfig]) -> list[McpServerConfig]:
        names = [server.name for server in servers]
        if len(names) != len(set(names)):
            raise ValueError(f"two MCP servers share a name: {names}")
        return servers


class LoggingConfig(Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    turn_lines: bool = Field(True, description="One summary line per turn.")


class Config(Section):
    audio: AudioConfig = Field(default_factory=AudioConfig)
    vad: VadConfig = Field(default_factory=VadConfig)
    listen: ListenConfig = Field(default_factory=ListenConfig)
    turn: TurnConfig = Field(default_factory=TurnConfig)
    asr: AsrConfig = Field(default_factory=AsrConfig)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    csm: CsmConfig = Field(default_factory=CsmConfig)
    voice: VoiceConfig = Field(default_factory=VoiceConfig)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig)
    barge_in: BargeInConfig = Field(default_factory=BargeInConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @model_validator(mode="after")
    def _speculation_covers_frames(self) -> Config:
        # the audio transcribed at a pause must be what the turn keeps when it ends (3 frames of trailing silence)
        for name in ("speculate_ms", "look_ms"):
            if 0 < (value := getattr(self.turn, name)) < 3 * self.vad.frame_ms:
                raise ValueError(
                    f"turn.{name} ({value}) must cover at least three VAD frames "
                    f"(3 x vad.frame_ms = {3 * self.vad.frame_ms} ms), or be 0"
                )
        return self


def secret(env_name: str | None) -> str | None:
    """The value of the environment variable a config names for a secret (None when unset)."""
    return os.environ.get(env_name) if env_name else None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as a YAML scalar or list); a setting that takes text gets the
    value as typed where YAML reads a kind the setting cannot take (`Be brief: one sentence.` is a mapping to YAML)."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    kinds = _kinds(path)
    if str in kinds and value is not None and not isinstance(value, tuple(k for k in kinds if isinstance(k, type))):
        value = raw.strip()
    return path, value


def _kinds(path: list[str]) -> tuple[Any, ...]:
    """The types the setting at `path` takes (those of a union, or the one); () for no such setting."""
    kind: Any = Config
    for part in path:
        fields = getattr(kind, "model_fields", None) if isinstance(kind, type) else None
        if not isinstance(fields, dict) or part not in fields:
            return ()
        kind = fields[part].annotation
    return get_args(kind) if isinstance(kind, UnionType) or get_origin(kind) is Union else (kind,)


def _apply_override(data: dict[str, Any], path: list[str], value: Any, origin: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _lookup(data: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return None
    return data


def _describe(error: ValidationError, data: dict[str, Any], file: Path, overrides: dict[tuple[str, ...], str]) -> str:
    first = error.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # an override may name a key below the one at fault (--set nosuch.key=1 is an unknown 'nosuch')
    origin = next(
        (text for path, text in overrides.items() if loc[: len(path)] == path or path[: len(loc)] == loc), None
    )
    source = f"{file} (--set {origin})" if origin else f"{file}"
    key = ".".join(str(p) for p in loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    value = _lookup(data, loc)
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "string_type" and isinstance(value, (dict, list)):  # YAML read `a: b` or `[a]` as such
        kind = "a mapping" if isinstance(value, dict) else "a list"
        return f"{source}: {key} = {value!r}: YAML read it as {kind}; quote the text to keep it as typed"
    shown = "" if isinstance(value, dict) or first["type"] == "missing" else f" = {value!r}"
    return f"{source}: {key}{shown}: {message}"


def _preset(path: Path) -> Path:
    """`path`, or for a relative path that is not there, the preset it names (`configs/x.yaml` or `x.yaml`)."""
    if path.is_absolute() or path.exists():
        return path
    parts = path.parts[1:] if path.parts[:1] == (CONFIG_DIR.name,) else path.parts
    preset = CONFIG_DIR.joinpath(*parts)
    return preset if parts and preset.is_file() else path


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (default: configs/default.yaml), apply overrides, validate. A relative path that is not there
    is looked up among the presets (`configs/kiosk.yaml` or `kiosk.yaml`), so they are found from any folder.

    Raises ConfigError with one line naming the file, key and value.
    """
    file = _preset(Path(path)) if path is not None else DEFAULT_CONFIG
    try:
        data = _yaml(file.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        presets = "" if file.is_absolute() else f" (nor among the presets in {CONFIG_DIR})"
        raise ConfigError(f"{file}: config file not found{presets}") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: a folder, not a config file (the presets are the .yaml files in it)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start}): is it a YAML file?") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read it: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{file}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a mapping of sections at the top level")
    applied: dict[tuple[str, ...], str] = {}
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value, origin=f"--set {text}")
        applied[tuple(keys)] = text
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data, file, applied)) from None
    if file.resolve().parent == CONFIG_DIR:  # a preset's programs (the kiosk's MCP server) are the repository's files
        for server in config.tools.mcp:
            if server.command is not None and server.cwd is None:
                server.cwd = str(CONFIG_DIR.parent)
    return config
