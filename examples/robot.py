"""A robot's program that embeds the assistant and lets it act: drive to a room, report the battery, stop.

    python examples/robot.py                      # the default config: microphone, speaker, local LLM
    python examples/robot.py --config configs/openai.yaml --set llm.openai.model=gpt-4o-mini

Say "come to the kitchen" or "how much battery do you have?". The tools are plain Python functions: the model is
told of them from their type hints and docstrings, and their results go back to it; the assistant says "One
moment." if a drive takes longer than `tools.filler_ms`. Interrupting the assistant while it drives cancels the
drive (the function sees asyncio.CancelledError), and the conversation remembers where it stopped. Ctrl-C ends
the program. The motors here are simulated; a real robot would call its own drivers in `drive`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.config import ConfigError, load_config
from assistant.events import ToolCalled, ToolResult
from assistant.logs import setup_logging
from pipelines import Assistant

log = logging.getLogger("robot")

Room = Literal["kitchen", "living room", "hall", "bedroom", "charging dock"]
METRES = {"kitchen": 6.0, "living room": 3.0, "hall": 2.0, "bedroom": 8.0, "charging dock": 1.0}


class Robot:
    """The robot's state: where it is and how much charge it has (simulated: 0.5 m/s, 1 % per 4 m)."""

    def __init__(self) -> None:
        self.room: Room = "charging dock"
        self.battery = 87.0

    async def drive(self, room: Room) -> str:
        """Drive to a room of the flat and say when it arrived.

        Args:
            room: where to go.
        """
        if room == self.room:
            return f"already in the {room}"
        metres = abs(METRES[room] - METRES[self.room]) + 1.0
        log.info("driving from the %s to the %s (%.0f m)", self.room, room, metres)
        try:
            await asyncio.sleep(metres / 0.5)  # the real robot: its motor driver's move-and-wait
        except asyncio.CancelledError:
            log.info("stopped on the way to the %s", room)  # the real robot: brake
            raise
        self.room, self.battery = room, self.battery - metres / 4
        return f"arrived in the {room}"

    def battery_level(self) -> dict[str, object]:
        """The battery's charge in percent, and whether the robot is charging."""
        return {"percent": round(self.battery), "charging": self.room == "charging dock"}

    def where_am_i(self) -> str:
        """The room the robot is in now."""
        return self.room


async def main(config_path: str | None, overrides: list[str]) -> None:
    config = load_config(config_path, overrides)
    setup_logging(config.logging.level)
    robot = Robot()
    assistant = Assistant(config, tools=[robot.drive, robot.battery_level, robot.where_am_i])

    @assistant.tool
    async def go_charge() -> str:
        """Drive back to the charging dock to recharge."""
        return await robot.drive("charging dock")

    async with assistant:
        with assistant.subscribe(ToolCalled, ToolResult) as calls:
            log.info("the robot listens; Ctrl-C ends it")
            async for event in calls:
                if isinstance(event, ToolResult):
                    log.info("%s -> %s (%s, %.1f s)", event.name, event.result, event.status, event.duration_s)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="A robot that the assistant drives by voice.")
    parser.add_argument("--config", help="a YAML config (default: configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(main(args.config, args.set))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
