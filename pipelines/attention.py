"""What `listen.mode` needs, loaded before anything else so that a bad setting stops the start at once: the wake-word
detector, and the earcon played when it hears the wake word."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from assistant.audio.streams import PLAYBACK_RATE
from assistant.audio.wavfile import WavError, read_wav
from assistant.config import ListenConfig
from assistant.wake_word import WakeWordDetector, WakeWordError

EARCON_MAX_S = 3.0


class AttentionError(ValueError):
    """A `listen` setting that cannot be used; the message names it and says why."""


@dataclass(frozen=True)
class Attention:
    wake_word: WakeWordDetector | None = None
    earcon: np.ndarray | None = None  # at the speaker's PLAYBACK_RATE


def load_attention(config: ListenConfig) -> Attention:
    """Raises AttentionError naming the setting when the model or the earcon cannot be used."""
    if config.mode != "wake_word":
        return Attention()
    try:
        detector = WakeWordDetector(config.wake_word, config.threshold)
    except WakeWordError as error:
        raise AttentionError(str(error)) from None
    earcon = None
    if config.earcon is not None:
        try:
            earcon, _ = read_wav(config.earcon, PLAYBACK_RATE)
        except WavError as error:
            raise AttentionError(f"listen.earcon: {error}") from None
        if len(earcon) > EARCON_MAX_S * PLAYBACK_RATE:
            raise AttentionError(
                f"listen.earcon: {config.earcon} is {len(earcon) / PLAYBACK_RATE:.1f} s long; an earcon "
                f"should be a short sound (at most {EARCON_MAX_S:g} s)"
            )
    return Attention(detector, earcon)
