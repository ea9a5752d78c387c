"""What a round of tool calls costs a turn beyond the model and the tool themselves; prints one JSON line.

    OMP_NUM_THREADS=1 python bench/tools.py [--turns 10] [--llm-ms 200] [--tool-ms 300] [--filler-ms 700]

The real openai backend talks to an OpenAI-compatible server on 127.0.0.1 that answers every request in a fixed
time (`--llm-ms` before its first delta): first with a tool call (its arguments streamed in pieces, as OpenAI does),
then, given the result, with the answer. The tool is a Python function that takes `--tool-ms`.

- `round_overhead_ms`: from the end of the model's first stream (the call is known) to the start of its second
  request, less the tool's own run: checking the call, events, the filler's hand-off, building the messages.
- `turn_overhead_ms`: the same seen from outside, as a cross-check: the tool turn's first reply text, less a plain
  turn's (one request), less the tool's run and the second request's time to its first delta (client side).
- `filler_first_audio_ms`: a second set of turns with a slow tool and a tiny random CSM speaking into a sink: from
  the call's start to the filler's first audio in the sink (goal: within filler_ms + 50 ms; the filler is prepared
  as the call starts, and released when filler_ms has passed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from assistant.audio.streams import FileSink
from assistant.config import Config
from assistant.events import EventBus, ReplyText
from assistant.llm.backend import Message, ToolCall, ToolSpec
from assistant.llm.openai_compatible import OpenAICompatibleBackend
from assistant.tools import ToolRegistry, tool
from assistant.tts.csm import CSMEngine
from pipelines.voice_loop import VoiceLoop
from tests.conftest import TOKENIZER_JSON
from tests.support.chat_server import Call, ChatServer, Script
from tests.support.random_models import TINY_CSM, TINY_MIMI, build_random_mimi, save_random_csm

ANSWER = "The robot is in the kitchen now."


class TimedBackend:
    """The real backend, with the time each stream started, gave its first item and ended."""

    def __init__(self, inner: OpenAICompatibleBackend) -> None:
        self.inner, self.name = inner, inner.name
        self.streams: list[dict[str, float]] = []

    async def start(self) -> None:
        await self.inner.start()

    async def stream(
        self, messages: list[Message], cancel: asyncio.Event | None = None, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[str | ToolCall]:
        times = {"start": time.monotonic()}
        self.streams.append(times)
        async for item in self.inner.stream(messages, cancel, tools):
            times.setdefault("first", time.monotonic())
            yield item
        times["end"] = time.monotonic()

    async def aclose(self) -> None:
        await self.inner.aclose()


class TimedSink(FileSink):
    """A wav-file sink that notes when each piece of audio arrived."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.arrivals: list[float] = []

    def play(self, audio: np.ndarray) -> int:
        self.arrivals.append(time.monotonic())
        return super().play(audio)


def robot(tool_s: float) -> tuple[ToolRegistry, list[tuple[float, float]]]:
    runs: list[tuple[float, float]] = []

    @tool
    async def move(room: str) -> str:
        """Drive the robot to a room."""
        started = time.monotonic()
        await asyncio.sleep(tool_s)
        runs.append((started, time.monotonic()))
        return f"arrived in the {room}"

    registry = ToolRegistry()
    registry.add(move)
    return registry, runs


def config(url: str, **tools: Any) -> Config:
    return Config.model_validate(
        {
            "llm": {"backend": "openai", "openai": {"base_url": url, "api_key_env": None, "model": "bench"}},
            "tools": tools,
            "csm": {"seed": 0, "max_audio_ms": 800, "chunk_frames": 2},
        }
    )


async def first_text(voice: VoiceLoop, question: str) -> float:
    """Seconds from asking to the reply's first text chunk."""
    replies = voice.bus.subscribe(ReplyText)
    started = time.monotonic()
    turn = voice.ask(question)
    first = await replies.get()
    await turn
    replies.close()
    return first.at - started


