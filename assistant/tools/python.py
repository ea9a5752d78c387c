"""Python functions as tools: the schema comes from the type hints, the description from the docstring.

```python
@tool
async def move(room: Literal["kitchen", "hall"], speed: float = 0.5) -> str:
    \"\"\"Drive the robot to a room.

    Args:
        room: where to go.
        speed: metres per second.
    \"\"\"
```

The docstring's first paragraph describes the tool; an `Args:` section (Google style) describes each parameter.
Arguments are validated and converted by pydantic before the function runs; a sync function runs in a worker
thread so that it cannot stall the voice loop. The result is sent to the model as text: a string as it is,
anything else as JSON.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from assistant.llm.backend import ToolSpec
from assistant.tools.registry import ToolError

_ARG_LINE = re.compile(r"^\s{2,}(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


class PythonTool:
    """A function the model may call."""

    source = "python"

    def __init__(self, function: Callable[..., Any], *, name: str | None = None, description: str | None = None):
        self.function = function
        summary, arguments = _docstring(inspect.getdoc(function) or "")
        self._model = _arguments_model(function, arguments)
        schema = self._model.model_json_schema()
        schema.pop("title", None)
        self.spec = ToolSpec(name or function.__name__, description or summary, schema)

    async def call(self, arguments: dict[str, Any]) -> str:
        try:
            parsed = self._model.model_validate(arguments)
        except ValidationError as error:
            raise ToolError(f"invalid arguments: {_first_problem(error)}") from None
        values = {name: getattr(parsed, name) for name in type(parsed).model_fields}
        if inspect.iscoroutinefunction(self.function):
            result = await self.function(**values)
        else:
            result = await asyncio.to_thread(self.function, **values)
        return result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # decorated, it stays callable as before
        return self.function(*args, **kwargs)


def tool(function: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None) -> Any:
    """`@tool` or `@tool(name=..., description=...)`: the function as a PythonTool, still callable as before."""
    if function is None:
        return lambda f: PythonTool(f, name=name, description=description)
    return PythonTool(function, name=name, description=description)


def _arguments_model(function: Callable[..., Any], described: dict[str, str]) -> type[BaseModel]:
    hints = get_type_hints(function)
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise TypeError(f"tool {function.__name__}: *args and **kwargs cannot be described to a model")
        annotation = hints.get(parameter.name, Any)
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, Field(default, description=described.get(parameter.name)))
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{function.__name__}_arguments", __config__=ConfigDict(extra="forbid"), **fields
    )


def _docstring(text: str) -> tuple[str, dict[str, str]]:
    """The first paragraph, and each parameter's description from an `Args:` section."""
    summary = " ".join(text.split("\n\n", 1)[0].split())
    arguments: dict[str, str] = {}
    section, current = False, None
    for line in text.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            section = True
            continue
        if not section:
            continue
        if line and not line.startswith(" "):
            break  # the next section
        if (match := _ARG_LINE.match(line)) is not None:
            current = match.group(1).lstrip("*")
            arguments[current] = match.group(2).strip()
        elif current is not None and line.strip():
            arguments[current] += " " + line.strip()
    return summary, arguments


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "arguments"
    return f"{where}: {first['msg']}"
