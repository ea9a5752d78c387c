"""A pseudo-terminal with a small VT100 screen behind it, to see what a user at a terminal would see.

The screen understands what prompt_toolkit and a plain program write: printable text with autowrap (and its
pending wrap at the last column), CR, LF, BS, tab, cursor moves (CUU/CUD/CUF/CUB/CHA/CUP), erasing (ED/EL), DECSC and
DECRC, autowrap on and off (?7h/?7l), and it answers cursor position requests (ESC [6n) as a real terminal does. Other
sequences (colours, cursor visibility, bracketed paste) are read and ignored. Lines scrolled off the top are kept.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Sequence

_CSI = re.compile(r"\x1b\[([0-?]*)([ -/]*)([@-~])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")
_PARTIAL = re.compile(r"\x1b(\[[0-?]*[ -/]*|\][^\x07\x1b]*|\]|[()#%]?)?$")  # an escape sequence cut by a read


class Screen:
    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.rows, self.cols = rows, cols
        self.cells = [[" "] * cols for _ in range(rows)]
        self.scrolled: list[str] = []  # lines gone off the top
        self.y = self.x = 0
        self.wrap_pending = False
        self.autowrap = True
        self.saved = (0, 0)
        self._rest = ""

    def feed(self, text: str) -> str:
        """Draw `text`; return what the terminal answers (cursor position reports)."""
        text, self._rest, answers, i = self._rest + text, "", [], 0
        while i < len(text):
            char = text[i]
            if char == "\x1b":
                if (osc := _OSC.match(text, i)) is not None:
                    i = osc.end()
                    continue
                if (csi := _CSI.match(text, i)) is not None:
                    answers.append(self._csi(*csi.groups()))
                    i = csi.end()
                    continue
                if _PARTIAL.match(text, i) is not None:
                    self._rest = text[i:]
                    break
                follower = text[i + 1]
                if follower == "7":
                    self.saved = (self.y, self.x)
                elif follower == "8":
                    self.y, self.x = self.saved
                    self.wrap_pending = False
                i += 3 if follower in "()#%" else 2
                continue
            self._char(char)
            i += 1
        return "".join(answers)

    def _char(self, char: str) -> None:
        if char == "\r":
            self.x, self.wrap_pending = 0, False
        elif char == "\n":
            self._line_feed()
        elif char == "\b":
            self.x, self.wrap_pending = max(0, self.x - 1), False
        elif char == "\t":
            self.x = min(self.cols - 1, (self.x // 8 + 1) * 8)
        elif char >= " ":
            if self.wrap_pending:
                self.x, self.wrap_pending = 0, False
                self._line_feed()
            self.cells[self.y][self.x] = char
            if self.x < self.cols - 1:
                self.x += 1
            else:
                self.wrap_pending = self.autowrap

    def _line_feed(self) -> None:
        self.wrap_pending = False
        if self.y < self.rows - 1:
            self.y += 1
            return
        self.scrolled.append("".join(self.cells.pop(0)).rstrip())
        self.cells.append([" "] * self.cols)

    def _csi(self, params: str, _intermediates: str, final: str) -> str:
        if params.startswith("?"):
            if params == "?7":
                self.autowrap = final == "h"
            return ""
        numbers = [int(p) if p else 0 for p in params.split(";")] if params else []
        n = max(1, numbers[0]) if numbers else 1
        self.wrap_pending = self.wrap_pending and final in "mnJK"
        if final == "A":
            self.y = max(0, self.y - n)
        elif final == "B":
            self.y = min(self.rows - 1, self.y + n)
        elif final == "C":
            self.x = min(self.cols - 1, self.x + n)
        elif final == "D":
            self.x = max(0, self.x - n)
        elif final == "G":
            self.x = min(self.cols - 1, n - 1)
        elif final in "Hf":
            row, col = (numbers + [1, 1])[:2]
            self.y, self.x = min(self.rows, max(row, 1)) - 1, min(self.cols, max(col, 1)) - 1
        elif final == "J":
            mode = numbers[0] if numbers else 0
            rows = range(self.y + 1, self.rows) if mode == 0 else range(self.rows) if mode == 2 else range(self.y)
            for row in rows:
                self.cells[row] = [" "] * self.cols
            if mode != 2:
                self._erase_in_line(mode)
        elif final == "K":
            self._erase_in_line(numbers[0] if numbers else 0)
        elif final == "n" and numbers == [6]:
            return f"\x1b[{self.y + 1};{self.x + 1}R"
        return ""

    def _erase_in_line(self, mode: int) -> None:
        line = self.cells[self.y]
        for col in range(self.x, self.cols) if mode == 0 else range(self.x + 1) if mode == 1 else range(self.cols):
            line[col] = " "

    @property
    def lines(self) -> list[str]:
        """Every line, the scrolled ones first, down to the cursor's line or the last one written."""
        shown = ["".join(row).rstrip() for row in self.cells]
        last = max([self.y, *(i for i, line in enumerate(shown) if line)])
        return self.scrolled + shown[: last + 1]

    @property
    def cursor_line(self) -> str:
        return "".join(self.cells[self.y]).rstrip()


class PseudoTerminal:
    """A pseudo-terminal whose output is read into a Screen by a thread (which answers cursor position requests);
    `follower` is the terminal's end a program uses."""

    def __init__(self, rows: int = 24, cols: int = 80) -> None:
        self.screen = Screen(rows, cols)
        self.lock = threading.Lock()
        self.output = ""  # everything written to the terminal, escape sequences and all
        self.leader, self.follower = os.openpty()
        fcntl.ioctl(self.follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.leader, 65536)
            except OSError:  # EIO: every end of the follower has been closed
                return
            if not data:
                return
            with self.lock:
                text = data.decode(errors="replace")
                self.output += text
                answer = self.screen.feed(text)
            if answer:
                os.write(self.leader, answer.encode())

    def type(self, keys: str, gap_s: float = 0.0) -> None:
        """Type `keys` (Enter is "\\r", Ctrl-C "\\x03", Ctrl-D "\\x04", Esc "\\x1b"), one every `gap_s`."""
        for key in keys if gap_s else [keys]:
            os.write(self.leader, key.encode())
            time.sleep(gap_s)

    def seen(self, check: Callable[[Screen], bool]) -> bool:
        with self.lock:
            return check(self.screen)

    def wait_for(self, check: Callable[[Screen], bool], what: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.seen(check):
            if time.monotonic() > deadline:
                raise AssertionError(f"not seen within {timeout_s:.0f} s: {what}; the screen:\n" + self.text)
            time.sleep(0.01)

    @property
    def lines(self) -> list[str]:
        with self.lock:
            return list(self.screen.lines)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def close(self) -> None:
        if self.follower >= 0:
            os.close(self.follower)
            self.follower = -1
        self._reader.join(5)
        os.close(self.leader)


class Terminal(PseudoTerminal):
    """A program run in a pseudo-terminal, its controlling terminal and its stdin, stdout and stderr."""

    def __init__(
        self, argv: Sequence[str], *, rows: int = 24, cols: int = 80, env: dict[str, str] | None = None, cwd: str = "."
    ) -> None:
        super().__init__(rows, cols)
        follower = self.follower
        self.process = subprocess.Popen(
            argv, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=cwd, preexec_fn=_controlling_terminal
        )
        os.close(follower)
        self.follower = -1  # the program's now: the reader sees the end when the program has exited

    def wait_exit(self, timeout_s: float = 30) -> int:
        return self.process.wait(timeout_s)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        super().close()


def _controlling_terminal() -> None:
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
