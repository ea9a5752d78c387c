"""The MQTT bridge for kiosks and robots: events out as JSON, validated commands in."""

from assistant.mqtt.bridge import Commands, MqttBridge, MqttSetupError
from assistant.mqtt.messages import COMMANDS, EVENT_TOPICS, CommandError, Topics

__all__ = ["COMMANDS", "EVENT_TOPICS", "CommandError", "Commands", "MqttBridge", "MqttSetupError", "Topics"]
