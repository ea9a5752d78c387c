"""A private mosquitto broker on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from tests.support.processes import free_port, port_open, wait_until


class Mosquitto:
    """Start with `start()`, stop with `stop()`; `restart()` keeps the port (for reconnection tests).

    `persistent` keeps clients' sessions (subscriptions, queued QoS 1 messages) and retained
    messages across a restart, as a deployed broker does.
    """

    def __init__(self, users: dict[str, str] | None = None, persistent: bool = False) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.users = users or {}
        self.persistent = persistent
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self._dir / "log"

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()

    def _write_config(self) -> Path:
        lines = [f"listener {self.port} {self.host}", f"persistence {str(self.persistent).lower()}", "log_dest stderr"]
        if self.persistent:
            lines.append(f"persistence_location {self._dir}/")
        if os.geteuid() == 0:
            lines.append("user root")
        if self.users:
            passwords = self._dir / "passwd"
            passwords.touch(mode=0o600)
            for name, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), name, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        config = self._dir / "mosquitto.conf"
        config.write_text("\n".join(lines) + "\n")
        return config

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [binary, "-c", str(self._write_config())], stdout=subprocess.DEVNULL, stderr=log
            )
        wait_until(lambda: port_open(self.port), 10, f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self._process and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
