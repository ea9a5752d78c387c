import numpy as np
import torch

from assistant.config import ConversationConfig
from assistant.conversation import Conversation


def conversation(**limits) -> Conversation:
    return Conversation(ConversationConfig(**limits), "Be brief.", user_speaker=0, assistant_speaker=1)


def seconds(s: float, rate: int = 16000) -> np.ndarray:
    return np.zeros(int(s * rate), np.float32)


def test_messages_alternate_and_respect_max_turns() -> None:
    conv = conversation(max_turns=3)
    for i in range(3):
        conv.add_user(f"question {i}", seconds(1))
        conv.add_assistant(f"answer {i}", codes=torch.zeros(8, 10, dtype=torch.long))
    messages = conv.messages()
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert [m["content"] for m in messages[1:]] == ["answer 1", "question 2", "answer 2"]


def test_an_interrupted_reply_is_marked_for_the_llm() -> None:
    conv = conversation()
    conv.add_user("tell me a story")
    conv.add_assistant("Once upon a time,", interrupted=True)
    assert conv.messages()[-1] == {"role": "assistant", "content": "Once upon a time, [the user interrupted here]"}


def test_speech_context_keeps_newest_turns_within_the_limits() -> None:
    conv = conversation(max_audio_turns=3, max_audio_s=8)
    conv.add_user("first", seconds(4))
    conv.add_assistant("second", codes=torch.zeros(32, 50, dtype=torch.long))  # 4 s
    conv.add_user("third", seconds(3))
    conv.add_assistant("fourth", codes=torch.zeros(32, 25, dtype=torch.long))  # 2 s
    context = conv.speech_context()
    assert [(s.speaker, s.text) for s in context] == [(0, "third"), (1, "fourth")]  # 4 s more would exceed 8 s
    assert context[0].sample_rate == 16000 and context[0].audio is not None
    assert context[1].codes is not None and context[1].audio is None


def test_turns_without_audio_are_not_speech_context() -> None:
    conv = conversation()
    conv.add_user("typed question")
    conv.add_assistant("spoken answer", codes=torch.zeros(32, 5, dtype=torch.long))
    assert [s.text for s in conv.speech_context()] == ["spoken answer"]


def test_memory_is_bounded_and_reset_clears_it() -> None:
    conv = conversation(max_turns=4, max_audio_turns=2)
    for i in range(50):
        conv.add_user(str(i))
    assert len(conv.turns) == 4
    conv.reset()
    assert conv.messages() == [{"role": "system", "content": "Be brief."}]


def test_a_revised_transcript_replaces_the_turn_s_words_only_while_the_turn_is_kept() -> None:
    conversation = Conversation(ConversationConfig(), "Be brief.")
    kept, gone = conversation.add_user("What's the time."), conversation.add_user("And the date.")
    conversation.withdraw(gone)
    assert conversation.revise(kept, "What is the time?") and not conversation.revise(gone, "And the date?")
    assert [t.text for t in conversation.turns] == ["What is the time?"] and gone.text == "And the date."
