"""What the live microphone and speaker share: one sounddevice stream on one device, opened with a
plain error, watched while it runs, and opened again after the device goes away."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from types import ModuleType
from typing import Any, Literal, TypeVar

import numpy as np
import soxr

from assistant.audio.devices import AudioDeviceError, DeviceInfo, Direction, resolve_device, sounddevice

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound="DeviceStream")
Callback = Callable[[np.ndarray, int, Any, Any], None]

NO_AUDIO_S = 5.0
"""A stream without a callback for this long counts as lost. (The first input callback can take
~1.5 s, and PulseAudio's null sink can hold an output stream's callbacks back for ~2 s.)"""


class StreamResampler:
    """Streaming soxr resampling of mono float32, so block boundaries leave no trace.

    Between equal rates it copies instead (PortAudio reuses its buffers).
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self._soxr = (
            soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ") if from_rate != to_rate else None
        )

    def __call__(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next piece; `last` flushes what the filter still holds."""
        if self._soxr is None:
            return np.array(audio, np.float32)
        return self._soxr.resample_chunk(np.ascontiguousarray(audio, np.float32), last=last)

    def clear(self) -> None:
        """Start a new signal (after a flush, or to forget what was fed)."""
        if self._soxr is not None:
            self._soxr.clear()


async def in_thread(call: Callable[[], T]) -> T:
    """Run a blocking call in a thread of its own, which has ended when this returns.

    (The loop's default executor would keep idle worker threads alive after the audio is closed.)
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not done.done():  # else the awaiting task was cancelled
            outcome()

    def work() -> None:
        try:
            result = call()
        except Exception as exc:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, partial(done.set_exception, exc))
        else:
            loop.call_soon_threadsafe(settle, partial(done.set_result, result))

    thread = threading.Thread(target=work, name="audio-device-call", daemon=True)
    thread.start()
    try:
        return await done
    finally:
        thread.join()  # it has nothing left to do but exit


class DeviceStream:
    """A callback-driven mono float32 sounddevice stream on one device that outlives losing it.

    `start()` resolves the device (by index, name or None = the default) and opens it, raising
    AudioDeviceError that names the device when it is missing or will not open. While it runs, a
    supervisor task watches for the stream ending on its own (device unplugged, host error) or
    going quiet (no callback for NO_AUDIO_S); it reports that once through `on_error` (or the
    log), then opens the same device again every `retry_s` until that works. The supervisor owns
    the stream: it opens and closes it in short-lived threads, so PortAudio never blocks the loop
    (`_flush()` restarts it from a thread of its own).
    """

    direction: Direction
    role: str  # "microphone" or "speaker", for messages
    latency: float | Literal["low", "high"]  # PortAudio's suggested latency: seconds, or a device default
    flushable = False  # whether `_flush()` is used: a thread waits for it while the stream is open

    def __init__(
        self,
        device: int | str | None,
        block_ms: int,
        rate: int | None,
        on_error: Callable[[str], None] | None,
        retry_s: float,
    ) -> None:
        self._device_ref = device
        self._block_ms = block_ms
        self._rate_wanted = rate
        self._on_error = on_error
        self._retry_s = retry_s
        self.device: DeviceInfo | None = None
        self.rate = 0  # the stream's own rate, known once started
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Any = None
        self._opened: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._opened_at = 0.0
        self._last_callback = 0.0  # written by the audio thread
        self._reported = False
        self._ended = asyncio.Event()  # the running stream's: set when it ends on its own
        self._stream_lock = threading.Lock()  # one stream call at a time: flushing or closing it
        self._flush_wanted = threading.Event()
        self._restarting = False  # the stream's abort() in _flush_stream() ends no stream

    @property
    def closed(self) -> bool:
        return self._closing.is_set()

    @property
    def name(self) -> str:
        """The device as messages name it."""
        if self.device is None:
            return repr(self._device_ref)
        return f"{self.device.name!r} (device {self.device.index})"

    async def start(self) -> None:
        """Open the device (at most once); AudioDeviceError when it is missing or will not open."""
        if self.closed:
            raise RuntimeError(f"{self.role} {self.name} is closed")
        if self._opened is None:
            self._loop = asyncio.get_running_loop()
            self.device = resolve_device(self._device_ref, self.direction)
            self.rate = self._rate_wanted or int(self.device.default_samplerate)
            self._opened = self._loop.create_future()
            self._supervisor = asyncio.create_task(self._supervise(self._opened), name=f"{self.role}-supervisor")
        try:
            await asyncio.shield(self._opened)  # a cancelled start leaves the stream to aclose()
        except AudioDeviceError:
            self._opened = self._supervisor = None
            raise

    async def aclose(self) -> None:
        """Close the stream; no thread of this object outlives the call."""
        self._closing.set()
        if self._supervisor is not None:
            await self._supervisor

    async def __aenter__(self: S) -> S:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _stream_callback(self) -> Callback:
        """A fresh callback (with fresh per-stream state) for the stream about to open."""
        raise NotImplementedError

    def _on_lost(self) -> None:
        """The stream was lost (called on the loop before it is opened again)."""

    def _flush(self) -> None:
        """Drop what the device holds: a waiting thread aborts the stream and starts it again.

        abort() drops PortAudio's buffers (through ALSA's pulse plugin, the server's too); with
        start() it takes a few ms, up to ~100 on a busy machine, so the caller goes on at once. The
        thread is already there (starting one takes ~2 ms, and blocks the caller) and does not
        wait for the loop. `_on_flushed()` runs in between, when no callback runs; a flush asked
        for meanwhile is done after this one.
        """
        self._flush_wanted.set()

    def _on_flushed(self) -> None:
        """The stream is stopped and its buffers dropped (called in the flushing thread)."""

    def _flush_loop(self, done: threading.Event) -> None:
        """The flushing thread: each flush asked for, until `done`."""
        while True:
            self._flush_wanted.wait()
            self._flush_wanted.clear()
            if done.is_set():
                return
            self._flush_stream()

    def _flush_stream(self) -> None:
        sd = sounddevice()
        with self._stream_lock:
            stream, ended = self._stream, self._ended
            if stream is None:  # closed, or lost: the next stream starts empty
                self._on_flushed()
                return
            if not stream.active:  # lost: the supervisor opens a new one (start() would hang PortAudio)
                return
            try:
                self._restarting = True
                try:
                    stream.abort()
                finally:
                    self._restarting = False
                self._on_flushed()
                stream.start()
            except sd.PortAudioError as exc:
                log.debug("%s %s did not restart: %s", self.role, self.name, exc)
                self._notify(ended.set)  # the supervisor reopens it

    def _notify(self, call: Callable[..., object], *args: object) -> None:
        """Run `call` on the loop, from the audio thread."""
        assert self._loop is not None  # set by start(), before any stream opens
        try:
            self._loop.call_soon_threadsafe(call, *args)
        except RuntimeError:  # the loop has closed
            pass

    def _report(self, message: str) -> None:
        if self._on_error is not None:
            self._on_error(message)
        else:
            log.warning("%s", message)

    async def _supervise(self, opened: asyncio.Future[None]) -> None:
        try:
            ended = await self._open()
        except AudioDeviceError as exc:
            opened.set_exception(exc)
            return
        opened.set_result(None)
        done = threading.Event()
        flusher = None
        if self.flushable:
            flusher = threading.Thread(target=self._flush_loop, args=(done,), name=f"{self.role}-flush", daemon=True)
            flusher.start()
        try:
            while (problem := await self._until_lost(ended)) is not None:
                if self._last_callback >= self._opened_at or not self._reported:  # once per loss
                    self._report(f"{self.role} {self.name} {problem}; opening it again every {self._retry_s:g} s")
                    self._reported = True
                await self._close()
                self._on_lost()
                reopened = await self._reopen()
                if reopened is None:
                    return
                ended = reopened
        finally:
            await self._close()
            if flusher is not None:
                done.set()
                self._flush_wanted.set()
                flusher.join()  # at once: closing the stream waited for any flush

    async def _open(self) -> asyncio.Event:
        """Open and start a stream; returns the event its end sets."""
        ended = self._ended = asyncio.Event()
        callback = self._stream_callback()

        def tracked(data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            self._last_callback = time.monotonic()
            callback(data, frames, time_info, status)

        def finished() -> None:
            if not self._restarting:
                self._notify(ended.set)

        self._opened_at = time.monotonic()
        await in_thread(lambda: self._open_blocking(tracked, finished))
        return ended

    def _open_blocking(self, callback: Callback, finished: Callable[[], None]) -> None:
        """Open and start `_stream` (a flush waits for it: the stream is running before it is known)."""
        sd = sounddevice()
        with self._stream_lock:
            try:
                stream = self._new_stream(sd, callback, finished)
                try:
                    stream.start()
                except sd.PortAudioError:
                    stream.close()
                    raise
            except (sd.PortAudioError, ValueError) as exc:
                raise AudioDeviceError(f"cannot open {self.role} {self.name} at {self.rate} Hz: {exc}") from None
            self._stream = stream

    def _new_stream(self, sd: ModuleType, callback: Callback, finished: Callable[[], None]) -> Any:
        assert self.device is not None  # resolved by start()
        stream_type = sd.InputStream if self.direction == "input" else sd.OutputStream
        return stream_type(
            device=self.device.index,
            samplerate=self.rate,
            blocksize=self.rate * self._block_ms // 1000,
            channels=1,
            dtype="float32",
            latency=self.latency,
            callback=callback,
            finished_callback=finished,
        )

    async def _until_lost(self, ended: asyncio.Event) -> str | None:
        """Wait until the stream ends or goes quiet (returns what happened) or we close (None)."""
        while not self.closed:
            quiet_s = time.monotonic() - max(self._last_callback, self._opened_at)
            if quiet_s >= NO_AUDIO_S:
                return f"delivered no audio for {NO_AUDIO_S:g} s"
            if ended.is_set():
                return "stopped (unplugged?)"
            await _first_of(ended, self._closing, timeout=NO_AUDIO_S - quiet_s)
        return None

    async def _reopen(self) -> asyncio.Event | None:
        """Try to open the device every retry_s; None when closed first."""
        while not await _first_of(self._closing, timeout=self._retry_s):
            try:
                ended = await self._open()
            except AudioDeviceError as exc:
                log.debug("%s", exc)
                continue
            log.info("%s %s is open again", self.role, self.name)
            return ended
        return None

    async def _close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await in_thread(lambda: self._abort_and_close(stream))

    def _abort_and_close(self, stream: Any) -> None:
        # abort(), not stop(): stop() waits for buffers to drain, which hangs on a source that has
        # stopped producing (a pipe source nobody writes to, a device that is gone).
        with self._stream_lock:
            try:
                stream.abort()
            finally:
                stream.close()


async def _first_of(*events: asyncio.Event, timeout: float) -> bool:
    """Wait until one of the events is set or the timeout passes; True when one is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
    return bool(done)
