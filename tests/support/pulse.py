"""A private PulseAudio server with a virtual speaker and microphone, for real sounddevice streams.

- speaker: `module-null-sink` named `vspk`; what is played to it can be recorded from `vspk.monitor`.
- microphone: `module-pipe-source` named `vmic`, fed with raw s16le bytes through a fifo.
PortAudio reaches the server through ALSA's `pulse` plugin; `use_source`/`use_sink` choose what
its `pulse`/`default` devices connect to.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tests.support.processes import wait_until


class PulseAudio:
    SPEAKER = "vspk"
    MICROPHONE = "vmic"

    def __init__(self, rate: int = 16000) -> None:
        self.rate = rate
        self.root = Path(tempfile.mkdtemp(prefix="pulse-"))
        self.fifo = self.root / "mic.fifo"
        self.env = {
            "XDG_RUNTIME_DIR": str(self.root / "run"),
            "XDG_CONFIG_HOME": str(self.root / "config"),
            "HOME": str(self.root / "home"),
            "PULSE_SERVER": f"unix:{self.root / 'run' / 'pulse' / 'native'}",
        }
        self._saved_env: dict[str, str | None] = {}
        self._mic: _FifoWriter | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("pulseaudio") is not None and shutil.which("pactl") is not None

    def pactl(self, *args: str) -> str:
        result = subprocess.run(
            ["pactl", *args], env={**os.environ, **self.env}, capture_output=True, text=True, timeout=10
        )
        if result.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def _answers(self) -> bool:
        try:
            self.pactl("info")
            return True
        except RuntimeError:
            return False

    def start(self) -> PulseAudio:
        for key in ("XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "HOME"):
            Path(self.env[key]).mkdir(mode=0o700, parents=True, exist_ok=True)
        subprocess.run(
            [
                "pulseaudio",
                "-D",
                "--exit-idle-time=-1",
                "-n",
                "--load=module-native-protocol-unix",
                f"--log-target=file:{self.root / 'pulse.log'}",
            ],
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
            timeout=30,
        )
        wait_until(self._answers, 15, "PulseAudio")
        self._plug(self.SPEAKER, self.MICROPHONE)
        for key, value in self.env.items():
            self._saved_env[key] = os.environ.get(key)
            os.environ[key] = value
        return self

    def _plug(self, *names: str) -> None:
        """Load the named virtual devices (SPEAKER, MICROPHONE) and make them the defaults.

        The microphone comes first: a recording stream opened while the speaker's monitor is the
        only source stays on that monitor when the microphone appears.
        """
        if self.MICROPHONE in names:
            self.pactl(
                "load-module",
                "module-pipe-source",
                f"source_name={self.MICROPHONE}",
                f"file={self.fifo}",
                "format=s16le",
                f"rate={self.rate}",
                "channels=1",
            )
            self.use_source(self.MICROPHONE)
        if self.SPEAKER in names:
            self.pactl(
                "load-module", "module-null-sink", f"sink_name={self.SPEAKER}", f"rate={self.rate}", "channels=1"
            )
            self.use_sink(self.SPEAKER)

    @contextmanager
    def unplugged(self, *names: str) -> Iterator[None]:
        """The named virtual devices are gone (their modules unloaded) inside the block, then back."""
        if self.MICROPHONE in names and self._mic is not None:
            self._mic.close()  # the pipe source deletes its fifo; microphone() then opens the new one
            self._mic = None
        for line in self.pactl("list", "short", "modules").splitlines():
            index, _, arguments = (line.split("\t") + ["", ""])[:3]
            if any(f"_name={name} " in f"{arguments} " for name in names):
                self.pactl("unload-module", index)
        try:
            yield
        finally:
            self._plug(*names)

    def use_sink(self, name: str) -> None:
        self.pactl("set-default-sink", name)

    def use_source(self, name: str) -> None:
        self.pactl("set-default-source", name)

    def microphone(self) -> _FifoWriter:
        """The writer that feeds the virtual microphone (opened on first use, kept open)."""
        if self._mic is None:
            self._mic = _FifoWriter(self.fifo, self.rate)
        return self._mic

    def stop(self) -> None:
        if self._mic is not None:
            self._mic.close()
        subprocess.run(["pulseaudio", "--kill"], env={**os.environ, **self.env}, capture_output=True, timeout=10)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(self.root, ignore_errors=True)


class _FifoWriter:
    """Feeds s16le audio into the pipe source in real time, with silence between what tests send."""

    def __init__(self, fifo: Path, rate: int, block_ms: int = 20) -> None:
        self.rate = rate
        self._block = rate * block_ms // 1000
        self._pending = np.zeros(0, np.float32)
        self._fed = 0  # samples of sent audio taken from the queue so far (silence between sends not counted)
        self._writes: list[tuple[int, float]] = []  # (first sent sample of a block, when it was written), recent
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._fd = os.open(fifo, os.O_WRONLY)
        os.set_blocking(self._fd, False)  # never hang when PulseAudio is not reading
        self._thread = threading.Thread(target=self._pump, name="virtual-mic", daemon=True)
        self._thread.start()

    def send(self, audio: np.ndarray) -> float:
        """Queue mono float32 audio at the mic's rate; returns its duration in seconds."""
        self.send_at(audio)
        return len(audio) / self.rate

    def send_at(self, audio: np.ndarray) -> int:
        """Queue mono float32 audio; returns the index its first sample will have in the fed stream."""
        with self._lock:
            start = self._fed + len(self._pending)
            self._pending = np.concatenate([self._pending, np.asarray(audio, np.float32)])
        return start

    def written_at(self, sample: int) -> float | None:
        """time.monotonic() when the block holding stream sample `sample` was written (None: not yet)."""
        with self._lock:
            for start, at in reversed(self._writes):
                if start <= sample < start + self._block:
                    return at
        return None

    def _pump(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                block, self._pending = self._pending[: self._block], self._pending[self._block :]
                start = self._fed
                self._fed += len(block)
            data = (np.clip(np.pad(block, (0, self._block - len(block))), -1, 1) * 32767).astype("<i2").tobytes()
            try:
                while data and not self._stop.is_set():
                    try:
                        data = data[os.write(self._fd, data) :]
                    except BlockingIOError:
                        time.sleep(0.005)
            except BrokenPipeError:  # the server went away
                return
            if len(block):
                with self._lock:
                    self._writes.append((start, time.monotonic()))
                    del self._writes[:-2000]
            next_at += self._block / self.rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self._fd)


