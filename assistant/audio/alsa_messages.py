"""ALSA's own messages go to the log at debug level instead of straight onto the terminal.

PortAudio's ALSA host API recovers an underrun with snd_pcm_recover, and ALSA prints "underrun occurred"
on stderr for it (as an output starts on a busy machine, harmlessly: the stream goes on); probing devices
prints more. The handler's arguments after the format are C varargs, which ctypes cannot read, so the
log has ALSA's format string, its source location and error code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

_Handler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)


@_Handler
def _to_log(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
    text = (fmt or b"").decode(errors="replace")
    log.debug(
        "ALSA %s:%d (%s) %s%s",
        (file or b"?").decode(),
        line,
        (function or b"?").decode(),
        text,
        f" [error {err}]" if err else "",
    )


@functools.cache
def route_alsa_messages() -> bool:
    """Send libasound's messages to the log from now on; False where there is no libasound (not Linux)."""
    name = ctypes.util.find_library("asound")
    if name is None:
        return False
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return False
    library.snd_lib_error_set_handler(_to_log)
    return True
