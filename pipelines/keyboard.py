"""One key in the terminal that interrupts the assistant (read without Enter, echo off)."""

from __future__ import annotations

import contextlib
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from typing import TextIO

from assistant.config import KEY_NAMES


@contextlib.contextmanager
def key_binding(key: str | None, on_press: Callable[[], object], terminal: TextIO = sys.stdin) -> Iterator[bool]:
    """While inside, pressing `key` calls `on_press` from a reader thread; yields False when there is no terminal.

    The terminal's settings are restored on exit, whatever happens.
    """
    if key is None or not terminal.isatty():
        yield False
        return
    char, fd = KEY_NAMES.get(key.lower(), key), terminal.fileno()
    saved = termios.tcgetattr(fd)
    wake_read, wake_write = os.pipe()

    def read_keys() -> None:
        while True:
            ready, _, _ = select.select([fd, wake_read], [], [])
            if wake_read in ready:
                return
            if os.read(fd, 1).decode(errors="ignore") == char:
                on_press()

    tty.setcbreak(fd)
    reader = threading.Thread(target=read_keys, name="interrupt-key", daemon=True)
    reader.start()
    try:
        yield True
    finally:
        os.write(wake_write, b"x")
        reader.join()
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        os.close(wake_read)
        os.close(wake_write)