class MonitorRecording:
    """Records what the virtual speaker plays (from its monitor), with each sample's capture time.

    `with MonitorRecording(pulse) as monitor:` starts recording (and waits for the first block); the
    default source stays the virtual microphone.
    """

    BOUND_WINDOW_S = 1.0  # see recorded()

    def __init__(self, pulse: PulseAudio, rate: int = 16000, blocksize: int = 160) -> None:
        self.pulse = pulse
        self.rate = rate
        self.overflowed = False
        self._blocksize = blocksize
        self._blocks: list[tuple[np.ndarray, float]] = []
        self._stream = None

    def __enter__(self) -> MonitorRecording:
        import sounddevice as sd

        # Route this one stream to the monitor (libpulse reads PULSE_SOURCE when the stream connects).
        # Changing the default source instead would make PulseAudio move the microphone's stream too.
        os.environ["PULSE_SOURCE"] = f"{PulseAudio.SPEAKER}.monitor"
        try:
            self._stream = sd.InputStream(
                device="pulse",
                samplerate=self.rate,
                channels=1,
                dtype="float32",
                blocksize=self._blocksize,
                callback=self._callback,
            )
            self._stream.start()
        finally:
            del os.environ["PULSE_SOURCE"]
        wait_until(lambda: bool(self._blocks), 10, "the speaker's monitor")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stream.abort()
        self._stream.close()

    def _callback(self, block: np.ndarray, frames: int, time_info: object, status) -> None:
        self._blocks.append((block[:, 0].copy(), time.monotonic()))
        self.overflowed |= bool(status.input_overflow)

    def latest(self) -> tuple[np.ndarray, float]:
        """The last block recorded, and the time.monotonic() at which it arrived."""
        return self._blocks[-1]

    def recorded(self) -> tuple[np.ndarray, np.ndarray]:
        """The audio so far, and the time.monotonic() at which each sample went through the speaker.

        The monitor runs on the sink's clock: sample n goes through at t0 + n / rate, give or take
        the block the sink renders ahead (its latency, 10-20 ms here), where t0 moves later whenever
        samples are lost (an overflow the stream need not report). No block arrives before its last
        sample has gone through, so each block's arrival time minus its end's sample time bounds
        t0 from above, for its own samples and for those of every block before it; each block takes
        the tightest of the bounds from itself and the blocks of the next `BOUND_WINDOW_S`. So every
        time is late, if anything, by about the smallest delivery delay in that window, which can
        only lengthen an interval measured from a call to a sound. (One bound for the whole
        recording would make every sample after a loss early; PortAudio's inputBufferAdcTime agreed
        to ~0.2 ms in the median, but single blocks were off by up to 240 ms on a loaded machine.)
        """
        blocks = list(self._blocks)
        sizes = np.array([block.size for block, _ in blocks])
        ends = np.cumsum(sizes)
        bounds = np.array([arrival for _, arrival in blocks]) - ends / self.rate
        window = max(1, round(self.BOUND_WINDOW_S * self.rate / self._blocksize))
        ahead = np.lib.stride_tricks.sliding_window_view(
            np.pad(bounds, (0, window - 1), constant_values=np.inf), window
        )
        t0 = np.repeat(ahead.min(axis=1), sizes)
        return np.concatenate([block for block, _ in blocks]), t0 + np.arange(ends[-1]) / self.rate
