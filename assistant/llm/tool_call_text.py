"""Tool calls written into a model's text in the Hermes format (Qwen2.5's chat template asks for it):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

A sans-I/O parser: fed the reply's text as it streams, it hands back the text to say now (holding back only a tail
that may be the start of a `<tool_call>` tag) and each call once its closing tag arrives. A call it cannot read (bad
JSON, no name, no closing tag by the end) still comes out, with its raw text as `arguments`, so the model can be told
what went wrong and try again.
"""

from __future__ import annotations

import json
import re
import uuid

from assistant.llm.backend import ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


class ToolCallParser:
    def __init__(self) -> None:
        self._buffer = ""
        self._in_call = False
        self._after_call = False  # the whitespace the model writes between or after calls is not said

    def feed(self, piece: str) -> list[str | ToolCall]:
        """The text and calls that `piece` (with what was held back before it) completes, in order."""
        self._buffer += piece
        out: list[str | ToolCall] = []
        while True:
            if self._in_call:
                end = self._buffer.find(CLOSE)
                if end < 0:
                    return out
                out.append(_call(self._buffer[:end]))
                self._buffer, self._in_call, self._after_call = self._buffer[end + len(CLOSE) :], False, True
                continue
            if self._after_call:
                self._buffer = self._buffer.lstrip()
                if not self._buffer:
                    return out
                self._after_call = False
            start = self._buffer.find(OPEN)
            if start < 0:
                cut = len(self._buffer) - _open_tag_prefix(self._buffer)
                if cut:
                    out.append(self._buffer[:cut])
                self._buffer = self._buffer[cut:]
                return out
            if start:
                out.append(self._buffer[:start])
            self._buffer, self._in_call = self._buffer[start + len(OPEN) :], True

    def flush(self) -> list[str | ToolCall]:
        """At the end of the reply: what was held back, an unclosed call as a call."""
        rest, in_call = self._buffer, self._in_call
        self._buffer, self._in_call, self._after_call = "", False, False
        if in_call:
            return [_call(rest)]
        return [rest] if rest else []  # the start of a tag that never came


def _open_tag_prefix(text: str) -> int:
    """The length of the longest end of `text` that `<tool_call>` starts with (short of the whole tag)."""
    for size in range(min(len(text), len(OPEN) - 1), 0, -1):
        if OPEN.startswith(text[-size:]):
            return size
    return 0


def _call(body: str) -> ToolCall:
    raw = body.strip()
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(name := parsed.get("name"), str) and name:
        arguments = parsed.get("arguments", parsed.get("parameters", {}))
        text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return ToolCall(call_id, name, text)
    found = _NAME.search(raw)
    name = ""
    if found:
        try:
            name = json.loads(f'"{found.group(1)}"')
        except ValueError:
            name = found.group(1)
    return ToolCall(call_id, name, raw)
