"""The MQTT bridge against a real mosquitto on a loopback port, driving an Assistant whose models are fakes.

A second real aiomqtt client plays the kiosk's controller: it sends commands and reads the events.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from assistant.audio.streams import AudioSink, FileSink
from assistant.config import Config
from assistant.events import ErrorEvent
from pipelines import Assistant
from tests.conftest import require
from tests.support.fakes import FRAME, FakeBackend, FakeSpeechEngine, FakeTranscriber, ManualSink, QueueSource
from tests.support.mosquitto import Mosquitto
from tests.unit.test_reply import until

REPLY = ["One two three. ", "Four five six."]
BASE = "kiosk/lobby"


class Controller:
    """The other side: an MQTT client that publishes commands (QoS 1) and collects everything under BASE."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.received: asyncio.Queue[tuple[str, bytes, bool]] = asyncio.Queue()

    async def send(self, command: str, payload: Any = None, *, raw: bytes | None = None, retain: bool = False) -> None:
        data = raw if raw is not None else b"" if payload is None else json.dumps(payload).encode()
        await self.client.publish(f"{BASE}/command/{command}", data, qos=1, retain=retain)

    async def next(self, topic: str, where: Callable[[Any], bool] = lambda p: True, timeout_s: float = 10) -> Any:
        """The next status or event (by its name) whose payload (JSON decoded, text for the status) passes `where`."""
        async with asyncio.timeout(timeout_s):
            while True:
                name, payload, _ = await self.received.get()
                if name == _topic(topic):
                    value = payload.decode() if topic == "status" else json.loads(payload)
                    if where(value):
                        return value

    def drain(self, topic: str) -> list[Any]:
        seen = [self.received.get_nowait() for _ in range(self.received.qsize())]
        return [json.loads(p) for name, p, _ in seen if name == _topic(topic)]

    async def _collect(self) -> None:
        async for message in self.client.messages:
            payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
            self.received.put_nowait((message.topic.value, payload, message.retain))


def _topic(name: str) -> str:
    return f"{BASE}/status" if name == "status" else f"{BASE}/event/{name}"


@asynccontextmanager
async def controller(broker: Mosquitto, **login: str) -> AsyncIterator[Controller]:
    async with aiomqtt.Client(broker.host, broker.port, **login) as client:
        other = Controller(client)
        await client.subscribe(f"{BASE}/#", qos=1)
        collecting = asyncio.create_task(other._collect())
        try:
            yield other
        finally:
            collecting.cancel()


def kiosk_config(broker: Mosquitto, **mqtt: Any) -> Config:
    return Config.model_validate(
        {
            "csm": {"chunk_frames": 1},
            "mqtt": {
                "enabled": True,
                "host": broker.host,
                "port": broker.port,
                "topic_prefix": "kiosk",
                "site_id": "lobby",
                "reconnect_min_s": 0.1,
                "reconnect_max_s": 0.5,
                "max_payload_bytes": 1024,
                **mqtt,
            },
        }
    )


@asynccontextmanager
async def kiosk(config: Config, sink: AudioSink) -> AsyncIterator[Assistant]:
    assistant = Assistant(
        config,
        backend=FakeBackend(REPLY),
        engine=FakeSpeechEngine(frames_per_text=3),
        transcriber=FakeTranscriber(),
        source=QueueSource(),
        sink=sink,
    )
    async with assistant:
        yield assistant


@pytest.fixture
def broker() -> Iterator[Mosquitto]:
    require(Mosquitto.available(), "mosquitto not installed")
    server = Mosquitto(persistent=True).start()
    yield server
    server.close()


async def test_each_command_is_carried_out_and_each_event_published(broker: Mosquitto, tmp_path: Path) -> None:
    async with controller(broker) as remote, kiosk(kiosk_config(broker), ManualSink()) as assistant:
        sink = assistant._voice.sink
        assert await remote.next("status", lambda s: s == "online") == "online"
        assert (await remote.next("state"))["state"] == "listening"  # the state it is in, said as it connects

        await remote.send("ask", {"text": "What is on today?"})
        assert (await remote.next("state"))["state"] == "thinking"
        heard = await remote.next("transcript")
        assert heard["text"] == "What is on today?"
        assert (await remote.next("reply"))["text"] == "One two three."
        await until(lambda: sink.queued >= 6 * FRAME)
        sink.advance(6 * FRAME)
        assert (await remote.next("state", lambda s: s["state"] != "thinking"))["state"] == "speaking"
        assert (await remote.next("state"))["state"] == "listening"
        final = await remote.next("reply", lambda r: r["final"])
        assert final == {**final, "text": "One two three. Four five six.", "turn": heard["turn"], "interrupted": False}
        latency = await remote.next("latency")
        assert latency["turn"] == heard["turn"] and latency["first_played_s"] is not None

        await remote.send("say", {"text": "Welcome to the lobby."})
        await until(lambda: sink.queued > sink.played)
        sink.advance(FRAME)  # the first frame is heard
        assert (await remote.next("state", lambda s: s["state"] == "speaking"))["state"] == "speaking"
        await remote.send("interrupt", {})
        interrupted = await remote.next("interrupted")
        assert interrupted["source"] == "mqtt"
        said = await remote.next("reply", lambda r: r["final"])
        assert said["interrupted"] and said["turn"] == interrupted["turn"]
        assert assistant.conversation.turns[-1].interrupted

        await remote.send("mute")  # no payload, or {}
        assert (await remote.next("muted"))["muted"] is True and assistant.muted
        await remote.send("unmute", {})
        assert (await remote.next("muted"))["muted"] is False and not assistant.muted

        await remote.send("reset")
        assert "time" in await remote.next("reset")
        assert assistant.conversation.turns == []


