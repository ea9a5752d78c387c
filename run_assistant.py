#!/usr/bin/env python3
"""Run the voice assistant: listen, transcribe, think, and answer in CSM's voice."""

from __future__ import annotations

import _thread
import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from assistant.config import Config

# Everything else is imported inside main(), so that Ctrl-C or SIGTERM while it loads still stops cleanly.
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _stop_on_sigterm() -> None:
    """SIGTERM before (and after) the event loop's own handler stops it as Ctrl-C does: cleanly, with a message."""

    def terminated(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminated)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """The reason first, then where the options are (argparse's usage block is in --help)."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message}\nRun '{self.prog} --help' for the options.\n")


class Once(argparse.Action):
    """An option given once: a second one would silently replace the first."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: Any = None
    ) -> None:
        if (first := getattr(namespace, self.dest)) is not None:
            more = "; one config file, with --set for single settings" if self.dest == "config" else ""
            parser.error(f"{option} is given twice ({first} and {value}): give it once{more}")
        setattr(namespace, self.dest, value)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        description="A voice assistant: microphone -> VAD -> Whisper -> LLM -> Sesame CSM -> speaker.",
        epilog="Examples:\n"
        "  run_assistant.py                          talk through the default microphone and speaker\n"
        "  run_assistant.py --text                   type instead of speaking\n"
        "  run_assistant.py --input q.wav --output a.wav   answer a recording into a file\n"
        "  run_assistant.py --config configs/openai.yaml --set llm.openai.model=gpt-4o\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        action=Once,
        type=Path,
        metavar="YAML",
        help="configuration file (default: configs/default.yaml)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set vad.aggressiveness=3 (repeatable; VALUE is read as YAML)",
    )
    parser.add_argument(
        "--list-devices",
        action="store_true",
        help="list audio input and output devices with their default sample rates, then exit",
    )
    parser.add_argument(
        "--input-device", action=Once, metavar="INDEX|NAME", help="microphone to use, live (see --list-devices)"
    )
    parser.add_argument(
        "--output-device", action=Once, metavar="INDEX|NAME", help="speaker to use, live or --text (see --list-devices)"
    )
    parser.add_argument("--text", action="store_true", help="type to the assistant instead of speaking")
    parser.add_argument(
        "--no-speech",
        action="store_true",
        help="with --text: print replies without loading the speech model",
    )
    parser.add_argument(
        "--input",
        action=Once,
        type=Path,
        metavar="AUDIO",
        help="headless: answer the speech in this audio file (wav, FLAC, OGG, AIFF, MP3: what libsndfile reads)",
    )
    parser.add_argument(
        "--output",
        action=Once,
        type=Path,
        metavar="AUDIO",
        help="headless: write the spoken replies here (24 kHz; .wav, or .flac, .ogg, .aiff, .mp3 by its name)",
    )
    parser.add_argument(
        "--voice",
        action=Once,
        type=Path,
        metavar="FILE",
        help="speak in this voice: a reference clip (5-15 s; its transcript in a .txt file of the same name, or "
        "--set voice.text=...) or a voice file the assistant saved",
    )
    parser.add_argument(
        "--push-to-talk",
        action="store_true",
        help="listen only while asked: press barge_in.key to talk and again when done (listen.mode push_to_talk)",
    )
    parser.add_argument("--show-voice", action="store_true", help="say which voice the assistant speaks in, then exit")
    parser.add_argument(
        "--reset-voice",
        action="store_true",
        help="forget the locked voice (the next run makes a new one), then exit",
    )
    parser.add_argument(
        "--log-level",
        action=Once,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="how much to log (default: logging.level from the config)",
    )
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = [f"audio.input_device={args.input_device}"] if args.input_device else []
    extra += [f"audio.output_device={args.output_device}"] if args.output_device else []
    extra += [f"logging.level={args.log_level}"] if args.log_level else []
    return [*args.overrides, *extra]


def _list_devices() -> int:
    from assistant.audio.devices import AudioDeviceError, describe_devices, list_devices

    try:
        print(describe_devices(list_devices()))
    except AudioDeviceError as exc:
        print(f"No audio devices available: {exc}")
    return 0


