"""ALSA's messages reach the log, not the terminal: a real libasound asked to open a PCM that does not exist."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import pytest

from assistant.audio.alsa_messages import route_alsa_messages
from tests.conftest import require


def _open_missing_pcm() -> int:
    library = ctypes.CDLL(ctypes.util.find_library("asound"))
    handle = ctypes.c_void_p()
    return int(library.snd_pcm_open(ctypes.byref(handle), b"no_such_pcm_here", 0, 0))


def test_alsa_messages_go_to_the_debug_log(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    require(ctypes.util.find_library("asound") is not None, "libasound is not installed")
    caplog.set_level(logging.DEBUG, logger="assistant.audio.alsa_messages")
    assert route_alsa_messages()
    assert _open_missing_pcm() < 0
    assert "ALSA lib" not in capfd.readouterr().err
    record = next(r for r in caplog.records if r.name == "assistant.audio.alsa_messages")
    assert record.levelno == logging.DEBUG and "snd_pcm_open_noupdate" in record.getMessage()
