"""The MQTT bridge: the bus's events out to a broker, commands from the broker in (aiomqtt, MQTT 5).

It only listens to the event bus and drives the assistant through the small `Commands` protocol.
The connection runs in its own task: losing the broker is reported once (an ErrorEvent and a log
line) and the assistant goes on without it while the bridge reconnects with capped exponential
backoff. Events that happen while the broker is away are not sent (they describe moments that
have passed). Commands are QoS 1 in a persistent session (fixed client id, no clean start, a session
that never expires), so commands sent while the bridge is away are kept by the broker and handed over
when it is back, through a broker restart too when the broker persists its sessions. On its first
connection the bridge clears what the broker kept from an earlier run: stale commands are never carried
out. The command subscription asks for retain-as-published, so a retained command is known as one
whenever it arrives (otherwise brokers clear the flag on messages to a live subscription).
The retained status is "online" while connected: the bridge follows its own status topic and says
"online" again should its last will, from a connection the broker noticed lost only after the bridge
was back, mark it offline (what came before its own "online" came back to it is older, and is let be).
Each time it connects it publishes the assistant's current state on `event/state`, so a controller need not
wait for the next change to know it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from typing import Any, Protocol

import aiomqtt
from aiomqtt.exceptions import MqttCodeError, MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from assistant.config import MqttConfig
from assistant.events import CommandRejected, ErrorEvent, EventBus, StateChanged, Subscription
from assistant.mqtt.messages import EVENT_TOPICS, Command, CommandError, Topics, event_message, parse_command
from assistant.mqtt.tools import MqttTools
from assistant.tools.registry import ToolError, ToolRegistry

log = logging.getLogger(__name__)

REFUSED_CREDENTIALS = {4, 5, 134, 135}
"""CONNACK codes for a bad user name or password, or not authorised (MQTT 3.1.1 and 5)."""
NEVER_EXPIRES = 0xFFFFFFFF
"""MQTT 5's session expiry interval for a session the broker keeps until the client clears it."""
CANCEL_WAIT_S = 1.0
PUBLISH_TIMEOUT_S = 5.0


class Commands(Protocol):
    """What the bridge asks of the assistant; each call takes effect in the order commands arrive."""

    def interrupt(self, source: str = ..., *, all: bool = ...) -> bool: ...

    def say(self, text: str) -> asyncio.Future[str]: ...

    def ask(self, text: str) -> asyncio.Future[str]: ...

    def mute(self) -> None: ...

    def unmute(self) -> None: ...

    def listen(self, source: str = ..., *, release: bool = ...) -> None: ...

    def reset(self) -> asyncio.Future[None]: ...


class MqttSetupError(RuntimeError):
    """The bridge cannot be set up from its settings (a missing password variable, CA file)."""