@pytest.mark.parametrize("pace_s", [0.0, 0.15])
async def test_every_interrupt_lands_in_a_storm_of_ask_and_interrupt(broker: Mosquitto, pace_s: float) -> None:
    """Each `ask` is followed by an `interrupt` (at once, or paced): each interrupt stops its own ask, never the
    reply before it a second time, and nothing is left speaking or queued."""
    pairs = 40 if not pace_s else 12
    async with controller(broker) as remote, kiosk(kiosk_config(broker), ManualSink()) as assistant:
        await remote.next("status", lambda s: s == "online")
        rng = random.Random(0)
        for n in range(pairs):
            await remote.send("ask", {"text": f"Question {n}?"})
            await asyncio.sleep(rng.uniform(0, pace_s))
            await remote.send("interrupt")
        interrupted = [await remote.next("interrupted") for _ in range(pairs)]
        assert {e["source"] for e in interrupted} == {"mqtt"}
        assert len({e["turn"] for e in interrupted}) == pairs  # one each: none spent twice on the same turn
        await until(lambda: not assistant.busy)
        await asyncio.sleep(0.2)
        assert remote.drain("interrupted") == []
        assert all(r["interrupted"] for r in remote.drain("reply") if r["final"])


async def test_interrupt_all_over_mqtt_drops_every_queued_turn(broker: Mosquitto) -> None:
    async with controller(broker) as remote, kiosk(kiosk_config(broker), ManualSink()) as assistant:
        await remote.next("status", lambda s: s == "online")
        for text in ("One.", "Two.", "Three."):
            await remote.send("say", {"text": text})
        await remote.next("state", lambda s: s["state"] == "thinking")
        await remote.send("interrupt", {"all": True})
        assert len({(await remote.next("interrupted"))["turn"] for _ in range(3)}) == 3
        await until(lambda: not assistant.busy)
        assert assistant.conversation.turns == []


BAD = [
    ("say", b"{not json", "payload is not JSON"),
    ("say", b'{"text": 5}', "text: Input should be a valid string"),
    ("ask", b'{"text": "   "}', "text: must contain some words"),
    ("ask", b'{"question": "hi"}', "text: Field required"),
    ("say", b'{"text": "hi", "voice": "loud"}', "voice: unexpected field"),
    ("mute", b'["now"]', "payload must be a JSON object, not list"),
    ("interrupt", b'{"now": true}', "now: unexpected field"),
    ("interrupt", b'{"all": "yes"}', "all: Input should be a valid boolean"),
    ("say", json.dumps({"text": "la " * 400}).encode(), "over the limit of 1024"),
    ("ask", b"[" * 1000, "payload is not JSON"),
    ("ask", b"\xff\xfe", "payload is not UTF-8 (byte 0 is 0xff)"),
    ("say", '{"text": "hi"}'.encode("utf-16"), "payload is not UTF-8 (byte 0 is 0xff)"),  # not taken as UTF-16
    ("say", '{"text": "café"}'.encode("latin-1"), "payload is not UTF-8 (byte 13 is 0xe9)"),
    ("shutdown", b"{}", "unknown command 'shutdown'"),
    ("say/extra", b'{"text": "hi"}', "unknown command 'say/extra'"),  # a deeper topic is no command either
]


async def test_malformed_or_oversized_commands_are_errors_and_change_nothing(broker: Mosquitto) -> None:
    async with controller(broker) as remote, kiosk(kiosk_config(broker), ManualSink()) as assistant:
        await remote.next("status", lambda s: s == "online")
        for command, payload, reason in BAD:
            await remote.send(command, raw=payload)
            error = await remote.next("error")
            assert error["source"] == "mqtt" and error["command"] == command and reason in error["message"], error
        await asyncio.sleep(0.2)
        assert not assistant.busy and not assistant.muted and assistant.conversation.turns == []
        assert assistant._voice.sink.queued == 0 and assistant._voice.backend.messages == []
        assert remote.drain("state") == [] and remote.drain("transcript") == []
        await remote.send("mute")  # and the bridge still takes good commands
        assert (await remote.next("muted"))["muted"] is True


