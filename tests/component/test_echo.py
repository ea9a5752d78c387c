"""WebRTC's echo canceller (livekit) on real speech: the speaker's audio, heard back by the microphone late, quieter
and with reverberation, is taken out; a person's speech over it is kept. Time is simulated: 20 ms blocks, one
after another, with the speaker's blocks reported before they are heard, as its audio thread does."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import soxr

from assistant.audio.echo import EchoCanceller
from assistant.audio.echo_leak import EchoLeakDetector
from assistant.audio.wavfile import read_wav
from tests.support.room import db, room
from tests.support.speech import Clip

RATE, SPEAKER_RATE, BLOCK = 16_000, 48_000, 320


@pytest.mark.parametrize(("delay_s", "gain_db"), [(0.03, -6), (0.12, -20)])
def test_the_speakers_echo_is_taken_out_and_a_voice_over_it_is_kept(
    delay_s: float, gain_db: float, speech_clips: list[Clip]
) -> None:
    far = np.concatenate([read_wav(clip.path, RATE)[0] for clip in speech_clips[:2]])
    person = np.zeros_like(far)
    voice = read_wav(speech_clips[2].path, RATE)[0][: 2 * RATE]
    person[-len(voice) - RATE // 2 : -RATE // 2] = voice
    heard = room(far, delay_s, gain_db)
    device = soxr.resample(far, RATE, SPEAKER_RATE).astype(np.float32)  # the speaker runs at its own rate
    step, ahead = SPEAKER_RATE * BLOCK // RATE, 5  # it hands out each block 5 blocks (100 ms) before it is heard
    canceller = EchoCanceller()
    out = []
    for k in range(len(far) // BLOCK):
        if (k + ahead) * step < len(device):
            canceller.rendered(device[(k + ahead) * step : (k + ahead + 1) * step], SPEAKER_RATE)
        out.append(canceller.clean(heard[k * BLOCK : (k + 1) * BLOCK] + person[k * BLOCK : (k + 1) * BLOCK]))
    cleaned = np.concatenate(out)
    echo_only = slice(3 * RATE, len(far) - len(voice) - RATE)  # after 3 s to converge, before the person speaks
    assert db(heard[echo_only]) - db(cleaned[echo_only]) > 20  # echo return loss enhancement
    spoken = slice(len(far) - len(voice) - RATE // 2, len(far) - RATE // 2)
    assert abs(db(cleaned[spoken]) - db(person[spoken])) < 6  # the person's voice is still there


class SimulatedSpeaker:
    """A device that holds `ahead` blocks: a stream that starts hands out that many at once (the first is heard at
    once), then one a block, each heard `ahead` blocks later. `restart(gap)` drops what the device holds (never
    heard; the content goes back to be played again, as a pause does) and starts again after `gap` blocks."""

    def __init__(self, far: np.ndarray, canceller: EchoCanceller | None, ahead: int = 5) -> None:
        self.far, self.canceller, self.ahead = far, canceller, ahead
        self.queue: deque[np.ndarray] = deque()
        self.next = 0  # far position handed out next
        self.stopped_for = 0

    def tick(self) -> np.ndarray:
        """One block of time: the speaker hands out what its device has room for; returns what is heard."""
        if self.stopped_for:
            self.stopped_for -= 1
            return np.zeros(BLOCK)
        while len(self.queue) < self.ahead:
            block = self.far[self.next : self.next + BLOCK]
            block = np.pad(block, (0, BLOCK - len(block)))
            self.next += BLOCK
            self.queue.append(block)
            if self.canceller is not None:
                self.canceller.rendered(soxr.resample(block, RATE, SPEAKER_RATE).astype(np.float32), SPEAKER_RATE)
        return self.queue.popleft()

    def restart(self, gap: int) -> None:
        self.next -= BLOCK * len(self.queue)
        self.queue.clear()
        if self.canceller is not None:
            self.canceller.dropped()
        self.stopped_for = gap


def run_room(far: np.ndarray, restart_at: int = -1, moved_at: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """The canceller over `far` played into a room 60 ms away, with the speaker's stream restarted at block
    `restart_at`, or the echo 240 ms further away from block `moved_at` on: (heard, cleaned)."""
    blocks = len(far) // BLOCK
    speaker = SimulatedSpeaker(far, None)  # what the room hears first; then the same again, with the canceller
    played = []
    for k in range(blocks):
        if k == restart_at:
            speaker.restart(gap=3)
        played.append(speaker.tick())
    played_all = np.concatenate(played)
    heard = room(played_all, 0.06, -6)
    if moved_at >= 0:
        heard[moved_at * BLOCK :] = room(played_all, 0.3, -6)[moved_at * BLOCK :]
    out, now = [], [0.0]
    canceller = EchoCanceller(clock=lambda: now[0])
    speaker = SimulatedSpeaker(far, canceller)
    for k in range(blocks):
        now[0] = (k + 1) * BLOCK / RATE  # a microphone block comes once its last sample is in
        if k == restart_at:
            speaker.restart(gap=3)
        speaker.tick()
        out.append(canceller.clean(heard[k * BLOCK : (k + 1) * BLOCK]))
    return heard, np.concatenate(out)


def test_a_restarted_speaker_keeps_the_echo_where_it_was(speech_clips: list[Clip]) -> None:
    """A pause or an interrupt restarts the speaker's stream; its next block is placed where the microphone is when
    it is handed out, so the echo keeps its distance and AEC3 goes on cancelling without learning it anew."""
    restart = int(10 * RATE / BLOCK)
    far = np.concatenate([read_wav(clip.path, RATE)[0] for clip in speech_clips[:4]])
    heard, cleaned = run_room(far, restart_at=restart)
    for second in (0.0, 0.5, 1.0):  # a canceller that lost the distance leaks ~10-20 dB here for a second or so
        resumed = slice((restart + 3) * BLOCK + int(second * RATE), (restart + 3) * BLOCK + int((second + 0.5) * RATE))
        assert db(heard[resumed]) - db(cleaned[resumed]) > 30


def test_the_microphone_is_placed_by_its_clock_not_by_how_late_its_blocks_came() -> None:
    """Its blocks reach the audio thread 0-40 ms late, varying; a reference block placed by the count of samples
    taken in would move its echo by that much at each new start of the speaker."""
    now = [0.0]
    canceller = EchoCanceller(clock=lambda: now[0])
    lateness = np.random.default_rng(0).uniform(0, 0.04, 200)
    lateness[::7] = 0  # now and then one comes on time
    for k, late in enumerate(lateness):
        now[0] = (k + 1) * BLOCK / RATE + late  # the block's last sample was captured at (k + 1) * BLOCK
        canceller.clean(np.zeros(BLOCK, np.float32))
        at = now[0] + 0.005
        assert abs(canceller.microphone_at(at) - at * RATE) <= 1


def test_an_echo_that_moved_is_silenced_until_the_canceller_finds_it_again(speech_clips: list[Clip]) -> None:
    """When the echo's distance moves (a changed room or device), AEC3 lets it through for seconds, loud enough to
    sound like a person talking over the assistant; the microphone is silent while it does, but for the start of
    each burst (until two checks, 50 ms apart, agree)."""
    moved = int(10 * RATE / BLOCK)
    far = np.concatenate([read_wav(clip.path, RATE)[0] for clip in speech_clips[:4]])
    _, cleaned = run_room(far, moved_at=moved)
    after = cleaned[moved * BLOCK : moved * BLOCK + 3 * RATE]
    loud = [i for i in range(0, len(after), 480) if db(after[i : i + 480]) > -60]  # a VAD's floor: could be speech
    assert len(loud) <= 20  # of 100 frames; without the check, 39


def test_the_leak_check_tells_the_echo_from_a_person(speech_clips: list[Clip]) -> None:
    """The echo's leak is the reference, late and filtered, at one distance: found within a few checks. A person's
    voice over the same reference, or the faint residue of a canceller that works, is never taken for it."""
    far = read_wav(speech_clips[0].path, RATE)[0][: 4 * RATE]
    person = read_wav(speech_clips[1].path, RATE)[0][: 4 * RATE]
    residue = np.random.default_rng(0).normal(0, 10 ** (-70 / 20), len(far)).astype(np.float32)
    for out, leaks in ((room(far, 0.08, -10), True), (person * 0.5, False), (residue, False)):
        detector = EchoLeakDetector()
        found = [detector.feed(far[i : i + 160], out[i : i + 160]) for i in range(0, len(far), 160)]
        assert any(found[:50]) == leaks  # within half a second
        assert np.mean(found) > 0.8 if leaks else not any(found)
