"""The conversation so far: every turn of both speakers with its text and audio.

It feeds two consumers within their own limits: the LLM gets chat messages (text of the last
`max_turns` turns), CSM gets segments (text plus audio or codes of the last `max_audio_turns`
turns, at most `max_audio_s` seconds of audio, newest first kept).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from assistant.config import ConversationConfig
from assistant.llm.backend import Message
from assistant.segment import Segment
from assistant.tools.calls import ToolOutcome

FRAME_S = 0.08  # one Mimi frame


@dataclass(frozen=True)
class ToolRound:
    """Tool calls the assistant made together, with what it said just before them (heard by the user)."""

    said: str
    outcomes: tuple[ToolOutcome, ...]

    def messages(self) -> list[Message]:
        """The round as chat messages: the call, then each result (never a call without its result)."""
        messages: list[Message] = [
            {"role": "assistant", "content": self.said or None, "tool_calls": [o.call.message() for o in self.outcomes]}
        ]
        messages += [{"role": "tool", "tool_call_id": o.call.id, "content": o.content} for o in self.outcomes]
        return messages


@dataclass
class Turn:
    """One turn of either speaker. `text` is all of it that was heard; an assistant turn that called tools has
    `rounds`, and `closing` is what it said after the last of them."""

    role: Literal["user", "assistant"]
    text: str
    speaker: int
    audio: np.ndarray | None = None
    sample_rate: int = 24_000
    codes: torch.Tensor | None = None
    interrupted: bool = False
    rounds: tuple[ToolRound, ...] = ()
    closing: str = ""

    @property
    def audio_s(self) -> float:
        if self.codes is not None:
            return self.codes.shape[-1] * FRAME_S
        return 0.0 if self.audio is None else len(self.audio) / self.sample_rate

    def segment(self) -> Segment:
        return Segment(self.speaker, self.text, self.audio, self.codes, self.sample_rate)


class Conversation:
    def __init__(
        self, config: ConversationConfig, system_prompt: str, user_speaker: int = 0, assistant_speaker: int = 1
    ) -> None:
        self.config = config
        self.system_prompt = system_prompt
        self.user_speaker = user_speaker
        self.assistant_speaker = assistant_speaker
        self.turns: list[Turn] = []

    def add_user(self, text: str, audio: np.ndarray | None = None, sample_rate: int = 16_000) -> Turn:
        return self._add(Turn("user", text, self.user_speaker, audio, sample_rate))

    def add_assistant(
        self,
        text: str,
        codes: torch.Tensor | None = None,
        audio: np.ndarray | None = None,
        sample_rate: int = 24_000,
        interrupted: bool = False,
        rounds: tuple[ToolRound, ...] = (),
    ) -> Turn:
        """`text` is what was heard; with tool `rounds`, what was heard after them (the rounds say the rest)."""
        whole = " ".join([*(r.said for r in rounds if r.said), *([text] if text else [])])
        turn = Turn("assistant", whole, self.assistant_speaker, audio, sample_rate, codes, interrupted, rounds, text)
        return self._add(turn)

    def _add(self, turn: Turn) -> Turn:
        self.turns.append(turn)
        keep = max(self.config.max_turns, self.config.max_audio_turns)
        del self.turns[: max(len(self.turns) - keep, 0)]
        return turn

    def withdraw(self, turn: Turn) -> None:
        """Forget `turn` (a user turn taken back before its reply was heard); nothing if it is gone already."""
        self.turns = [t for t in self.turns if t is not turn]  # by identity: turns hold arrays

    def revise(self, turn: Turn, text: str) -> bool:
        """Replace what `turn` says (a better transcript of it); False if it is gone."""
        if not any(t is turn for t in self.turns):
            return False
        turn.text = text
        return True

    def reset(self) -> None:
        self.turns.clear()

    def messages(self) -> list[Message]:
        """System prompt plus the last `max_turns` turns, for the LLM."""
        recent = self.turns[-self.config.max_turns :] if self.config.max_turns else []
        messages: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for turn in recent:
            for round_ in turn.rounds:
                messages += round_.messages()
            said = turn.closing if turn.rounds else turn.text
            content = (said + (" [the user interrupted here]" if turn.interrupted else "")).strip()
            if not content:
                continue
            if turn.role == "user":
                messages.append({"role": "user", "content": content})
            else:
                messages.append({"role": "assistant", "content": content})
        return messages

    def speech_context(self) -> list[Segment]:
        """Segments with audio for CSM: newest turns first, within the audio-turn and seconds limits."""
        chosen: list[Segment] = []
        seconds = 0.0
        for turn in reversed(self.turns):
            if len(chosen) >= self.config.max_audio_turns:
                break
            if turn.audio_s == 0 or not turn.text:
                continue
            if seconds + turn.audio_s > self.config.max_audio_s:
                break
            seconds += turn.audio_s
            chosen.append(turn.segment())
        return chosen[::-1]
