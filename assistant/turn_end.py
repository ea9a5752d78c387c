"""How much silence ends the user's turn, judged from the words said so far.

A fixed silence either cuts people off in their pauses or makes every answer wait. The words tell the two apart
well enough: a finished sentence or question may end the turn after a short silence, a trailing "and", "so",
"um", "because" or a dangling comma asks for a longer one. These are rules, not a model: no end-of-turn model
can be installed here without a hub, and rules are predictable and cheap enough to run on every pause.
"""

from __future__ import annotations

import re

from assistant.config import TurnConfig

_LAST_WORD = re.compile(r"([\w']+)\W*$")
_FINISHED = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"')\]]*$")


def silence_to_end(transcript: str, config: TurnConfig, undecided_ms: int) -> int:
    """Milliseconds of silence after which a turn whose words so far are `transcript` is over.

    A trailing continuation word or comma, or an ellipsis: `config.incomplete_ms`. A finished sentence (closing
    punctuation, which Whisper writes): `config.complete_ms`. Anything else, no words included: `undecided_ms`.
    """
    text = transcript.strip()
    if not text:
        return undecided_ms
    last = _LAST_WORD.search(text)
    if (last and last.group(1).lower() in config.hold_words) or text.endswith((",", "...", "\u2026", "-", ":")):
        return config.incomplete_ms
    if _FINISHED.search(text):
        return config.complete_ms
    return undecided_ms


BACKCHANNELS = frozenset(
    "mm mmm hmm hm mhm mm-hmm mm-hm uh-huh uh huh um umm er erm ah oh ooh aha yeah yep yes okay ok right sure".split()
)
"""What a listener says to show they follow, not to take the turn: speech over a reply with only these goes on."""


def takes_the_turn(transcript: str) -> bool:
    """Whether speech over a reply says something: a word that is not a filler or a backchannel."""
    words = re.findall(r"[\w'-]+", transcript.lower())
    return any(word.strip("-'") not in BACKCHANNELS for word in words)
