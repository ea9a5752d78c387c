#!/usr/bin/env python3
"""Run the voice assistant: listen, transcribe, think, and answer in CSM's voice."""

from __future__ import annotations

import _thread
import argparse
import signal
import sys
from pathlib import Path

# Everything else is imported inside main(), so that Ctrl-C while it loads still stops cleanly.
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser.add_argument("--input-device", metavar="INDEX|NAME", help="microphone to use (see --list-devices)")
    parser.add_argument("--output-device", metavar="INDEX|NAME", help="speaker to use (see --list-devices)")
    parser.add_argument("--text", action="store_true", help="type to the assistant instead of speaking")
    parser.add_argument(
        "--no-speech",
        action="store_true",
        help="with --text: print replies without loading the speech model",
    )
    parser.add_argument("--input", type=Path, metavar="WAV", help="headless: answer the speech in this wav file")
    parser.add_argument("--output", type=Path, metavar="WAV", help="headless: write the spoken reply here")
    parser.add_argument(
        "--voice",
        type=Path,
        metavar="FILE",
        help="speak in this voice: a reference clip (5-15 s; its transcript in a .txt file of the same name, or "
        "--set voice.text=...) or a voice file the assistant saved",
    )
    parser.add_argument("--show-voice", action="store_true", help="say which voice the assistant speaks in, then exit")
    parser.add_argument(
        "--reset-voice",
        action="store_true",
        help="forget the locked voice (the next run makes a new one), then exit",
    )
    parser.add_argument(
        "--log-level",
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
    if path is not None:
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


def _reset_voice() -> int:
    from assistant.tts.reference_voice import locked_voice_path

    lock = locked_voice_path()
    if not lock.is_file():
        print(f"no locked voice to forget ({lock})")
        return 0
    lock.unlink()
    print(f"forgot the locked voice ({lock}); the next run makes a new one")
    return 0


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.list_devices:
        return _list_devices()
    if args.reset_voice:
        return _reset_voice()
    if (args.input is None) != (args.output is None):
        parser.error("--input and --output go together")
    if args.text and args.input:
        parser.error("--text and --input/--output are different modes; choose one")
    if args.no_speech and not args.text:
        parser.error("--no-speech goes with --text")
    if args.input is not None and not args.input.is_file():
        parser.error(f"--input {args.input}: no such file")
    if args.input is not None:
        from assistant.audio.wavfile import WavError, check_audio_file

        try:
            check_audio_file(args.input)
        except WavError as exc:
            parser.error(f"--input {exc}")
    if args.output is not None:  # checked before any work: a reply that cannot be written is lost
        if args.output.is_dir():
            parser.error(f"--output {args.output}: is a folder; name the wav file to write")
        if not args.output.parent.is_dir():
            parser.error(f"--output {args.output}: the folder {args.output.parent} does not exist")

    import asyncio
    import logging

    from assistant.config import ConfigError, load_config

    try:
        config = load_config(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.voice is not None:
        config.voice.path = str(args.voice)
    if args.show_voice:
        return _show_voice(config.voice.path, config.voice.locked)
    if config.voice.path is not None:  # before any model loads
        from assistant.tts.reference_voice import VoiceError, check_voice_source

        try:
            check_voice_source(Path(config.voice.path), config.voice.text)
        except VoiceError as exc:
            print(f"{'--voice' if args.voice is not None else 'config error: voice.path'}: {exc}", file=sys.stderr)
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
    sys.unraisablehook = _repeat_swallowed_interrupts
    parser = build_parser()
    try:
        return _run(parser.parse_args(argv), parser)
    except KeyboardInterrupt:
        print("\nStopped.", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
