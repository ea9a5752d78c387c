"""The in-process transformers backend on a tiny random chat model saved to disk, loaded by the real code path."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch

from assistant.config import LocalBackendConfig
from assistant.llm.backend import LlmError, Message, ToolCall, ToolSpec
from assistant.llm.local_transformers import LocalBackend, template_messages
from tests.support.random_chat_model import QWEN_TOOLS_TEMPLATE, save_random_chat_model

MESSAGES: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello there!"},
]


def local(model: str | Path, **settings) -> LocalBackend:
    defaults = {"device": "cpu", "temperature": 0.0, "max_new_tokens": 12}
    return LocalBackend(LocalBackendConfig(model=str(model), **{**defaults, **settings}))


def count_forwards(llm: LocalBackend, prompts: list[torch.Tensor] | None = None) -> list[int]:
    """Count the model's forward passes (and keep the input ids of the first) from now on."""
    calls = [0]

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls[0] += 1
        if prompts is not None and calls[0] == 1:
            prompts.append(kwargs["input_ids"].clone())

    llm.model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


async def test_a_reply_streams_what_the_model_generates_from_the_chat_template(tiny_chat_model_dir: Path) -> None:
    llm = local(tiny_chat_model_dir)
    await llm.start()
    prompts: list[torch.Tensor] = []
    count_forwards(llm, prompts)
    deltas = [delta async for delta in llm.stream(MESSAGES)]

    assert len(deltas) > 1 and all(deltas)
    tokenizer = llm.tokenizer
    (prompt,) = prompts
    assert tokenizer.decode(prompt[0]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n"
    )
    with torch.no_grad():  # the same greedy reply, generated directly from the templated prompt
        ids = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt")
        direct = llm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "".join(map(str, deltas)) == tokenizer.decode(direct[0, ids.shape[1] :], skip_special_tokens=True)
    await llm.aclose()


async def test_the_model_loads_once_and_start_is_optional(tiny_chat_model_dir: Path) -> None:
    llm = local(tiny_chat_model_dir)
    first = [delta async for delta in llm.stream(MESSAGES)]  # loads on first use
    model = llm.model
    await llm.start()
    assert llm.model is model
    assert [delta async for delta in llm.stream(MESSAGES)] == first


async def test_cancel_stops_generation_within_a_token(tiny_chat_model_dir: Path) -> None:
    llm = local(tiny_chat_model_dir, max_new_tokens=2000)
    await llm.start()
    forwards = count_forwards(llm)
    cancel = asyncio.Event()
    deltas = []
    async for delta in llm.stream(MESSAGES, cancel):
        deltas.append(delta)
        if len(deltas) == 3:
            at_cancel = forwards[0]
            cancel.set()
    assert len(deltas) == 3
    assert forwards[0] <= at_cancel + 2  # the worker saw the stop at its next token and has ended
    assert forwards[0] < 100


