"""Choose and run a mode (live voice, text, wav file) with the shared listeners on the bus."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from assistant.config import Config
from assistant.events import EventBus
from assistant.llm.factory import make_backend
from assistant.logs import log_turns
from pipelines.text_mode import run_text_mode


class ModeUnavailable(RuntimeError):
    """The requested mode cannot run in this version."""


@dataclass(frozen=True)
class Mode:
    text: bool = False
    input_wav: Path | None = None
    output_wav: Path | None = None

    @property
    def name(self) -> str:
        return "text" if self.text else "file" if self.input_wav else "live"


async def run(config: Config, mode: Mode) -> None:
    if mode.name != "text":
        raise ModeUnavailable(
            f"the {mode.name} voice mode needs the speech pipeline, which is not in this version yet; "
            "use --text for now"
        )
    bus = EventBus()
    backend = make_backend(config.llm)
    listeners = [asyncio.create_task(log_turns(bus))] if config.logging.turn_lines else []
    try:
        await run_text_mode(config, backend, bus)
        await asyncio.sleep(0)  # let listeners see the last events
    finally:
        for task in listeners:
            task.cancel()
        for task in listeners:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await backend.aclose()
