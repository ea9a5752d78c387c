"""The MQTT bridge outside live mode (issue 31): `--config configs/kiosk.yaml --text` publishes its turns and takes
commands; file mode says in one log line why the bridge is off."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np

from assistant.audio.wavfile import write_wav
from tests.component.test_mqtt_bridge import controller
from tests.conftest import REPO
from tests.e2e.test_cli import SCRIPT, cli, set_args
from tests.support.mosquitto import Mosquitto


def kiosk_args(broker: Mosquitto) -> list[str]:
    return [
        "--config",
        str(REPO / "configs" / "kiosk.yaml"),
        *set_args(
            f"mqtt.host={broker.host}",
            f"mqtt.port={broker.port}",
            "mqtt.topic_prefix=kiosk",
            "mqtt.site_id=lobby",
            "llm.backend=scripted",
            "llm.scripted.replies=[Hi there., The hall is open.]",
            "tools.mcp=[]",
        ),
    ]


async def test_text_mode_publishes_its_turns_and_takes_commands(mosquitto: Mosquitto) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--text",
        "--no-speech",
        *kiosk_args(mosquitto),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stdin is not None
    try:
        async with controller(mosquitto) as remote:
            await remote.next("status", lambda s: s == "online", timeout_s=60)
            process.stdin.write(b"hello\n")
            await process.stdin.drain()
            assert (await remote.next("transcript"))["text"] == "hello"
            assert (await remote.next("reply", lambda r: r["final"]))["text"] == "Hi there."
            await remote.send("ask", {"text": "Is the hall open?"})
            assert (await remote.next("transcript"))["text"] == "Is the hall open?"
            assert (await remote.next("reply", lambda r: r["final"]))["text"] == "The hall is open."
            process.stdin.close()  # end of input ends text mode
            await remote.next("status", lambda s: s == "offline", timeout_s=30)
            stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        _, stderr = await process.communicate()
        raise AssertionError(f"an event did not come; the assistant's log:\n{stderr.decode()}") from None
    finally:
        if process.returncode is None:
            process.kill()
    assert process.returncode == 0 and "Traceback" not in stderr.decode(), stderr.decode()
    assert stdout.decode().splitlines()[0] == "assistant: Hi there."


def test_file_mode_says_why_the_bridge_is_off(mosquitto: Mosquitto, tmp_path: Path) -> None:
    question = tmp_path / "q.wav"
    write_wav(question, np.zeros(1600, np.float32), 16_000)
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hub-cache")}  # stops at the model check
    result = cli("--input", str(question), "--output", str(tmp_path / "a.wav"), *kiosk_args(mosquitto), env=offline)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if "mqtt" in line.lower() and "cannot start" not in line]
    assert "off in file mode" in line