async def test_broker_restart_is_reported_the_assistant_keeps_working_and_no_command_is_lost(
    broker: Mosquitto, tmp_path: Path
) -> None:
    config = kiosk_config(broker, reconnect_min_s=2.0, reconnect_max_s=4.0)
    async with kiosk(config, FileSink(tmp_path / "out.wav")) as assistant:
        with assistant.subscribe(ErrorEvent) as errors:
            async with controller(broker) as remote:
                await remote.next("status", lambda s: s == "online")
            broker.stop()
            lost = await asyncio.wait_for(errors.get(), 10)
            assert f"lost the MQTT broker {broker.host}:{broker.port}" in lost.message and lost.recoverable
            assert await assistant.ask("Are you still there?") == "One two three. Four five six."  # no broker needed

            broker.start()  # same port; the bridge waits at least reconnect_min_s before trying again
            async with controller(broker) as remote:
                for text in ("First.", "Second.", "Third."):  # sent before the bridge is back
                    await remote.send("say", {"text": text})
                await remote.send("mute")
                assert not assistant.muted  # not carried out yet: the bridge is still away
                await remote.next("status", lambda s: s == "online")
                assert (await remote.next("muted"))["muted"] is True
                await until(lambda: len(assistant.conversation.turns) == 5)
                assert [t.text for t in assistant.conversation.turns[2:]] == ["First.", "Second.", "Third."]
                await remote.send("unmute")  # and after reconnecting, as before
                assert (await remote.next("muted"))["muted"] is False
            assert errors.queue.empty()  # the return is logged, not reported as an error


async def test_a_retained_command_is_not_carried_out(broker: Mosquitto, tmp_path: Path) -> None:
    """Retained, it would be carried out again each time the bridge subscribes."""
    async with controller(broker) as remote:
        await remote.send("say", {"text": "Retained."}, retain=True)
        async with kiosk(kiosk_config(broker), FileSink(tmp_path / "out.wav")) as assistant:
            error = await remote.next("error")
            assert error["command"] == "say" and "retained commands are not carried out" in error["message"]
            assert assistant.conversation.turns == []
            await remote.send("ask", {"text": "Retained while it listens."}, retain=True)
            error = await remote.next("error")  # the broker keeps the flag: retain-as-published
            assert error["command"] == "ask" and "retained commands are not carried out" in error["message"]
            await remote.send("mute")
            await remote.next("muted")
            assert assistant.conversation.turns == []
        for name in ("say", "ask"):
            await remote.send(name, raw=b"", retain=True)  # an empty retained message clears it


async def test_commands_left_from_an_earlier_run_are_not_carried_out(broker: Mosquitto, tmp_path: Path) -> None:
    config = kiosk_config(broker)
    async with kiosk(config, FileSink(tmp_path / "out.wav")):
        pass  # the first run ends; its session stays on the broker
    async with controller(broker) as remote:
        await remote.send("say", {"text": "Stale."})
    async with kiosk(config, FileSink(tmp_path / "out2.wav")) as assistant, controller(broker) as remote:
        await remote.next("status", lambda s: s == "online")
        await remote.send("mute")
        await remote.next("muted")
        assert assistant.conversation.turns == []


async def test_status_is_retained_online_and_offline_after_stop_and_a_lost_assistant_is_marked_offline(
    broker: Mosquitto, tmp_path: Path
) -> None:
    async with kiosk(kiosk_config(broker), FileSink(tmp_path / "out.wav")):
        async with controller(broker) as remote:  # subscribing later still finds the retained status
            assert await remote.next("status") == "online"
    async with controller(broker) as remote:
        assert await remote.next("status") == "offline"
    async with controller(broker) as remote:
        await remote.next("status")
        async with kiosk(kiosk_config(broker), FileSink(tmp_path / "out2.wav")) as assistant:
            assert await remote.next("status") == "online"
            # The connection drops without a goodbye (as when the process dies): the broker sends the last will.
            assistant._bridge._client._client.socket().shutdown(socket.SHUT_RDWR)
            assert await remote.next("status") == "offline"
            assert await remote.next("status") == "online"  # and the bridge is back


