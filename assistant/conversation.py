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

FRAME_S = 0.08  # one Mimi frame


@dataclass
class Turn:
    role: Literal["user", "assistant"]
    text: str
    speaker: int
    audio: np.ndarray | None = None
    sample_rate: int = 24_000
    codes: torch.Tensor | None = None
    interrupted: bool = False

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
    ) -> Turn:
        return self._add(Turn("assistant", text, self.assistant_speaker, audio, sample_rate, codes, interrupted))

    def _add(self, turn: Turn) -> Turn:
        self.turns.append(turn)
        keep = max(self.config.max_turns, self.config.max_audio_turns)
        del self.turns[: max(len(self.turns) - keep, 0)]
        return turn

    def withdraw(self, turn: Turn) -> None:
        """Forget `turn` (a user turn taken back before its reply was heard); nothing if it is gone already."""
        self.turns = [t for t in self.turns if t is not turn]  # by identity: turns hold arrays

    def reset(self) -> None:
        self.turns.clear()

    def messages(self) -> list[Message]:
        """System prompt plus the last `max_turns` turns, for the LLM."""
        recent = self.turns[-self.config.max_turns :] if self.config.max_turns else []
        messages: list[Message] = [{"role": "system", "content": self.system_prompt}]
        for turn in recent:
            content = turn.text + (" [the user interrupted here]" if turn.interrupted else "")
            if turn.text or turn.interrupted:
                messages.append({"role": turn.role, "content": content})
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
