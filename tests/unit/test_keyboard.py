"""The interrupt key, read from a real pseudo-terminal."""

from __future__ import annotations

import io
import os
import termios
import threading

from pipelines.keyboard import key_binding


def test_the_key_calls_back_other_keys_do_not_and_the_terminal_is_restored() -> None:
    leader, follower = os.openpty()
    with os.fdopen(follower, "r") as terminal:
        before = termios.tcgetattr(follower)
        pressed = threading.Event()
        presses: list[int] = []
        with key_binding("space", lambda: (presses.append(1), pressed.set()), terminal) as bound:
            assert bound
            assert not termios.tcgetattr(follower)[3] & termios.ICANON  # keys arrive without Enter
            os.write(leader, b"ab ")
            assert pressed.wait(5)
        assert presses == [1]
        assert termios.tcgetattr(follower) == before
    os.close(leader)


def test_without_a_terminal_nothing_is_bound() -> None:
    with key_binding("space", lambda: None, terminal=io.StringIO()) as bound:
        assert not bound
    with key_binding(None, lambda: None) as bound:
        assert not bound