async def test_after_a_clean_stop_a_start_says_online_once_then_the_state(broker: Mosquitto, tmp_path: Path) -> None:
    """The retained "offline" the stop left is older than the new "online": it is not answered with a second one."""
    async with controller(broker) as remote, kiosk(kiosk_config(broker), FileSink(tmp_path / "one.wav")):
        await remote.next("status", lambda s: s == "online")
    async with controller(broker) as remote:
        assert await remote.next("status") == "offline"
        async with kiosk(kiosk_config(broker), FileSink(tmp_path / "two.wav")):
            assert await remote.next("status") == "online"
            assert (await remote.next("state"))["state"] == "listening"  # no need to wait for a change to know it
            await asyncio.sleep(0.5)
            seen = [remote.received.get_nowait() for _ in range(remote.received.qsize())]
            assert [(topic, payload) for topic, payload, _ in seen if not topic.endswith("/event/state")] == []
        assert await remote.next("status") == "offline"


async def test_an_offline_status_while_connected_is_set_right(broker: Mosquitto, tmp_path: Path) -> None:
    """As when the broker publishes the last will of a lost connection only after the bridge is back."""
    async with controller(broker) as remote, kiosk(kiosk_config(broker), FileSink(tmp_path / "out.wav")):
        assert await remote.next("status", lambda s: s == "online") == "online"
        await remote.client.publish(f"{BASE}/status", "offline", qos=1, retain=True)
        assert await remote.next("status") == "offline"
        assert await remote.next("status") == "online"
    async with controller(broker) as remote:  # stopping, it does not set its own "offline" right
        assert await remote.next("status") == "offline"


async def test_password_from_the_environment_and_a_wrong_one_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(Mosquitto.available(), "mosquitto not installed")
    secured = Mosquitto(users={"kiosk": "s3cret"}).start()
    try:
        monkeypatch.setenv("KIOSK_MQTT_PASSWORD", "s3cret")
        config = kiosk_config(secured, username="kiosk", password_env="KIOSK_MQTT_PASSWORD")
        async with controller(secured, username="kiosk", password="s3cret") as remote:
            async with kiosk(config, FileSink(tmp_path / "ok.wav")):
                assert await remote.next("status", lambda s: s == "online") == "online"

        monkeypatch.setenv("KIOSK_MQTT_PASSWORD", "wrong")
        async with kiosk(config, FileSink(tmp_path / "wrong.wav")) as assistant:
            with assistant.subscribe(ErrorEvent) as errors:
                refused = await asyncio.wait_for(errors.get(), 10)
                assert refused.message.startswith(
                    f"the MQTT broker {secured.host}:{secured.port} refused user 'kiosk' "
                    "(password from $KIOSK_MQTT_PASSWORD)"
                ), refused.message
                assert "Not authorized" in refused.message  # what mosquitto answers to a wrong password
                assert not refused.recoverable and not assistant._bridge.connected
                assert await assistant.ask("Still working?") == "One two three. Four five six."
                await asyncio.sleep(0.5)
                assert errors.queue.empty()  # not retried: the same password would be refused again

        monkeypatch.delenv("KIOSK_MQTT_PASSWORD")
        from pipelines.components import StartupError

        with pytest.raises(StartupError, match=r"\$KIOSK_MQTT_PASSWORD, which is not set"):
            async with kiosk(config, FileSink(tmp_path / "unset.wav")):
                pass
    finally:
        secured.close()


async def test_no_broker_is_reported_and_the_assistant_works_without_it(tmp_path: Path) -> None:
    absent = Mosquitto()  # never started: nothing listens on its port
    config = kiosk_config(absent)
    absent.close()
    async with kiosk(config, FileSink(tmp_path / "out.wav")) as assistant:
        with assistant.subscribe(ErrorEvent) as errors:
            error = await asyncio.wait_for(errors.get(), 10)
            assert error.message.startswith(f"cannot reach the MQTT broker 127.0.0.1:{config.mqtt.port}: ")
            assert await assistant.ask("Hello?") == "One two three. Four five six."


@pytest.mark.parametrize("mode", ["push_to_talk", "wake_word"])
async def test_command_listen_opens_a_turn_without_the_wake_word(broker: Mosquitto, tmp_path: Path, mode: str) -> None:
    config = kiosk_config(broker).model_copy(deep=True)
    config.listen.mode = mode  # type: ignore[assignment]
    async with controller(broker) as remote, kiosk(config, FileSink(tmp_path / "out.wav")) as assistant:
        await remote.next("status", lambda s: s == "online")
        assert assistant._loop().floor.user.value == "waiting"
        await remote.send("listen")
        await remote.next("state", lambda s: s["state"] == "listening")
        await until(lambda: assistant._loop().floor.user.value == "listening")
        if mode == "push_to_talk":
            await remote.send("listen", {"release": True})  # let go without a word: waiting again
            await remote.next("state", lambda s: s["state"] == "waiting")
        await remote.send("listen", {"release": "yes"})
        error = await remote.next("error", lambda e: e.get("command") == "listen")
        assert "release" in error["message"]
