"""WebRTC's audio processing (AEC3, noise suppression, a high-pass filter) on two fixed 10 ms frames, through the
native library of the livekit package.

livekit's `AudioProcessingModule` builds a protobuf request, parses a response and makes a handle object for each
10 ms frame. In the microphone's audio thread, which wakes every 20 ms and finds its caches cold each time, that
was most of the canceller's cost: paced as a device paces it, the library's calls alone took 3.0 % of a core, 1.9 %
sent as here (`bench/echo.py` measures the whole canceller in place). The frames here never move, so the request
for each never changes: it is serialised once and handed to the library's request entry point as it is, and the
response is compared with the one that means success.

This reaches past livekit's public API (its FFI client, the module's handle, the protobuf messages), so the
package is pinned to the minor version it was written for (pyproject.toml), a version without these parts fails
at start-up with `EchoCancellerError`, and tests/component/test_aec3.py checks it against the public path.
"""

from __future__ import annotations

import ctypes

import numpy as np

from assistant.audio.streams import CAPTURE_RATE

FRAME = CAPTURE_RATE // 100


class EchoCancellerError(RuntimeError):
    """The canceller's library is missing, not the version this was written for, or failed."""


class Aec3:
    """`process()` takes the speaker's frame in `far` and the microphone's frame at the same time in `near`, and
    leaves the microphone's frame cleaned in `near` (int16, FRAME samples each: fill them, never replace them, as
    the library is given their addresses)."""

    def __init__(self, noise_suppression: bool) -> None:
        try:
            from livekit import rtc
            from livekit.rtc._ffi_client import FfiClient
            from livekit.rtc._proto import ffi_pb2

            self._module = rtc.AudioProcessingModule(
                echo_cancellation=True, noise_suppression=noise_suppression, high_pass_filter=True
            )
            self._far, self._near = np.zeros(FRAME, np.int16), np.zeros(FRAME, np.int16)  # the requests point at them
            native = FfiClient.instance._ffi_lib
            self._send, self._drop = native.livekit_ffi_request, native.livekit_ffi_drop_handle
            self._parse = ffi_pb2.FfiResponse.FromString
            self._reverse = _request(ffi_pb2, "apm_process_reverse_stream", self._module._ffi_handle.handle, self._far)
            self._forward = _request(ffi_pb2, "apm_process_stream", self._module._ffi_handle.handle, self._near)
        except (ImportError, AttributeError) as error:
            raise EchoCancellerError(f"echo cancellation needs the livekit package, version 1.2 ({error})") from None
        self._response, self._response_size = ctypes.POINTER(ctypes.c_ubyte)(), ctypes.c_size_t()
        self._out = ctypes.byref(self._response), ctypes.byref(self._response_size)

    @property
    def far(self) -> np.ndarray:
        return self._far

    @property
    def near(self) -> np.ndarray:
        return self._near

    def process(self) -> None:
        self._call(*self._reverse)
        self._call(*self._forward)

    def _call(self, request: ctypes.Array, succeeded: bytes, field: str) -> None:
        handle = self._send(request, len(request), *self._out)
        if not handle:  # no response: the library logged why
            raise EchoCancellerError(f"{field}: the livekit library refused the request")
        response = ctypes.string_at(self._response, self._response_size.value)
        self._drop(handle)
        if response != succeeded:
            parsed = self._parse(response)
            raise EchoCancellerError(f"{field}: {getattr(parsed, field).error or parsed}")


def _request(ffi_pb2: object, field: str, module: int, frame: np.ndarray) -> tuple[ctypes.Array, bytes, str]:
    """The request that processes `frame` (which must not move), the response that means it did, and its field."""
    request = ffi_pb2.FfiRequest()  # type: ignore[attr-defined]
    body = getattr(request, field)
    body.apm_handle, body.data_ptr, body.size = module, frame.ctypes.data, frame.nbytes
    body.sample_rate, body.num_channels = CAPTURE_RATE, 1
    raw = request.SerializeToString()
    succeeded = ffi_pb2.FfiResponse()  # type: ignore[attr-defined]
    getattr(succeeded, field).SetInParent()
    return (ctypes.c_ubyte * len(raw)).from_buffer_copy(raw), succeeded.SerializeToString(), field
