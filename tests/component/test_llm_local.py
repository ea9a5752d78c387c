"""The in-process transformers backend on a tiny random chat model saved to disk, loaded by the real code path."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
import torch

from assistant.config import LocalBackendConfig
from assistant.llm.backend import LlmError, Message
from assistant.llm.local_transformers import LocalBackend
from tests.support.random_chat_model import save_random_chat_model

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
    assert "".join(deltas) == tokenizer.decode(direct[0, ids.shape[1] :], skip_special_tokens=True)
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
    assert "".join([delta async for delta in llm.stream(MESSAGES)])


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
