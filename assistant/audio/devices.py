"""Finding audio devices through sounddevice (PortAudio), with plain errors when there are none."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from assistant.audio.alsa_messages import route_alsa_messages

Direction = Literal["input", "output"]


WITHOUT_DEVICE = {
    "input": "run_assistant.py --list-devices shows what there is; without a microphone, type with --text (add "
    "--no-speech without a speaker too) or answer a recording with --input q.wav --output a.wav",
    "output": "run_assistant.py --list-devices shows what there is; without a speaker, use --text --no-speech (replies "
    "printed) or --input q.wav --output a.wav (replies written to a file)",
}
"""The ways forward when a direction has no device at all."""


class AudioDeviceError(RuntimeError):
    """No usable audio system, or no device matching what was asked for."""


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    max_output_channels: int
    default_samplerate: float

    def channels(self, direction: Direction) -> int:
        return self.max_input_channels if direction == "input" else self.max_output_channels


def sounddevice() -> ModuleType:
    """Import sounddevice, turning a missing PortAudio into a clear error."""
    try:
        import sounddevice as sd
    except OSError as exc:  # the wheel has no PortAudio on Linux
        raise AudioDeviceError(
            f"PortAudio is not available ({exc}); install it with: sudo apt-get install libportaudio2"
        ) from None
    route_alsa_messages()
    return sd


def list_devices() -> list[DeviceInfo]:
    sd = sounddevice()
    try:
        raw = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise AudioDeviceError(f"cannot query audio devices: {exc}") from None
    return [
        DeviceInfo(
            index=d["index"],
            name=d["name"],
            hostapi=hostapis[d["hostapi"]]["name"],
            max_input_channels=d["max_input_channels"],
            max_output_channels=d["max_output_channels"],
            default_samplerate=d["default_samplerate"],
        )
        for d in raw
    ]


def default_device(direction: Direction) -> int | None:
    """Index of the system's default device for a direction, or None when there is none."""
    sd = sounddevice()
    index = sd.default.device[0 if direction == "input" else 1]
    return None if index is None or index < 0 else int(index)


def resolve_device(ref: int | str | None, direction: Direction) -> DeviceInfo:
    """Find a device by index, exact name, or unique substring of its name; None = the default."""
    devices = [d for d in list_devices() if d.channels(direction) > 0]
    if not devices:
        raise AudioDeviceError(f"no audio {direction} devices found; {WITHOUT_DEVICE[direction]}")
    if ref is None:
        index = default_device(direction)
        match = [d for d in devices if d.index == index] or devices[:1]
    elif isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        match = [d for d in devices if d.index == int(ref)]
    else:
        exact = [d for d in devices if d.name == ref]
        match = exact or [d for d in devices if ref.lower() in d.name.lower()]
    if len(match) == 1 or (ref is None and match):
        return match[0]
    names = ", ".join(f"{d.index}: {d.name}" for d in devices)
    problem = "matches several" if match else "matches no"
    raise AudioDeviceError(f"{direction} device {ref!r} {problem} {direction} device (have {names})")


def describe_devices(devices: list[DeviceInfo]) -> str:
    """The text of `--list-devices`: inputs and outputs with channels and default rates."""
    if not devices:
        return "No audio devices found (no sound card, and no sound server such as PulseAudio running)."
    lines: list[str] = []
    for direction in ("input", "output"):
        usable = [d for d in devices if d.channels(direction) > 0]
        lines.append(f"{direction.capitalize()} devices:")
        if not usable:
            lines.append("  (none)")
        for d in usable:
            lines.append(
                f"  {d.index:>3}  {d.name}  [{d.hostapi}, {d.channels(direction)} ch, "
                f"default {d.default_samplerate:.0f} Hz]"
            )
    return "\n".join(lines)
