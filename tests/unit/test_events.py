import asyncio
import logging
import threading

import pytest

from assistant.events import (
    ErrorEvent,
    EventBus,
    ReplyText,
    StateChanged,
    TurnLatency,
    UserTranscript,
)
from assistant.logs import format_turn, log_turns


async def test_subscribers_get_only_the_types_they_asked_for() -> None:
    bus = EventBus()
    states = bus.subscribe(StateChanged)
    everything = bus.subscribe()
    bus.publish(StateChanged(state="thinking"))
    bus.publish(ErrorEvent(source="llm", message="boom"))
    received = await states.get()
    assert isinstance(received, StateChanged) and received.state == "thinking"
    assert states.queue.empty()
    kinds = [everything.queue.get_nowait().kind for _ in range(everything.queue.qsize())]
    assert kinds == ["StateChanged", "ErrorEvent"]


async def test_slow_subscriber_loses_oldest_events_not_the_publisher() -> None:
    bus = EventBus()
    slow = bus.subscribe(maxsize=3)
    for i in range(5):
        bus.publish(UserTranscript(text=str(i), turn=i))
    assert slow.dropped == 2
    assert [slow.queue.get_nowait().text for _ in range(3)] == ["2", "3", "4"]


async def test_unsubscribed_queue_receives_nothing() -> None:
    bus = EventBus()
    with bus.subscribe() as sub:
        bus.publish(StateChanged(state="idle"))
    bus.publish(StateChanged(state="listening"))
    assert sub.queue.qsize() == 1


async def test_worker_threads_publish_onto_the_loop() -> None:
    bus = EventBus()
    sub = bus.subscribe(ErrorEvent)
    thread = threading.Thread(target=bus.publish_threadsafe, args=(ErrorEvent(source="asr", message="x"),))
    thread.start()
    thread.join()
    event = await asyncio.wait_for(sub.get(), 1)
    assert isinstance(event, ErrorEvent) and event.source == "asr"


async def test_one_log_line_per_turn(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    caplog.set_level(logging.INFO, logger="assistant.turns")
    task = asyncio.create_task(log_turns(bus))
    await asyncio.sleep(0)
    bus.publish(UserTranscript(text="what time is it", turn=7))
    bus.publish(ReplyText(text="It is noon.", turn=7))  # a chunk, not the final text
    bus.publish(ReplyText(text="It is noon.", turn=7, final=True, interrupted=True))
    bus.publish(TurnLatency(turn=7, endpoint_s=0.25, transcript_s=0.21, first_token_s=0.4, first_audio_s=0.61))
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "assistant.turns"]
    assert lines == [
        "turn 7: heard 'what time is it' -> said 'It is noon.' [interrupted] | ms after end of speech: "
        "endpoint 250, asr 210, llm 400, csm-in -, audio 610, played -"
    ]


def test_a_turn_line_leaves_out_the_stages_its_turn_cannot_reach() -> None:
    typed_unspoken = TurnLatency(turn=2, first_token_s=0.3, first_chunk_s=0.001)  # --text --no-speech
    assert format_turn("hi", ReplyText(text="Hello.", turn=2, final=True), typed_unspoken) == (
        "turn 2: heard 'hi' -> said 'Hello.' | ms after end of speech: llm 300"
    )
    heard_unspoken = TurnLatency(turn=3, endpoint_s=0.25, transcript_s=0.2, first_token_s=0.3, first_chunk_s=0.31)
    assert format_turn("hi", None, heard_unspoken).endswith("endpoint 250, asr 200, llm 300")
    cut_off = ReplyText(text="", turn=4, final=True, interrupted=True)  # a spoken reply stopped before its sound
    assert format_turn("hi", cut_off, TurnLatency(turn=4, first_token_s=0.3, first_chunk_s=0.31, tool_s=1.5)).endswith(
        "[interrupted] | ms after end of speech: llm 300, csm-in 310, audio -, played -, tool 1500"
    )