async def measure(turns: int, llm_s: float, tool_s: float) -> dict[str, Any]:
    call = Call("move", json.dumps({"room": "kitchen"}))
    scripts = []
    for _ in range(turns + 1):  # a plain turn, then a tool turn (two requests), each time; the first pair warms up
        scripts += [Script(ANSWER, first_delay_s=llm_s), Script("", first_delay_s=llm_s, calls=(call,))]
        scripts += [Script(ANSWER, first_delay_s=llm_s)]
    with ChatServer(*scripts) as server:
        settings = config(server.url, filler=None)
        registry, runs = robot(tool_s)
        backend = TimedBackend(OpenAICompatibleBackend(settings.llm.openai))
        voice = VoiceLoop(settings, EventBus(), backend, tools=registry)
        plain, with_tool, rounds, turn_overheads = [], [], [], []
        for n in range(turns + 1):
            voice.conversation.reset()
            p = await first_text(voice, "Where are you?")
            voice.conversation.reset()
            q = await first_text(voice, "Come to the kitchen.")
            first, second = backend.streams[-2], backend.streams[-1]
            ran = runs[-1][1] - runs[-1][0]
            if n:
                plain.append(p)
                with_tool.append(q)
                rounds.append(second["start"] - first["end"] - ran)
                turn_overheads.append(q - p - ran - (second["first"] - second["start"]))
        await backend.aclose()
    return {
        "plain_turn_first_text_ms": _ms(statistics.median(plain)),
        "tool_turn_first_text_ms": _ms(statistics.median(with_tool)),
        "round_overhead_ms": {"median": _ms(statistics.median(rounds)), "max": _ms(max(rounds))},
        "turn_overhead_ms": {"median": _ms(statistics.median(turn_overheads)), "max": _ms(max(turn_overheads))},
    }


async def measure_filler(turns: int, llm_s: float, filler_ms: int, tmp: Path) -> dict[str, Any]:
    engine = CSMEngine.from_pretrained(
        save_random_csm(tmp / "csm", TINY_CSM), mimi=build_random_mimi(TINY_MIMI), tokenizer=TOKENIZER_JSON
    )
    call = Call("move", json.dumps({"room": "kitchen"}))
    scripts = []
    for _ in range(turns + 1):
        scripts += [Script("", first_delay_s=llm_s, calls=(call,)), Script(ANSWER, first_delay_s=llm_s)]
    firsts = []
    with ChatServer(*scripts) as server:
        settings = config(server.url, filler_ms=filler_ms)
        registry, runs = robot(filler_ms / 1000 + 0.5)
        backend = OpenAICompatibleBackend(settings.llm.openai)
        sink = TimedSink(tmp / "out.wav")
        voice = VoiceLoop(settings, EventBus(), backend, tools=registry, engine=engine, sink=sink)
        for n in range(turns + 1):
            voice.conversation.reset()
            heard = len(sink.arrivals)
            await voice.ask("Come to the kitchen.")
            if n:
                firsts.append(sink.arrivals[heard] - runs[-1][0])
        await backend.aclose()
        await sink.aclose()

    return {
        "filler_first_audio_ms": {"median": _ms(statistics.median(firsts)), "max": _ms(max(firsts))},
        "goal_filler_ms": filler_ms + 50,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--llm-ms", type=int, default=200)
    parser.add_argument("--tool-ms", type=int, default=300)
    parser.add_argument("--filler-ms", type=int, default=700)
    args = parser.parse_args()
    if not TOKENIZER_JSON.is_file():
        sys.exit(f"needs the Llama-3 tokenizer at {TOKENIZER_JSON} (scripts/setup.sh --test fetches it)")
    result: dict[str, Any] = {"bench": "tools", "turns": args.turns, "llm_ms": args.llm_ms, "tool_ms": args.tool_ms}
    result.update(asyncio.run(measure(args.turns, args.llm_ms / 1000, args.tool_ms / 1000)))
    with tempfile.TemporaryDirectory() as tmp:
        result.update(asyncio.run(measure_filler(args.turns, args.llm_ms / 1000, args.filler_ms, Path(tmp))))
    result["goal_round_overhead_ms"] = 20
    result["goal_met"] = (
        result["round_overhead_ms"]["median"] <= 20
        and result["filler_first_audio_ms"]["max"] <= result["goal_filler_ms"]
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
