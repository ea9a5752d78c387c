"""bench/turns.py takes a pause's end-of-turn decision as the floor and the VAD segmenter would."""

from __future__ import annotations

import math

import numpy as np
import pytest

from assistant.config import TurnConfig, VadConfig
from assistant.vad import Pause, VadSegmenter
from bench.turns import PauseFacts, both, both_at_pause, ended_at, floor_silence, model, words
from pipelines.floor import PauseWords, TurnScore

TURN = TurnConfig()


def pause(run_ms: float = math.inf, **facts: object) -> PauseFacts:
    return PauseFacts(at_ms=210, run_ms=run_ms, role="end", **facts)  # type: ignore[arg-type]


def test_the_floor_asks_what_the_words_or_the_score_say():
    assert floor_silence(TURN, PauseWords("Turn off the lights.")) == TURN.complete_ms
    assert floor_silence(TURN, PauseWords("I would like a coffee and")) == TURN.incomplete_ms
    assert floor_silence(TURN, PauseWords("")) == VadConfig().end_silence_ms
    assert floor_silence(TURN, TurnScore(0.9)) == TURN.complete_ms
    assert floor_silence(TURN, TurnScore(0.1)) == TURN.incomplete_ms


@pytest.mark.parametrize(
    ("decisions", "run_ms", "ended"),
    [
        ([], math.inf, 1200.0),  # nothing decided: the pause's own incomplete_ms
        ([(280.0, 250)], math.inf, 280.0),  # decided after 250 ms of silence (whole frames) had passed: ends at once
        ([(230.0, 250)], math.inf, 270.0),  # decided in time: the first 30 ms frame at or past 250 ms
        ([(700.0, 250)], 600.0, None),  # the speech came back before the decision
        ([(230.0, 250)], 240.0, None),  # ... or before the silence asked
        ([(230.0, 250), (400.0, 1200)], math.inf, 270.0),  # a later decision comes too late to hold it
        ([(230.0, 1200), (560.0, 500)], math.inf, 560.0),  # a second look ends it
        ([(230.0, 250), (230.0, 1200)], math.inf, 1200.0),  # known together: the policy's last word counts
    ],
)
def test_a_turn_ends_at_the_silence_asked_or_when_the_decision_comes(decisions, run_ms, ended):
    assert ended_at(pause(run_ms), decisions, TURN) == ended


def test_the_policies_decide_after_their_compute():
    facts = pause(words="Turn off the lights.", words_ms=500.0, score=0.9, score_ms=60.0)
    facts.fitted, facts.fitted_ms, facts.trimmed, facts.live = "Turn off the lights.", 80.0, {"0": 0.9}, 0.2
    assert words(facts, TURN) == [(710.0, TURN.complete_ms)]
    # begun at the lull (150 ms of silence), taken by the floor at the pause (210 ms)
    assert model(facts, TURN) == [(210.0, TURN.incomplete_ms)]  # the score of the audio cut where speech ends
    assert both(facts, TURN) == [(230.0, TURN.incomplete_ms)]  # known when the slower of the two is
    facts.live = 0.85
    assert both(facts, TURN) == [(230.0, TURN.complete_ms)]
    assert both_at_pause(facts, TURN) == [(290.0, TURN.complete_ms)]  # begun at the pause, on the audio only cut
    assert ended_at(facts, both(facts, TURN), TURN) == 270.0  # the first frame past complete_ms
    assert ended_at(facts, words(facts, TURN), TURN) == 710.0


def test_the_segmenter_announces_a_pause_after_whole_frames_of_silence():
    segmenter = VadSegmenter(VadConfig(), classifier=lambda frame: bool(np.any(frame)))
    segmenter.pause_ms = TURN.speculate_ms
    segmenter.feed(np.ones(16_000, np.float32))
    for _ in range(20):
        if any(isinstance(e, Pause) for e in segmenter.feed(np.zeros(segmenter.frame, np.float32))):
            break
    assert segmenter.silence_ms == pause().at_ms == 210  # what the bench's facts record as at_ms
