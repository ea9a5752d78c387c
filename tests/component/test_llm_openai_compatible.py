"""The OpenAI-compatible backend with the real `openai` client against a real streaming HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import pytest

from assistant.config import OpenAIBackendConfig
from assistant.llm.backend import BackendUnavailable, LlmError, Message, ToolCall, ToolSpec
from assistant.llm.openai_compatible import OpenAICompatibleBackend, redact_url
from tests.support.chat_server import Call, ChatServer, Script, tokens
from tests.support.processes import free_port

MESSAGES: list[Message] = [
    {"role": "system", "content": "You are a voice assistant."},
    {"role": "user", "content": "What's the weather like?"},
]
LONG_REPLY = "It is sunny and warm today, with a light breeze from the west and not a cloud in the sky at all."


def backend(url: str, **settings) -> OpenAICompatibleBackend:
    defaults = {"model": "tiny", "api_key_env": None, "timeout_s": 5.0, "stall_timeout_s": 5.0, "max_retries": 0}
    return OpenAICompatibleBackend(OpenAIBackendConfig(base_url=url, **{**defaults, **settings}))


async def collect(
    llm: OpenAICompatibleBackend, cancel: asyncio.Event | None = None
) -> tuple[list[str], LlmError | None]:
    deltas: list[str] = []
    try:
        async for delta in llm.stream(MESSAGES, cancel):
            assert isinstance(delta, str)  # no tools were offered
            deltas.append(delta)
    except LlmError as error:
        return deltas, error
    finally:
        await llm.aclose()
    return deltas, None


async def outcomes(server: ChatServer, count: int) -> list[str]:
    return await asyncio.to_thread(server.wait_outcomes, count)


async def test_a_reply_streams_token_by_token_with_the_settings_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    with ChatServer(Script(reply="Sunny, and 20 degrees."), api_key="sk-test", models={"tiny"}) as server:
        llm = backend(server.url, api_key_env="TEST_LLM_KEY", temperature=0.3, max_tokens=42)
        deltas, error = await collect(llm)
        assert await outcomes(server, 1) == ["finished"]
    assert error is None
    assert deltas == tokens("Sunny, and 20 degrees.")
    (request,) = server.requests
    assert request["messages"] == MESSAGES  # the system prompt goes first, as the conversation built it
    assert request["model"] == "tiny" and request["stream"] is True
    assert request["temperature"] == 0.3 and request["max_tokens"] == 42
    assert server.authorizations == ["Bearer sk-test"]


async def test_a_local_server_needs_no_key() -> None:
    with ChatServer() as server:
        deltas, error = await collect(backend(server.url, api_key_env="UNSET_TEST_LLM_KEY"))
    assert error is None and deltas
    assert server.authorizations == ["Bearer not-needed"]


def test_openai_itself_without_a_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendUnavailable, match="OPENAI_API_KEY"):
        OpenAICompatibleBackend(OpenAIBackendConfig())


async def test_a_key_variable_that_is_not_set_for_a_local_server_is_said_once_at_start(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    with caplog.at_level(logging.INFO, logger="assistant.llm.openai_compatible"), ChatServer() as server:
        for variable in (None, "TEST_LLM_KEY", "UNSET_TEST_LLM_KEY"):
            deltas, error = await collect(backend(server.url, api_key_env=variable))
            assert error is None and deltas
    assert [r.getMessage() for r in caplog.records] == [
        f"LLM: $UNSET_TEST_LLM_KEY (llm.openai.api_key_env) is not set, so no API key is sent to {server.url}"
    ]


def test_openai_without_a_key_names_the_variable_but_not_the_url_s_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendUnavailable) as caught:
        OpenAICompatibleBackend(OpenAIBackendConfig(base_url="https://me:s3cret@api.openai.com/v1"))
    assert str(caught.value) == (
        "https://me:***@api.openai.com/v1 needs an API key: put the key in the environment variable OPENAI_API_KEY "
        "(llm.openai.api_key_env)"
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://me:s3cret@host:8080/v1", "http://me:***@host:8080/v1"),
        ("http://t0ken@host/v1", "http://***@host/v1"),  # a user part alone may be the secret
        ("http://:s3cret@host/v1", "http://***@host/v1"),
        ("http://host/v1", "http://host/v1"),
    ],
)
def test_credentials_in_a_url_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def test_credentials_in_the_base_url_are_in_no_warning_or_error(caplog: pytest.LogCaptureFixture) -> None:
    with ChatServer(Script(status=500), Script(status=500)) as server:
        secured = server.url.replace("http://", "http://kiosk:s3cret@")
        with caplog.at_level(logging.INFO, logger="assistant.llm.openai_compatible"):
            deltas, error = await collect(backend(secured, api_key_env="UNSET_TEST_LLM_KEY", max_retries=1))
    assert server.authorizations == ["Basic a2lvc2s6czNjcmV0"] * 2  # the client still sends them (HTTP basic auth)
    assert deltas == [] and error is not None
    shown = server.url.replace("http://", "http://kiosk:***@")
    assert str(error).startswith(f"the LLM server at {shown} answered 500")
    assert [shown in r.getMessage() and "s3cret" not in r.getMessage() for r in caplog.records] == [True, True]
    refused = f"http://kiosk:s3cret@127.0.0.1:{free_port()}/v1"
    deltas, error = await collect(backend(refused))
    assert error is not None and "s3cret" not in str(error) and "kiosk:***@127.0.0.1" in str(error)


async def test_connection_refused_is_retried_then_reported(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    with caplog.at_level(logging.WARNING, logger="assistant.llm.openai_compatible"):
        deltas, error = await collect(backend(url, max_retries=1))
    assert deltas == [] and error is not None and error.before_first_token
    assert str(error) == f"the LLM server at {url} refused the connection: is it running? (llm.openai.base_url)"
    assert [r.getMessage().endswith("trying again (1 of 1)") for r in caplog.records] == [True]


async def test_a_wrong_key_is_a_401_that_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_LLM_KEY", "sk-wrong")
    with ChatServer(api_key="sk-right") as server:
        deltas, error = await collect(backend(server.url, api_key_env="TEST_LLM_KEY", max_retries=2))
    assert deltas == [] and error is not None and error.before_first_token
    assert "rejected the API key (401: Incorrect API key provided.)" in str(error)
    assert "TEST_LLM_KEY" in str(error)
    assert len(server.requests) == 1  # a retry cannot fix a key


async def test_an_unknown_model_is_a_404_that_names_the_model() -> None:
    with ChatServer(models={"tiny"}) as server:
        deltas, error = await collect(backend(server.url, model="huge", max_retries=2))
    assert deltas == [] and error is not None and error.before_first_token
    assert "has no model 'huge' (404: The model `huge` does not exist" in str(error)
    assert "llm.openai.model" in str(error)
    assert len(server.requests) == 1


async def test_no_first_token_in_time_is_a_timeout_and_the_request_is_dropped() -> None:
    with ChatServer(Script(first_delay_s=60)) as server:
        deltas, error = await collect(backend(server.url, timeout_s=0.5))
        assert await outcomes(server, 1) == ["client closed"]
    assert deltas == [] and error is not None and error.before_first_token
    assert str(error) == f"the LLM server at {server.url} sent no reply within 0.5 s (llm.openai.timeout_s)"


async def test_a_timeout_before_any_text_is_retried() -> None:
    with ChatServer(Script(first_delay_s=60), Script(reply="Second try.")) as server:
        deltas, error = await collect(backend(server.url, timeout_s=2, max_retries=1))  # room for a busy machine
        assert await outcomes(server, 2) == ["client closed", "finished"]
    assert error is None and "".join(deltas) == "Second try."


async def test_a_server_error_before_any_text_is_retried() -> None:
    with ChatServer(Script(status=500), Script(reply="Back again.")) as server:
        deltas, error = await collect(backend(server.url, max_retries=1))
    assert error is None and "".join(deltas) == "Back again."
    assert len(server.requests) == 2


async def test_a_stall_mid_stream_ends_the_reply_with_what_was_said_and_no_retry() -> None:
    with ChatServer(Script(reply=LONG_REPLY, stall_after=3)) as server:
        deltas, error = await collect(backend(server.url, stall_timeout_s=1, max_retries=3))
        assert await outcomes(server, 1) == ["client closed"]
    assert deltas == tokens(LONG_REPLY)[:3]
    assert error is not None and not error.before_first_token
    assert "stopped sending mid-reply (nothing for 1 s, llm.openai.stall_timeout_s)" in str(error)
    assert len(server.requests) == 1  # text was out: a retry would repeat it


async def test_a_disconnect_mid_stream_is_reported_with_what_was_said() -> None:
    with ChatServer(Script(reply=LONG_REPLY, drop_after=4)) as server:
        deltas, error = await collect(backend(server.url, max_retries=3))
    assert deltas == tokens(LONG_REPLY)[:4]
    assert error is not None and not error.before_first_token
    assert f"the LLM server at {server.url} broke off the reply mid-stream" in str(error)
    assert len(server.requests) == 1


async def test_a_stream_that_ends_without_a_finish_reason_is_a_broken_reply() -> None:
    with ChatServer(Script(reply=LONG_REPLY, end_after=4)) as server:
        deltas, error = await collect(backend(server.url, max_retries=3))
    assert deltas == tokens(LONG_REPLY)[:4]  # what was said is kept, under the mid-reply rule
    assert error is not None and not error.before_first_token
    assert "ended the reply stream before it was finished" in str(error)
    assert len(server.requests) == 1
    with ChatServer(Script(reply=LONG_REPLY, end_after=0), Script(reply="All good now.")) as server:
        deltas, error = await collect(backend(server.url, max_retries=3))
    assert error is None and "".join(deltas) == "All good now."  # nothing said yet: tried again
    assert len(server.requests) == 2


async def test_cancel_mid_stream_ends_quietly_and_closes_the_http_stream() -> None:
    cancel = asyncio.Event()
    with ChatServer(Script(reply=LONG_REPLY, delay_s=0.2)) as server:
        llm = backend(server.url)
        deltas = []
        async for delta in llm.stream(MESSAGES, cancel):
            deltas.append(delta)
            if len(deltas) == 2:
                cancel.set()
        assert await outcomes(server, 1) == ["client closed"]
        await llm.aclose()
    assert deltas == tokens(LONG_REPLY)[:2]


async def test_cancelling_the_consuming_task_closes_the_http_stream() -> None:
    """What an interrupt does to a reply: its task is cancelled while it waits for the next token."""
    received = asyncio.Event()

    async def consume(llm: OpenAICompatibleBackend) -> None:
        async for _ in llm.stream(MESSAGES):
            received.set()

    with ChatServer(Script(reply=LONG_REPLY, delay_s=0.2)) as server:
        llm = backend(server.url)
        task = asyncio.create_task(consume(llm))
        await asyncio.wait_for(received.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await outcomes(server, 1) == ["client closed"]
        await llm.aclose()


async def test_closing_the_generator_early_closes_the_http_stream() -> None:
    with ChatServer(Script(reply=LONG_REPLY, delay_s=0.2)) as server:
        llm = backend(server.url)
        stream = llm.stream(MESSAGES)
        assert await anext(stream) == tokens(LONG_REPLY)[0]
        await stream.aclose()
        assert await outcomes(server, 1) == ["client closed"]
        await llm.aclose()


async def test_in_the_assistant_a_broken_reply_is_an_error_event_and_the_next_turn_is_answered() -> None:
    from assistant.config import Config
    from assistant.events import ErrorEvent, EventBus
    from pipelines.voice_loop import VoiceLoop

    bus = EventBus()
    with ChatServer(Script(reply=LONG_REPLY, drop_after=8), Script(reply="All good now.")) as server:
        llm = backend(server.url)
        with bus.subscribe(ErrorEvent) as errors:
            voice = VoiceLoop(Config(), bus, llm)
            first = await voice.ask("What's the weather like?")
            second = await voice.ask("Are you there?")
        await llm.aclose()
    assert first is not None and first.text == "It is sunny and warm today,"  # what was said before the break
    assert second is not None and second.text == "All good now."
    (error,) = [errors.queue.get_nowait() for _ in range(errors.queue.qsize())]
    assert error.source == "llm" and error.message.startswith("the LLM failed mid-reply: the LLM server at")
    assert server.requests[1]["messages"][-2:] == [
        {"role": "assistant", "content": "It is sunny and warm today,"},
        {"role": "user", "content": "Are you there?"},
    ]


WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city now.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIMER = ToolSpec("set_timer", "Start a timer.", {"type": "object", "properties": {"minutes": {"type": "number"}}})
PARIS = '{"city": "Paris", "unit": "celsius"}'


async def collect_all(
    llm: OpenAICompatibleBackend,
    messages: list[Message] = MESSAGES,
    tools: tuple[ToolSpec, ...] = (WEATHER, TIMER),
    close: bool = True,
) -> tuple[list[str | ToolCall], LlmError | None]:
    items: list[str | ToolCall] = []
    try:
        async for item in llm.stream(messages, tools=tools):
            items.append(item)
    except LlmError as error:
        return items, error
    finally:
        if close:
            await llm.aclose()
    return items, None


async def test_a_tool_call_with_its_arguments_in_pieces_is_yielded_whole() -> None:
    script = Script(reply="", calls=(Call("get_weather", PARIS, id="call_abc"),), piece_chars=3)
    assert len(script.deltas()) == 1 + 12  # the name first, then the arguments three characters at a time
    with ChatServer(script) as server:
        items, error = await collect_all(backend(server.url))
        assert await outcomes(server, 1) == ["finished"]
    assert error is None
    assert items == [ToolCall("call_abc", "get_weather", PARIS)]


async def test_two_calls_in_one_reply_come_in_order() -> None:
    calls = (Call("get_weather", PARIS), Call("set_timer", '{"minutes": 5}'))
    with ChatServer(Script(reply="", calls=calls)) as server:
        items, error = await collect_all(backend(server.url))
    assert error is None
    assert items == [ToolCall("call_0", "get_weather", PARIS), ToolCall("call_1", "set_timer", '{"minutes": 5}')]


async def test_text_before_a_call_streams_first_and_as_it_comes() -> None:
    calls = (Call("get_weather", PARIS),)
    with ChatServer(Script(reply="Let me look that up.", calls=calls, delay_s=0.1)) as server:
        llm = backend(server.url)
        items: list[str | ToolCall] = []
        ended_before: list[int] = []  # responses the server had finished when each text delta arrived
        async for item in llm.stream(MESSAGES, tools=[WEATHER]):
            items.append(item)
            if isinstance(item, str):
                ended_before.append(len(server.outcomes))
        await llm.aclose()
    assert items == [*tokens("Let me look that up."), ToolCall("call_0", "get_weather", PARIS)]
    assert ended_before == [0] * 5  # the text came while the server was still sending


async def test_whole_calls_as_vllm_sends_them() -> None:
    calls = (Call("get_weather", PARIS, id="chatcmpl-tool-1"), Call("set_timer", '{"minutes": 5}', id="t2"))
    with ChatServer(Script(reply="Sure.", calls=calls, call_style="whole")) as server:
        items, error = await collect_all(backend(server.url))
    assert error is None
    assert items == [
        "Sure.",
        ToolCall("chatcmpl-tool-1", "get_weather", PARIS),
        ToolCall("t2", "set_timer", '{"minutes": 5}'),
    ]


async def test_tools_are_sent_in_openais_format_and_not_at_all_without_tools() -> None:
    with ChatServer(Script(reply="Hi."), Script(reply="Hi.")) as server:
        llm = backend(server.url)
        await collect_all(llm, close=False)
        await collect_all(llm, tools=())
    with_tools, without = server.requests
    assert with_tools["tools"] == [
        {
            "type": "function",
            "function": {"name": spec.name, "description": spec.description, "parameters": spec.parameters},
        }
        for spec in (WEATHER, TIMER)
    ]
    assert "tools" not in without


async def test_a_conversation_with_calls_and_their_results_is_sent_as_it_is() -> None:
    call = ToolCall("call_abc", "get_weather", '{"city": "Paris"}')
    conversation: list[Message] = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.message()]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature": 20, "sky": "clear"}'},
    ]
    with ChatServer(Script(reply="It is 20 degrees and clear in Paris.")) as server:
        items, error = await collect_all(backend(server.url), conversation)
    assert error is None and "".join(str(item) for item in items) == "It is 20 degrees and clear in Paris."
    assert server.requests[0]["messages"] == conversation


async def test_argument_pieces_keep_a_slow_call_alive() -> None:
    """Each piece restarts the stall timer: a call that takes longer than the timeouts in all is not cut."""
    with ChatServer(Script(reply="", calls=(Call("get_weather", PARIS),), delay_s=0.3)) as server:
        items, error = await collect_all(backend(server.url, timeout_s=1.5, stall_timeout_s=1.5))
    assert error is None and items == [ToolCall("call_0", "get_weather", PARIS)]  # about 3 s of pieces


async def test_a_stall_mid_arguments_is_reported_by_the_stall_timeout_and_retried() -> None:
    call = Call("get_weather", PARIS)
    with ChatServer(Script(reply="", calls=(call,), stall_after=4)) as server:
        items, error = await collect_all(backend(server.url, timeout_s=30, stall_timeout_s=1))
        assert await outcomes(server, 1) == ["client closed"]
    assert items == [] and error is not None and error.before_first_token  # no half call came out
    assert "stopped sending mid-reply (nothing for 1 s, llm.openai.stall_timeout_s)" in str(error)
    with ChatServer(Script(reply="", calls=(call,), stall_after=4), Script(reply="", calls=(call,))) as server:
        items, error = await collect_all(backend(server.url, stall_timeout_s=1, max_retries=1))
    assert error is None and items == [ToolCall("call_0", "get_weather", PARIS)]  # nothing was out: tried again


async def test_a_break_before_the_finish_leaves_no_call_behind_and_is_retried() -> None:
    calls = (Call("get_weather", PARIS),)
    broken = Script(reply="", calls=calls, drop_after=len(Script(reply="", calls=calls).deltas()))  # all but the end
    with ChatServer(broken, Script(reply="", calls=(Call("set_timer", "{}"),))) as server:
        items, error = await collect_all(backend(server.url, max_retries=1))
    assert error is None and items == [ToolCall("call_0", "set_timer", "{}")]
    assert len(server.requests) == 2


@pytest.mark.parametrize("style", ["openai", "whole"])
async def test_calls_without_ids_or_indexes_get_unique_ids(style: Literal["openai", "whole"]) -> None:
    calls = (Call("get_weather", PARIS), Call("set_timer", '{"minutes": 5}'))
    script = Script(reply="", calls=calls, call_style=style, send_ids=False, send_index=False)
    with ChatServer(script, script) as server:
        llm = backend(server.url)
        first, error = await collect_all(llm, close=False)
        second, again = await collect_all(llm)
    assert error is None and again is None
    replies = [*first, *second]
    assert all(isinstance(call, ToolCall) for call in replies)
    assert [(call.name, call.arguments) for call in replies if isinstance(call, ToolCall)] == [
        ("get_weather", PARIS),
        ("set_timer", '{"minutes": 5}'),
    ] * 2
    ids = [call.id for call in replies if isinstance(call, ToolCall)]
    assert len(set(ids)) == 4 and all(id.startswith("call_") for id in ids)


@pytest.mark.parametrize(("finish", "kept"), [("stop", True), ("length", False)])
async def test_calls_count_when_the_reply_stopped_but_not_when_it_was_cut(finish: str, kept: bool) -> None:
    with ChatServer(Script(reply="", calls=(Call("get_weather", PARIS),), finish_reason=finish)) as server:
        items, error = await collect_all(backend(server.url))
    assert error is None
    assert items == ([ToolCall("call_0", "get_weather", PARIS)] if kept else [])
