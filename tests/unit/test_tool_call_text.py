"""The Hermes/Qwen2.5 tool-call parser, fed real Qwen2.5 reply text split at every boundary it could stream at."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from assistant.llm.backend import ToolCall
from assistant.llm.tool_call_text import ToolCallParser

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
CALL_TOKENS = [  # as Qwen2.5's tokenizer cuts it: each tag is one token
    "<tool_call>", "\n", '{"', "name", '":', ' "', "get", "_weather", '",', ' "', "arguments", '":', ' {"', "city",
    '":', ' "', "Paris", '",', ' "', "unit", '":', ' "', "c", "elsius", '"}}\n', "</tool_call>",
]  # fmt: skip
WEATHER = ("get_weather", {"city": "Paris", "unit": "celsius"})


def by_character(text: str) -> list[str]:
    return list(text)


def by_word(text: str) -> list[str]:
    """As transformers' TextStreamer hands text on: up to the last space, or through a newline."""
    pieces, piece = [], ""
    for char in text:
        piece += char
        if char in " \n":
            pieces.append(piece)
            piece = ""
    return pieces + [piece] if piece else pieces


def in_two(text: str) -> Iterator[list[str]]:
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]


def parse(pieces: list[str]) -> list[str | ToolCall]:
    """What the parser yields for `pieces`, consecutive text merged (where it cuts text is its own business)."""
    parser = ToolCallParser()
    items = [item for piece in pieces for item in parser.feed(piece)] + parser.flush()
    merged: list[str | ToolCall] = []
    for item in items:
        assert not isinstance(item, str) or item, "no empty text"
        if isinstance(item, str) and merged and isinstance(merged[-1], str):
            merged[-1] += item
        else:
            merged.append(item)
    return merged


def splits(text: str) -> Iterator[list[str]]:
    yield [text]
    yield by_character(text)
    yield by_word(text)
    yield from in_two(text)


def readable(items: list[str | ToolCall]) -> list[str | tuple[str, object]]:
    """Calls as (name, parsed arguments) where they parse, else (name, raw text); ids checked unique."""
    calls = [item for item in items if isinstance(item, ToolCall)]
    assert len({call.id for call in calls}) == len(calls) and all(call.id for call in calls)
    out: list[str | tuple[str, object]] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
            continue
        try:
            out.append((item.name, json.loads(item.arguments)))
        except ValueError:
            out.append((item.name, item.arguments))
    return out


def test_a_call_cut_like_qwen_tokens_is_one_call() -> None:
    assert "".join(CALL_TOKENS) == CALL
    items = parse(CALL_TOKENS)
    assert readable(items) == [WEATHER]
    (call,) = items
    assert isinstance(call, ToolCall) and call.arguments == '{"city": "Paris", "unit": "celsius"}'


UNCLOSED = '<tool_call>\n{"name": "set_timer", "arguments": {"minutes": 5}'
MALFORMED = '{"name": "get_weather", "arguments": {"city": "Paris"}'
CASES = {
    "one call": (CALL, [WEATHER]),
    "text then a call": ("Let me check the weather.\n" + CALL, ["Let me check the weather.\n", WEATHER]),
    "two calls in a row": (
        CALL + "\n" + CALL.replace("Paris", "Lyon"),
        [WEATHER, ("get_weather", {"city": "Lyon", "unit": "celsius"})],
    ),
    "text after a call": (CALL + "\nIt is sunny in Paris.", [WEATHER, "It is sunny in Paris."]),
    "angle brackets in text": (
        "So 5 < 7 and <b>bold</b>, <tool_ no tag.",
        ["So 5 < 7 and <b>bold</b>, <tool_ no tag."],
    ),
    "a tag start at the end is text": ("A stray tag at the end <tool_call", ["A stray tag at the end <tool_call"]),
    "an empty call": ("<tool_call>\n</tool_call>", [("", "")]),
    "malformed json": (f"<tool_call>\n{MALFORMED}\n</tool_call>Sorry.", [("get_weather", MALFORMED), "Sorry."]),
    "no name": (
        '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',
        [("", {"arguments": {"city": "Paris"}})],
    ),
    "unclosed at the end": (UNCLOSED, [("set_timer", UNCLOSED.removeprefix("<tool_call>\n"))]),
    "no arguments": ('<tool_call>\n{"name": "stop"}\n</tool_call>', [("stop", {})]),
    "non-ascii arguments": (
        '<tool_call>\n{"name": "say", "arguments": {"text": "Grüß dich"}}\n</tool_call>',
        [("say", {"text": "Grüß dich"})],
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(CASES.values()), ids=list(CASES))
def test_text_and_calls_come_out_in_order_however_the_text_is_cut(text: str, expected: list) -> None:
    for pieces in splits(text):
        assert readable(parse(pieces)) == expected, pieces


def test_text_is_said_as_it_comes_holding_back_only_a_possible_tag() -> None:
    parser = ToolCallParser()
    assert parser.feed("Let me check. <") == ["Let me check. "]
    assert parser.feed("tool") == []
    assert parser.feed("box> ok <t") == ["<toolbox> ok "]
    assert parser.feed('ool_call>\n{"name": "x"}\n</tool_call') == []
    (call,) = parser.feed(">\n")
    assert isinstance(call, ToolCall) and (call.name, call.arguments) == ("x", "{}")
    assert parser.feed("Done") == ["Done"]
    assert parser.flush() == []


def test_a_malformed_call_keeps_its_raw_text_for_the_model_to_see() -> None:
    parser = ToolCallParser()
    (call,) = parser.feed('<tool_call>\n{"name": "get_weather", "arguments": {city: Paris}}\n</tool_call>')
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("get_weather", '{"name": "get_weather", "arguments": {city: Paris}}')


def test_calls_get_unique_ids_across_replies() -> None:
    ids = set()
    for _ in range(50):
        parser = ToolCallParser()
        for item in parser.feed(CALL + CALL):
            assert isinstance(item, ToolCall) and item.id.startswith("call_")
            ids.add(item.id)
    assert len(ids) == 100
