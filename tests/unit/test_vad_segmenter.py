"""The VAD state machine on synthetic audio, with a fake energy classifier standing in for webrtcvad."""

from __future__ import annotations

import numpy as np
import pytest

from assistant.config import VadConfig
from assistant.vad import Lull, Pause, SpeechOnset, SpeechResumed, Utterance, VadSegmenter

RATE = 16000


def fake_energy_classifier(frame: np.ndarray) -> bool:
    return float(np.abs(frame).max()) > 0.25


def signal(*parts: tuple[str, int]) -> np.ndarray:
    """('speech'|'silence', milliseconds) pieces; speech is a 0.5-amplitude tone."""
    pieces = []
    for kind, ms in parts:
        n = RATE * ms // 1000
        pieces.append(0.5 * np.sin(np.arange(n) * 0.3) if kind == "speech" else np.zeros(n))
    return np.concatenate(pieces).astype(np.float32)


def segmenter(**overrides) -> VadSegmenter:
    config = VadConfig(**{"frame_ms": 30, "preroll_ms": 300, "end_silence_ms": 600, "min_speech_ms": 240, **overrides})
    return VadSegmenter(config, RATE, classifier=fake_energy_classifier)


def run(seg: VadSegmenter, audio: np.ndarray, chunk: int = 480) -> list[SpeechOnset | Utterance]:
    return [e for i in range(0, len(audio), chunk) for e in seg.feed(audio[i : i + chunk])]