class MqttBridge:
    """`await bridge.start()` subscribes to the bus and begins connecting; `await bridge.aclose()` ends it. With a
    `tools` registry, the tools a host announces over MQTT are added to it (`assistant.mqtt.tools`)."""

    def __init__(
        self, config: MqttConfig, bus: EventBus, commands: Commands, tools: ToolRegistry | None = None
    ) -> None:
        self.config = config
        self.bus = bus
        self.commands = commands
        self.topics = Topics(f"{config.topic_prefix}/{config.site_id}")
        self.client_id = config.client_id or f"{config.topic_prefix}-{config.site_id}"
        self.broker = f"{config.host}:{config.port}"
        self._client: aiomqtt.Client | None = None  # set while connected
        self._cleared = False  # the session left by an earlier run has been dropped
        self._tasks: list[asyncio.Task[None]] = []
        self._events: Subscription | None = None
        self._closing = False  # aclose() has marked it offline
        self._online = False  # this connection's own "online" has come back from the broker
        self._state: StateChanged | None = None  # the last state the bus announced
        self.tools = MqttTools(tools, self._publish_json, self._report) if tools is not None else None

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def start(self) -> None:
        password, tls = self._password(), self._tls()
        self._events = self.bus.subscribe(*EVENT_TOPICS)
        self._tasks = [
            asyncio.create_task(self._connection(password, tls), name="mqtt-connection"),
            asyncio.create_task(self._forward(self._events), name="mqtt-events"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._crashed)

    async def aclose(self) -> None:
        """Mark the assistant offline (retained), disconnect and stop."""
        self._closing = True
        if self._events is not None:
            self._events.close()
        if (client := self._client) is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.topics.status, "offline", qos=1, retain=True, timeout=PUBLISH_TIMEOUT_S)
        pending = set(self._tasks)
        while pending:  # cancelled mid-connection, aiomqtt's exit waits for the broker's goodbye with no time limit
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=CANCEL_WAIT_S)
        self._tasks = []
        if self.tools is not None:
            self.tools.withdraw()

    async def _publish_json(self, subtopic: str, payload: dict[str, Any]) -> None:
        if (client := self._client) is None:
            raise ToolError(f"the MQTT broker {self.broker} is not connected, so the host cannot be asked")
        try:
            data = json.dumps(payload, ensure_ascii=False)
            await client.publish(f"{self.topics.base}/{subtopic}", data, qos=1, timeout=PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as error:
            raise ToolError(f"could not publish on MQTT: {error}") from None

    def _password(self) -> str | None:
        password = self.config.password()
        if self.config.password_env and password is None:
            raise MqttSetupError(
                f"mqtt.password_env names ${self.config.password_env}, which is not set "
                "(the broker password goes there)"
            )
        return password

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        try:
            return ssl.create_default_context(cafile=self.config.ca_file)
        except (OSError, ssl.SSLError) as error:
            raise MqttSetupError(f"mqtt.ca_file {self.config.ca_file!r}: {error}") from None

    def _client_for(self, password: str | None, tls: ssl.SSLContext | None, clean: bool = False) -> aiomqtt.Client:
        """A fresh client per connection: aiomqtt's clients are not meant to reconnect after a lost connection."""
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = 0 if clean else NEVER_EXPIRES
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            username=self.config.username,
            password=password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=clean,
            properties=session,
            keepalive=self.config.keepalive_s,
            tls_context=tls,
            will=aiomqtt.Will(self.topics.status, "offline", qos=1, retain=True),
        )

    async def _connection(self, password: str | None, tls: ssl.SSLContext | None) -> None:
        """Connect, receive commands until the connection is lost, wait, and again."""
        delay, lost_at = self.config.reconnect_min_s, time.monotonic()
        while True:
            try:
                if not self._cleared:
                    async with self._client_for(password, tls, clean=True):  # drops the earlier run's session
                        self._cleared = True
                async with self._client_for(password, tls) as client:
                    await client.subscribe(
                        self.topics.commands, options=SubscribeOptions(qos=1, retainAsPublished=True)
                    )
                    await client.subscribe(self.topics.status, qos=1)
                    if self.tools is not None:
                        await client.subscribe(self.topics.tool_manifest, qos=1)
                        await client.subscribe(self.topics.tool_result, qos=1)
                    self._client, self._online = client, False  # connected before "online" can reach anyone
                    await client.publish(self.topics.status, "online", qos=1, retain=True)
                    await self._say_state(client)
                    log.info(
                        "MQTT: connected to %s as %r (after %.1f s)",
                        self.broker,
                        self.client_id,
                        time.monotonic() - lost_at,
                    )
                    delay = self.config.reconnect_min_s
                    async for message in client.messages:
                        topic = message.topic.value
                        if topic == self.topics.status:
                            await self._stay_online(client, message)
                        elif self.tools is not None and topic == self.topics.tool_manifest:
                            self.tools.on_manifest(_bytes(message.payload))
                        elif self.tools is not None and topic == self.topics.tool_result:
                            self.tools.on_result(_bytes(message.payload))
                        else:
                            self._receive(message)
            except MqttConnectError as error:
                if _code(error) in REFUSED_CREDENTIALS:
                    self._report(self._refusal(error), recoverable=False)
                    return
                self._failed(error, delay)
            except aiomqtt.MqttError as error:
                self._failed(error, delay)
            if self._client is not None:
                self._client, lost_at = None, time.monotonic()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_s)

    def _failed(self, error: aiomqtt.MqttError, delay: float) -> None:
        """Report the first failure of an outage; later attempts of the same outage only go to the debug log."""
        if self._client is not None:
            self._report(f"lost the MQTT broker {self.broker}: {error}; reconnecting")
        elif delay == self.config.reconnect_min_s:
            self._report(f"cannot reach the MQTT broker {self.broker}: {error}; retrying")
        else:
            log.debug("MQTT: %s still unreachable (%s); next try in %.1f s", self.broker, error, delay)

    def _refusal(self, error: MqttConnectError) -> str:
        who = f"user {self.config.username!r}" if self.config.username else "an anonymous connection"
        hint = f" (password from ${self.config.password_env})" if self.config.password_env else ""
        return f"the MQTT broker {self.broker} refused {who}{hint}: {error}; not retrying, the bridge is off"

    async def _say_state(self, client: aiomqtt.Client) -> None:
        """The state the assistant is in, for controllers that would otherwise learn it only at its next change."""
        message = event_message(self._state or StateChanged(state="idle"))
        assert message is not None  # states are published
        await client.publish(self.topics.event(message[0]), message[1], qos=0, timeout=PUBLISH_TIMEOUT_S)

    async def _stay_online(self, client: aiomqtt.Client, status: aiomqtt.Message) -> None:
        if status.payload == b"online":
            self._online = True
        elif self._online and not self._closing:  # not the retained status or a will from before its "online"
            log.info(
                "MQTT: the broker marked %s %r while connected; saying online again", self.topics.status, status.payload
            )
            await client.publish(self.topics.status, "online", qos=1, retain=True)

    def _receive(self, message: aiomqtt.Message) -> None:
        name = self.topics.command_name(message.topic.value)
        payload = _bytes(message.payload)
        try:
            if message.retain:  # it would be carried out again on every subscription
                raise CommandError("retained commands are not carried out; publish commands without retain")
            command = parse_command(name, payload, self.config.max_payload_bytes)
        except CommandError as error:
            log.warning("MQTT: rejected command %r: %s", name[:64], error)
            self.bus.publish(CommandRejected(source="mqtt", command=name[:64], message=str(error)))
            return
        log.info("MQTT: command %s", command.name)
        self._carry_out(command)

    def _carry_out(self, command: Command) -> None:
        if command.name == "interrupt":
            self.commands.interrupt("mqtt", all=command.all)
        elif command.name in ("say", "ask"):
            assert command.text is not None
            turn = (self.commands.say if command.name == "say" else self.commands.ask)(command.text)
            turn.add_done_callback(_retrieve)  # results and failures reach MQTT as events
        elif command.name == "listen":
            self.commands.listen("mqtt", release=command.release)
        elif command.name == "reset":
            self.commands.reset().add_done_callback(_retrieve)
        else:
            (self.commands.mute if command.name == "mute" else self.commands.unmute)()

    async def _forward(self, events: Subscription) -> None:
        """Publish the bus's events while connected (QoS 0); while not, they are dropped."""
        async for event in events:
            if isinstance(event, StateChanged):
                self._state = event  # said again on each connection
            message = event_message(event)
            if message is None or (client := self._client) is None:
                continue
            name, payload = message
            try:
                await client.publish(self.topics.event(name), payload, qos=0, timeout=PUBLISH_TIMEOUT_S)
            except aiomqtt.MqttError as error:  # the connection task reports the loss
                log.debug("MQTT: event %s not sent: %s", name, error)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("MQTT: the bridge failed", exc_info=error)
            self._report(f"the MQTT bridge failed: {type(error).__name__}: {error}", recoverable=False)

    def _report(self, message: str, recoverable: bool = True) -> None:
        (log.warning if recoverable else log.error)("%s", message)
        self.bus.publish(ErrorEvent(source="mqtt", message=message, recoverable=recoverable))


def _bytes(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else str(payload or "").encode()


def _code(error: MqttCodeError) -> int | None:
    return error.rc.value if isinstance(error.rc, ReasonCode) else error.rc


def _retrieve(turn: asyncio.Future[Any]) -> None:
    if not turn.cancelled():
        turn.exception()  # already reported on the bus by the voice loop