async def test_an_interrupted_reply_frees_the_model_for_the_next(tiny_chat_model_dir: Path) -> None:
    """An interrupt cancels the task reading the reply; generation stops, and the next reply is whole."""
    llm = local(tiny_chat_model_dir, max_new_tokens=2000)
    await llm.start()
    forwards = count_forwards(llm)
    started = asyncio.Event()

    async def read() -> None:
        async for _ in llm.stream(MESSAGES):
            started.set()

    task = asyncio.create_task(read())
    await asyncio.wait_for(started.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stopped_at = forwards[0]
    await asyncio.sleep(0.2)
    assert forwards[0] == stopped_at < 2000


async def test_sampling_with_a_temperature_streams_text(tiny_chat_model_dir: Path) -> None:
    llm = local(tiny_chat_model_dir, temperature=0.7)
    assert "".join([str(delta) async for delta in llm.stream(MESSAGES)])


async def test_a_hub_id_loads_from_the_hub_cache(tiny_chat_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The download path: a hub id resolves through huggingface_hub's snapshot_download (here from its cache)."""
    from huggingface_hub import constants

    snapshot = tmp_path / "models--test--tiny-chat" / "snapshots" / "0123abc"
    shutil.copytree(tiny_chat_model_dir, snapshot)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    llm = local("test/tiny-chat")
    assert [delta async for delta in llm.stream(MESSAGES)]


async def test_a_model_not_downloaded_while_offline_says_what_to_do(tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LlmError) as caught:
        await local("Qwen/Qwen2.5-0.5B-Instruct").start()
    assert str(caught.value) == (
        "cannot load the local LLM: Qwen/Qwen2.5-0.5B-Instruct is not downloaded yet and the hub cannot be reached "
        "(offline, or HF_HUB_OFFLINE=1): connect once to download it, or set llm.local.model to a local folder "
        "holding the model"
    )


@pytest.mark.parametrize("model", ["./no/such/folder", "not-a-hub-id"])
async def test_a_model_that_is_neither_folder_nor_hub_id_is_named(model: str) -> None:
    with pytest.raises(LlmError, match=f"llm.local.model='{model}' is neither a folder nor a hub id"):
        await local(model).start()


async def test_a_folder_that_is_no_model_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LlmError, match=f"cannot load the local LLM '{tmp_path}' from {tmp_path}: "):
        await local(tmp_path).start()


async def test_a_model_without_a_chat_template_is_refused(tmp_path: Path) -> None:
    folder = save_random_chat_model(tmp_path / "base-model", chat_template=None)
    with pytest.raises(LlmError, match="has no chat template: llm.local.model must be an instruct"):
        await local(folder).start()


# Tool calls: Qwen2.5's template renders the tools and the history; the calls the model writes are parsed out.

WEATHER = ToolSpec(
    "get_weather",
    "The weather now in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
WEATHER_JSON = (
    '{"type": "function", "function": {"name": "get_weather", "description": "The weather now in a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}'
)
HISTORY: list[Message] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny", "celsius": 21}'},
]
CALL_TEXT = 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tool_chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random model with Qwen2.5's tool-calling template and its `<tool_call>` tags (added, not special)."""
    return save_random_chat_model(
        tmp_path_factory.mktemp("tool-chat-model"), chat_template=QWEN_TOOLS_TEMPLATE, tool_tags=True
    )


class FakeScriptedModel:
    """Stands in for the model in `generate`: streams a fixed reply, as tokens of the real tokenizer, through the
    backend's real streamer (then the end-of-turn token, as a chat model ends)."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, reply: str) -> None:
        self.ids = tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id]

    def generate(self, input_ids: torch.Tensor, streamer, stopping_criteria, **settings) -> None:
        streamer.put(input_ids.cpu())
        for token in self.ids:
            if any(criterion(input_ids, None).all() for criterion in stopping_criteria):
                break
            streamer.put(torch.tensor([token]))
        streamer.end()


async def test_the_prompt_shows_the_tools_and_past_calls_as_qwen_does(tool_chat_model_dir: Path) -> None:
    llm = local(tool_chat_model_dir, max_new_tokens=4)
    await llm.start()
    prompts: list[torch.Tensor] = []
    count_forwards(llm, prompts)
    [item async for item in llm.stream(HISTORY, tools=[WEATHER])]

    assert llm.tokenizer.decode(prompts[0][0]) == (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        f"{WEATHER_JSON}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
        'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"sky": "sunny", "celsius": 21}\n</tool_response><|im_end|>\n'
        "<|im_start|>assistant\n"
    )


async def test_without_tools_the_prompt_has_no_tools_section(tool_chat_model_dir: Path) -> None:
    llm = local(tool_chat_model_dir, max_new_tokens=2)
    await llm.start()
    prompts: list[torch.Tensor] = []
    count_forwards(llm, prompts)
    [item async for item in llm.stream(MESSAGES)]
    assert llm.tokenizer.decode(prompts[0][0]) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n"
    )


def test_messages_reach_the_template_as_hf_templates_expect() -> None:
    bad_call: Message = {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{city"}}],
    }
    converted = template_messages([*HISTORY, bad_call])
    function = {"name": "get_weather", "arguments": {"city": "Paris"}}  # arguments parsed, for `tojson` to render
    assert converted[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_1", "type": "function", "function": function}],
    }
    assert converted[3] == {**HISTORY[3], "name": "get_weather"}
    assert converted[4]["tool_calls"][0]["function"]["arguments"] == "{city"  # as written, for the model to see
    assert HISTORY[2]["content"] is None  # the caller's messages are left as they were


@pytest.mark.parametrize("tags_special", [False, True], ids=["tags as in Qwen2.5", "tags marked special"])
async def test_a_call_the_model_writes_comes_out_after_its_text(tool_chat_model_dir: Path, tags_special: bool) -> None:
    llm = local(tool_chat_model_dir)
    await llm.start()
    if tags_special:
        llm.tokenizer.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]}, False)
    llm.model = fake = FakeScriptedModel(llm.tokenizer, CALL_TEXT + "\nSure.")
    assert {llm.tokenizer.convert_tokens_to_ids(tag) for tag in ("<tool_call>", "</tool_call>")} <= set(fake.ids)
    items = [item async for item in llm.stream(HISTORY[:2], tools=[WEATHER])]

    calls = [item for item in items if isinstance(item, ToolCall)]
    text_before = "".join(item for item in items[: items.index(calls[0])] if isinstance(item, str))
    assert text_before == "Let me check.\n"
    assert [(call.name, call.arguments) for call in calls] == [("get_weather", '{"city": "Paris"}')]
    assert items[-1] == "Sure."  # text after the call; the end-of-turn token is not said
    assert calls[0].id.startswith("call_")


async def test_a_call_cut_off_at_the_token_limit_still_comes_out(tool_chat_model_dir: Path) -> None:
    llm = local(tool_chat_model_dir)
    await llm.start()
    llm.model = FakeScriptedModel(llm.tokenizer, '<tool_call>\n{"name": "get_weather", "arguments": {"ci')
    (call,) = [item async for item in llm.stream(HISTORY[:2], tools=[WEATHER])]
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("get_weather", '{"name": "get_weather", "arguments": {"ci')


async def test_a_template_without_tools_answers_without_them(tiny_chat_model_dir: Path, caplog) -> None:
    llm = local(tiny_chat_model_dir)
    plain = [delta async for delta in llm.stream(MESSAGES)]
    with caplog.at_level("WARNING"):
        with_tools = [delta async for delta in llm.stream(MESSAGES, tools=[WEATHER])]
        again = [delta async for delta in llm.stream(MESSAGES, tools=[WEATHER])]
    assert with_tools == again == plain
    (warning,) = [record.getMessage() for record in caplog.records]
    assert f"the chat template of the local LLM {str(tiny_chat_model_dir)!r} does not support tools" in warning