def test_one_turn_with_preroll_and_a_short_trailing_silence() -> None:
    events = run(segmenter(), signal(("silence", 900), ("speech", 1200), ("silence", 900)))
    assert [type(e) for e in events] == [SpeechOnset, Utterance]
    onset, turn = events
    assert onset.at_sample == RATE * (900 + 240) // 1000
    assert turn.voiced_ms == 1200
    # 300 ms pre-roll + 1200 ms speech + 3 frames of trailing silence
    assert turn.duration_s == pytest.approx(0.3 + 1.2 + 0.09)
    assert np.abs(turn.audio[: RATE * 300 // 1000]).max() == 0  # the pre-roll is the silence before
    assert np.abs(turn.audio[RATE * 300 // 1000 :][:480]).max() > 0.25  # then speech at once


def test_a_click_or_cough_is_not_a_turn() -> None:
    assert run(segmenter(), signal(("silence", 300), ("speech", 120), ("silence", 1200))) == []


def test_pauses_shorter_than_the_end_silence_keep_the_turn_open() -> None:
    audio = signal(("speech", 600), ("silence", 450), ("speech", 600), ("silence", 700))
    events = run(segmenter(), audio)
    assert [type(e) for e in events] == [SpeechOnset, Utterance]
    assert events[1].voiced_ms == 1200


def test_the_turn_ends_exactly_after_end_silence() -> None:
    seg = segmenter(end_silence_ms=600)
    assert [type(e) for e in run(seg, signal(("speech", 600), ("silence", 570)))] == [SpeechOnset]
    assert seg.in_speech
    assert [type(e) for e in run(seg, signal(("silence", 30)))] == [Utterance]
    assert not seg.in_speech


def test_very_long_speech_is_cut_at_the_maximum() -> None:
    events = run(segmenter(max_utterance_s=2.0), signal(("speech", 3000)))
    turns = [e for e in events if isinstance(e, Utterance)]
    assert len(turns) == 1 and turns[0].truncated and turns[0].duration_s == pytest.approx(2.0, abs=0.03)


@pytest.mark.parametrize("chunk", [1, 160, 333, 16000])
def test_results_do_not_depend_on_how_audio_arrives(chunk: int) -> None:
    audio = signal(("silence", 500), ("speech", 900), ("silence", 700), ("speech", 600), ("silence", 700))
    events = run(segmenter(), audio, chunk)
    reference = run(segmenter(), audio)
    assert [type(e) for e in events] == [SpeechOnset, Utterance, SpeechOnset, Utterance]
    for a, b in zip(events, reference):
        if isinstance(a, Utterance):
            np.testing.assert_array_equal(a.audio, b.audio)


def test_reset_drops_a_turn_in_progress() -> None:
    seg = segmenter()
    run(seg, signal(("speech", 600)))
    seg.reset()
    assert run(seg, signal(("silence", 900))) == []


def test_zero_preroll_starts_at_the_first_speech_frame() -> None:
    (_, turn) = run(segmenter(preroll_ms=0), signal(("silence", 600), ("speech", 600), ("silence", 700)))
    assert np.abs(turn.audio[:480]).max() > 0.25


def test_unsupported_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="webrtcvad needs"):
        VadSegmenter(VadConfig(), 22050, classifier=fake_energy_classifier)


def test_a_pause_announces_the_turn_as_it_would_end_and_speech_resumes_it() -> None:
    seg = segmenter()
    seg.pause_ms = 210
    events = run(seg, signal(("silence", 300), ("speech", 600), ("silence", 240), ("speech", 600), ("silence", 900)))
    assert [type(e) for e in events] == [SpeechOnset, Pause, SpeechResumed, Pause, Utterance]
    first_pause, last_pause, turn = events[1], events[3], events[4]
    assert first_pause.utterance.end_sample == RATE * 900 // 1000  # the end of the first burst of speech
    assert turn.end_sample == last_pause.utterance.end_sample == RATE * (900 + 240 + 600) // 1000
    assert np.array_equal(last_pause.utterance.audio, turn.audio)  # what a pause transcribes is what the turn keeps
    assert len(first_pause.utterance.audio) < len(turn.audio)


def test_a_lull_comes_before_each_pause_and_gap_with_the_audio_the_pause_would_have() -> None:
    seg = segmenter()
    seg.pause_ms, seg.lull_ms = 210, 150
    events = run(
        seg,
        signal(
            ("silence", 300),
            ("speech", 600),
            ("silence", 180),
            ("speech", 300),
            ("silence", 240),
            ("speech", 600),
            ("silence", 900),
        ),
    )
    kinds = [type(e) for e in events]
    assert kinds == [SpeechOnset, Lull, Lull, Pause, SpeechResumed, Lull, Pause, Utterance]
    gap, lull, pause, last_lull, last_pause = events[1], events[2], events[3], events[5], events[6]
    assert gap.utterance.end_sample == RATE * 900 // 1000  # a gap of 180 ms: a lull, no pause
    assert lull.utterance.end_sample == pause.utterance.end_sample == RATE * (900 + 180 + 300) // 1000
    assert np.array_equal(lull.utterance.audio, pause.utterance.audio)  # three trailing frames kept at both
    assert np.array_equal(last_lull.utterance.audio, last_pause.utterance.audio)
    assert np.array_equal(last_pause.utterance.audio, events[-1].audio)


def test_no_lull_before_the_turn_is_confirmed_or_without_lull_ms() -> None:
    seg = segmenter()
    seg.pause_ms, seg.lull_ms = 210, 150
    assert [type(e) for e in run(seg, signal(("speech", 120), ("silence", 200)))] == []  # not yet min_speech_ms
    seg = segmenter()
    seg.pause_ms = 210
    events = run(seg, signal(("speech", 600), ("silence", 240)))
    assert [type(e) for e in events] == [SpeechOnset, Pause]


def test_wait_changes_the_silence_that_ends_this_turn_and_ends_it_if_already_past() -> None:
    seg = segmenter()
    seg.pause_ms = 210
    events = run(seg, signal(("silence", 300), ("speech", 600), ("silence", 270)))
    assert isinstance(events[-1], Pause)
    assert seg.wait(1200) is None  # a longer wait: the turn goes on
    assert run(seg, signal(("silence", 600))) == []
    ended = seg.wait(300)  # 870 ms of silence have passed
    assert isinstance(ended, Utterance) and not seg.in_speech
    seg.pause_ms = 210
    run(seg, signal(("speech", 600), ("silence", 240)))
    assert seg.wait(250) is None and seg.silence_ms == 240
    assert [type(e) for e in run(seg, signal(("silence", 30)))] == [Utterance]


def test_speech_after_a_pause_restores_the_configured_end_silence() -> None:
    seg = segmenter()
    seg.pause_ms = 210
    run(seg, signal(("speech", 600), ("silence", 240)))
    seg.wait(3000)
    events = run(seg, signal(("speech", 300), ("silence", 640)))
    assert [type(e) for e in events] == [SpeechResumed, Pause, Utterance]  # ended at end_silence_ms (600) again


def test_a_turn_taken_back_goes_on_with_everything_heard_since_it_ended() -> None:
    audio = signal(("silence", 300), ("speech", 600), ("silence", 900), ("speech", 600), ("silence", 900))
    seg = segmenter()
    ended = run(seg, audio[: RATE * 1800 // 1000])  # the turn ends after 600 ms of silence
    assert [type(e) for e in ended] == [SpeechOnset, Utterance]
    events = run(seg, audio[RATE * 1800 // 1000 : RATE * 2700 // 1000])
    assert [type(e) for e in events] == [SpeechOnset]  # the user goes on
    assert seg.reopen()
    assert not seg.reopen()  # once
    (turn,) = run(seg, audio[RATE * 2700 // 1000 :])
    assert isinstance(turn, Utterance) and turn.voiced_ms == 1200
    whole = run(segmenter(end_silence_ms=1000), np.concatenate([audio, signal(("silence", 200))]))[-1]  # one turn
    assert np.array_equal(turn.audio, whole.audio) and turn.end_sample == whole.end_sample


def test_nothing_to_take_back_after_a_reset_without_speech_or_past_the_longest_turn() -> None:
    seg = segmenter(max_utterance_s=3.0)
    run(seg, signal(("speech", 600), ("silence", 900)))
    assert not seg.reopen()  # no speech in progress
    run(seg, signal(("speech", 300)))
    seg.reset()
    run(seg, signal(("speech", 300)))
    assert not seg.reopen()  # the reset forgot the turn
    run(seg, signal(("silence", 900), ("speech", 600), ("silence", 900)))
    run(seg, signal(("silence", 1500), ("speech", 300)))
    assert not seg.reopen()  # it would be longer than max_utterance_s