def _show_voice(path: str | None, locked: bool) -> int:
    from assistant.tts.reference_voice import ReferenceVoice, VoiceError, locked_voice_path

    lock = locked_voice_path()
    if path is not None:  # checked as a run checks it
        print(f"voice: {path} (voice.path)")
    elif not locked:
        print("voice: none (voice.locked is false): each run speaks in another voice")
    if lock.is_file():
        try:
            voice = ReferenceVoice.load(lock)
        except VoiceError as exc:
            print(f"locked voice: {exc}; --reset-voice removes it")
            return EXIT_FAILURE
        print(
            f"locked voice: {lock} (speaker {voice.speaker}, {voice.seconds:.1f} s: {voice.text!r})"
            + ("" if path is None and locked else "; not in use")
        )
    else:
        print(
            f"locked voice: none yet; {'the first run makes it' if path is None and locked else 'not in use'} ({lock})"
        )
    return 0


def _check_voice(config: Config) -> None:
    """What a run refuses in `voice.path` (VoiceError naming it), checked before any model loads: the file or clip is
    there and readable, a clip has audio and its transcript, and it fits a quarter of CSM's window (when the model's
    config.json and tokenizer are on this machine; otherwise that is checked once the model is loaded)."""
    import soundfile

    from assistant.tts.reference_voice import (
        ReferenceVoice,
        VoiceError,
        check_voice_source,
        is_voice_file,
        transcript_of,
    )

    if config.voice.path is None:
        return
    path = Path(config.voice.path)
    check_voice_source(path, config.voice.text)
    if is_voice_file(path):
        saved = ReferenceVoice.load(path)
        text, frames = saved.text, saved.codes.shape[-1]
    else:
        info = soundfile.info(str(path))
        if not info.frames:
            raise VoiceError(f"{path}: the voice clip holds no audio")
        frames = -(-info.frames * 25 // (2 * info.samplerate))  # Mimi's 80 ms frames, the last one partial
        text = transcript_of(path, config.voice.text)
    speaker = config.voice.speaker if config.voice.speaker is not None else config.csm.speaker
    if (window := _csm_window(config)) is None:
        return
    import json

    from assistant.tts.csm.prompt import TextEncoder
    from assistant.tts.csm.speech_plan import REFERENCE_SHARE

    try:
        raw = json.loads(window[0].read_text())
        positions = int(raw.get("max_position_embeddings") or raw.get("max_seq_len") or 2048)
        words = len(TextEncoder(window[1]).encode(text, speaker))
    except Exception:  # a broken checkpoint or tokenizer: loading the model says what is wrong with it
        return
    if words + frames + 1 > (limit := positions // REFERENCE_SHARE):
        raise VoiceError(
            f"{path}: the voice takes {words + frames + 1} of the model's {positions} positions ({words} for its "
            f"transcript, {frames + 1} for {frames * 0.08:.1f} s of audio); it may take {limit} (a "
            f"{REFERENCE_SHARE}th of the window): use a shorter clip (5-15 s is best)"
        )


def _csm_window(config: Config) -> tuple[Path, Path] | None:
    """The local CSM's config.json and tokenizer.json, where both are on this machine (nothing is downloaded)."""
    from assistant.hub import is_hub_id

    csm, model = config.csm, Path(config.csm.model).expanduser()

    def find(name: str) -> Path | None:
        if model.is_dir():
            return model / name
        if is_hub_id(csm.model):
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(csm.model, name)
            return Path(found) if isinstance(found, str) else None
        return None

    settings, tokenizer = (
        find("config.json"),
        Path(csm.tokenizer).expanduser() if csm.tokenizer else find("tokenizer.json"),
    )
    if csm.backend != "local" or settings is None or tokenizer is None or not settings.is_file():
        return None
    return (settings, tokenizer) if tokenizer.is_file() else None


def _reset_voice() -> int:
    from assistant.tts.reference_voice import locked_voice_path

    lock = locked_voice_path()
    if not lock.is_file():
        print(f"no locked voice to forget ({lock})")
        return 0
    lock.unlink()
    print(f"forgot the locked voice ({lock}); the next run makes a new one")
    return 0


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Options that do not go together, and the files of file mode, checked before anything loads."""
    if args.show_voice and args.reset_voice:
        parser.error("--show-voice and --reset-voice: choose one (one shows the locked voice, the other forgets it)")
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together")
    if args.text and args.input:
        parser.error("--text and --input/--output are different modes; choose one")
    if args.no_speech and not args.text:
        parser.error("--no-speech goes with --text")
    if args.input_device is not None and (args.input or args.text):
        reads = "file mode reads --input" if args.input else "--text reads what you type"
        parser.error(f"--input-device {args.input_device}: {reads}, not a microphone")
    if args.output_device is not None and (args.input or args.no_speech):
        writes = "file mode writes --output" if args.input else "--no-speech prints the replies"
        parser.error(f"--output-device {args.output_device}: {writes}, not to a speaker")
    if args.input is None:
        return
    import os

    from assistant.audio.wavfile import WavError, check_audio_file, check_output_file, what_is

    if not args.input.is_file():
        what = what_is(args.input)
        parser.error(f"--input {args.input}: {what}" + ("" if what == "no such file" else ", not an audio file"))
    try:
        check_audio_file(args.input)
    except WavError as exc:
        parser.error(f"--input {exc}")
    if args.output.exists() and os.path.samefile(args.input, args.output):
        parser.error(f"--output {args.output}: is the --input recording itself; the reply would overwrite it")
    try:
        check_output_file(args.output)
    except WavError as exc:
        parser.error(f"--output {exc}")


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    _check_args(args, parser)
    if args.list_devices:
        return _list_devices()
    if args.reset_voice:
        return _reset_voice()

    import asyncio
    import logging

    from assistant.config import ConfigError, load_config
    from assistant.tts.reference_voice import VoiceError

    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.voice is not None:
        config.voice.path = str(args.voice)
    try:  # before any model loads; --show-voice says what a run would
        _check_voice(config)
    except VoiceError as exc:
        print(f"{'--voice' if args.voice is not None else 'config error: voice.path'}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.show_voice:
        return _show_voice(config.voice.path, config.voice.locked)
    if args.push_to_talk:
        config.listen.mode = "push_to_talk"
    if not args.text:  # the wake word's model and earcon, before any model loads
        from pipelines.attention import AttentionError, load_attention

        try:
            load_attention(config.listen)
        except AttentionError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return EXIT_USAGE

    from assistant.audio.devices import AudioDeviceError
    from assistant.audio.wavfile import WavError
    from assistant.llm.backend import BackendUnavailable
    from assistant.logs import setup_logging
    from pipelines.components import StartupError
    from pipelines.runner import Mode, run

    setup_logging(config.logging.level)
    mode = Mode(text=args.text, speech=not args.no_speech, input_wav=args.input, output_wav=args.output)
    terminated = False

    async def until_stopped() -> None:
        """SIGTERM (what `systemctl stop` sends) stops the run as Ctrl-C does: everything is closed in order (a
        file's reply is kept, MQTT says offline), and the exit is 0, a stop that was asked for."""
        main = asyncio.current_task()
        assert main is not None

        def terminate() -> None:
            nonlocal terminated
            terminated = True
            main.cancel()

        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
        try:
            await run(config, mode)
        except asyncio.CancelledError:
            if not terminated:
                raise

    try:
        asyncio.run(until_stopped())
    except (BackendUnavailable, WavError) as exc:
        logging.getLogger("assistant").error("%s", exc)
        return EXIT_USAGE
    except (StartupError, AudioDeviceError) as exc:
        logging.getLogger("assistant").error("cannot start: %s", exc)
        return EXIT_FAILURE
    finally:
        _stop_on_sigterm()  # the loop's handler went with it
    if terminated:
        print("\nStopped.", file=sys.stderr)
    return 0


def _repeat_swallowed_interrupts(unraisable: sys.UnraisableHookArgs) -> None:
    """A Ctrl-C that lands in a callback Python cannot raise from (an import lock's weakref, a
    destructor) would be printed as "Exception ignored" and lost: raise it again in the main thread."""
    if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        _thread.interrupt_main()
    else:
        sys.__unraisablehook__(unraisable)


def main(argv: list[str] | None = None) -> int:
    _stop_on_sigterm()
    sys.unraisablehook = _repeat_swallowed_interrupts
    parser = build_parser()
    try:
        return _run(parser.parse_args(argv), parser)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM outside the event loop: a stop that was asked for
        print("\nStopped.", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main())
