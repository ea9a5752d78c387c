"""The speech server (a BatchedCSMEngine over a tiny random CSM and Mimi) against what a request may bring: audio
bounded and encoded without stalling other streams, malformed shapes refused in OpenAI's error shape, OpenAI's newer
fields and names, and what an operator needs (request ids in the access log, CORS, the key's scheme in any case)."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from assistant.tts.csm.batched_engine import BatchedCSMEngine
from assistant.tts.server.wire import float_wav
from tests.support.speech_server import MODEL_ID, Answer, ServerThread, open_stream, request

K = 8  # TINY_CSM's codebooks
SPEAK = {"model": MODEL_ID, "input": "Hello.", "voice": "1", "response_format": "pcm", "seed": 1, "max_audio_ms": 240}
LONG = {**SPEAK, "max_audio_ms": 60_000}


@pytest.fixture(scope="module")
def engine(tiny_csm_dir: Path, tiny_mimi, llama3_tokenizer_json: Path) -> Iterator[BatchedCSMEngine]:
    engine = BatchedCSMEngine.from_pretrained(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json, slots=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def server(engine: BatchedCSMEngine) -> Iterator[ServerThread]:
    with ServerThread(engine, max_queue=4) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def sound(seconds: float, rate: int = 24_000) -> np.ndarray:
    n = int(seconds * rate)
    return (np.sin(np.arange(n) / 9) * 0.3 + np.random.default_rng(0).normal(0, 0.05, n)).astype(np.float32)


def wav64(seconds: float, rate: int = 24_000) -> str:
    """Base64 of a float WAV of `sound`."""
    return base64.b64encode(float_wav(sound(seconds, rate), rate)).decode()


def post(server: ServerThread, body: dict | bytes, path: str = "/v1/audio/speech", **headers: str) -> Answer:
    return request(f"{server.url}{path}", body, 30, **headers)


def refused(answer: Answer, param: str | None, words: str, status: int = 400) -> None:
    """OpenAI's error shape, naming the field."""
    assert answer.status == status, answer.body
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and words in error["message"], error


# -- 14: what a request may bring, and encoding it without stalling the others ----------------------------------


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"context": [{"speaker": 0, "text": "Hi.", "audio": wav64(80, rate=1)}]}, "context.0.audio", "at 1 Hz"),
        ({"reference": {"speaker": 1, "text": "Me.", "audio": wav64(1, rate=96_000)}}, "reference.audio", "8000-48000"),
        (
            {"context": [{"speaker": 0, "text": f"Part {i}.", "audio": wav64(60, rate=8_000)} for i in range(3)]},
            "context",
            "180.0 s of audio; at most 163.8 s",
        ),
        ({"reference": {"speaker": 1, "text": "Me.", "audio": wav64(50, rate=8_000)}}, "reference", "at most 40.9 s"),
    ],
)
def test_audio_a_request_brings_is_bounded_before_any_work(
    server: ServerThread, change: dict, param: str, words: str
) -> None:
    """A context declared at 1 Hz (80 samples: 80 s, 1.9 million samples once at 24 kHz) took 35 s of the engine;
    now it, a rate beyond 48 kHz, and more audio than the window holds are refused at once."""
    start = time.monotonic()
    refused(post(server, {**SPEAK, **change}), param, words)
    assert time.monotonic() - start < 2


def test_the_codes_endpoint_bounds_its_audio_too(server: ServerThread) -> None:
    refused(post(server, base64.b64decode(wav64(80, rate=1)), "/v1/audio/codes"), "the body", "it must be 8000-48000")
    refused(post(server, {"audio": wav64(200, rate=8_000)}, "/v1/audio/codes"), "audio", "at most 163.8 s")


def test_streams_keep_their_pace_while_another_request_brings_context(server: ServerThread, tiny_mimi) -> None:
    """20 s of context is encoded between frames in pieces: the stream already speaking never waits for all of it
    (its gaps, but for scheduling's rare hiccups, are well under what encoding it at once takes) and goes on getting
    frames meanwhile."""
    context = [{"speaker": 0, "text": "What I said before.", "audio": wav64(20)}]
    with torch.inference_mode():
        start = time.perf_counter()
        tiny_mimi.encode(torch.from_numpy(sound(20))[None, None])
        at_once = time.perf_counter() - start
    arrivals: list[float] = []
    stop = threading.Event()

    def read(stream: http.client.HTTPResponse) -> None:
        while not stop.is_set() and stream.read(3840):
            arrivals.append(time.perf_counter())

    with open_stream(f"{server.url}/v1/audio/speech", LONG) as speaking:
        speaking.read(3840)
        reader = threading.Thread(target=read, args=(speaking,))
        reader.start()
        time.sleep(0.3)
        sent = time.perf_counter()
        answer = post(server, {**SPEAK, "context": context})
        done = time.perf_counter()
        stop.set()
        reader.join(10)
    assert answer.status == 200 and len(answer.body) == 3 * 3840
    during = [t for t in arrivals if sent <= t <= done]
    gaps = np.diff([t for t in arrivals if sent - 0.2 <= t <= done])
    assert len(during) >= 20 and np.percentile(gaps, 95) < at_once / 2, (len(during), sorted(gaps)[-5:], at_once)


def test_context_audio_gives_the_codes_of_encoding_it_at_once(server: ServerThread, engine: BatchedCSMEngine) -> None:
    """The codes endpoint (pieces of Mimi's streaming encoder, between frames) gives what the one-shot encoder
    gives; audio at 16 kHz is resampled first."""
    reply = post(server, {"audio": wav64(3.3, rate=16_000)}, "/v1/audio/codes").json()
    assert reply["codes"] == engine.call(engine.codec.encode, sound(3.3, 16_000), 16_000).tolist()
    assert reply["frames"] == 42


# -- 15: malformed shapes are 400s naming the field -----------------------------------------------------------


EMPTY_WAV = base64.b64encode(float_wav(np.zeros(0, np.float32), 24_000)).decode()


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"input": "\ud800 hi"}, "input", "lone surrogate '\\ud800'"),
        ({"context": [{"speaker": 0, "text": "\ud800 hi"}]}, "context.0.text", "lone surrogate"),
        ({"reference": {"speaker": 0, "text": "hi \udfff"}}, "reference.text", "lone surrogate"),
        ({"context": [{"speaker": 0, "text": "Hi.", "audio": EMPTY_WAV}]}, "context.0.audio", "no samples"),
        ({"reference": {"speaker": 0, "text": "Hi.", "audio": EMPTY_WAV}}, "reference.audio", "no samples"),
        ({"context": [{"speaker": 0, "text": "Hi.", "codes": [[2**63]] * K}]}, "context.0.codes", "0..2047"),
        ({"context": [{"speaker": 0, "text": "Hi.", "codes": [[-(2**70)]] * K}]}, "context.0.codes", "0..2047"),
        ({"seed": 2**64}, "seed", "less than 18446744073709551616"),
        ({"topk": 150}, "topk", "above this engine's limit of 100"),
        ({"voice": "\ud800"}, "voice", "unknown voice"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_field(
    server: ServerThread, change: dict, param: str, words: str
) -> None:
    refused(post(server, {**SPEAK, **change}), param, words)


def test_a_body_nested_100000_deep_is_a_400_naming_the_field(server: ServerThread) -> None:
    deep = json.dumps(SPEAK)[:-1] + ', "context": ' + "[" * 100_000 + "]" * 100_000 + "}"
    refused(post(server, deep.encode(), **{"Content-Type": "application/json"}), "context", "nested too deeply")
    refused(post(server, b"[" * 100_000, **{"Content-Type": "application/json"}), None, "the body is nested too")
    refused(post(server, b'{"seed": 1' + b"0" * 5000 + b"}"), None, "the body is not JSON")  # beyond int's digits


def test_an_empty_wav_to_the_codes_endpoint_is_a_400(server: ServerThread) -> None:
    refused(post(server, base64.b64decode(EMPTY_WAV), "/v1/audio/codes"), "the body", "no samples")
    refused(post(server, {"audio": EMPTY_WAV}, "/v1/audio/codes"), "audio", "no samples")


# -- 16: OpenAI's newer fields, names and endpoints ---------------------------------------------------------------


def pcm(client: openai.OpenAI, **fields) -> bytes:
    fields = {"model": MODEL_ID, "input": "Hello there.", "voice": "1", "response_format": "pcm", **fields}
    extra = {"seed": 2, "max_audio_ms": 400}
    with client.audio.speech.with_streaming_response.create(**fields, extra_body=extra) as response:
        return b"".join(response.iter_bytes())


def test_instructions_are_taken_and_change_nothing(client: openai.OpenAI) -> None:
    plain = pcm(client, model="gpt-4o-mini-tts")
    assert pcm(client, model="gpt-4o-mini-tts", instructions="Speak like a cheerful pirate.") == plain
    assert len(plain) == 5 * 3840


def test_sse_streams_openais_speech_events(client: openai.OpenAI) -> None:
    """`stream_format: sse`: `speech.audio.delta` events (base64 of the response format's bytes), then
    `speech.audio.done` with the usage, as OpenAI's clients read them."""
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts-2025-12-15",
        input="Hello there.",
        voice="ash",
        response_format="pcm",
        stream_format="sse",
        extra_body={"seed": 2, "max_audio_ms": 400},
    ) as response:
        assert response.headers["content-type"] == "text/event-stream"
        lines = [line for line in response.iter_lines() if line]
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert all(line.startswith("data: ") for line in lines)
    assert {e["type"] for e in events[:-1]} == {"speech.audio.delta"} and len(events) == 6
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert audio == pcm(client)  # ash is speaker 1
    done = events[-1]
    assert done["type"] == "speech.audio.done" and done["usage"]["output_tokens"] == 5
    assert done["usage"]["total_tokens"] == done["usage"]["input_tokens"] + 5 and done["usage"]["input_tokens"] > 2


def test_openais_newer_voices_stand_for_speakers(client: openai.OpenAI) -> None:
    for voice, speaker in (("verse", "0"), ("marin", "1"), ("cedar", "2"), ("coral", "3")):
        assert pcm(client, voice=voice) == pcm(client, voice=speaker)
    assert pcm(client, voice={"id": "marin"}) == pcm(client, voice="1")  # OpenAI's voice object


def test_a_model_is_retrieved_by_its_id_or_openais_names(client: openai.OpenAI, engine: BatchedCSMEngine) -> None:
    model = client.models.retrieve(MODEL_ID)
    assert model.id == MODEL_ID and model.owned_by == "csm"
    assert model.model_extra is not None and model.model_extra["csm"]["codec"] == engine.codec.fingerprint
    assert client.models.retrieve("gpt-4o-mini-tts").id == "gpt-4o-mini-tts"
    with pytest.raises(openai.NotFoundError, match="'whisper-1' does not exist"):
        client.models.retrieve("whisper-1")


# -- 17: request ids, the access log, CORS, the key's scheme ----------------------------------------------------


def test_every_answer_carries_a_request_id_the_client_may_give(server: ServerThread) -> None:
    given = post(server, SPEAK, **{"X-Request-Id": "kiosk-7/turn-3"})
    assert given.status == 200 and given.headers["X-Request-Id"] == "kiosk-7/turn-3"
    made = [post(server, {**SPEAK, "voice": "nobody"}), request(f"{server.url}/v1/models")]
    ids = [answer.headers["X-Request-Id"] for answer in made]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids) and ids[0] != ids[1]
    assert post(server, SPEAK, **{"X-Request-Id": "two words"}).headers["X-Request-Id"] != "two words"


def test_the_access_log_has_every_request_with_its_id_a_client_that_left_included(
    server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    post(server, {**SPEAK, "voice": "nobody"}, **{"X-Request-Id": "refused-1"})
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json", "X-Request-Id": "left-1"}
    connection.request("POST", "/v1/audio/speech", json.dumps(LONG), headers)
    response = connection.getresponse()
    response.read(3840)
    connection.close()  # mid-stream: the handler is cancelled
    deadline = time.monotonic() + 5
    while "id=left-1" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = {line.split("id=")[1].split()[0]: line for line in caplog.text.splitlines() if "id=" in line}
    assert '"POST /v1/audio/speech HTTP/1.1" 400 ' in lines["refused-1"]
    assert '"POST /v1/audio/speech HTTP/1.1" 499 ' in lines["left-1"]


def test_cors_is_off_by_default_and_answers_the_allowed_origins(engine: BatchedCSMEngine) -> None:
    origin = {"Origin": "https://kiosk.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    with ServerThread(engine) as plain:
        assert "Access-Control-Allow-Origin" not in request(f"{plain.url}/v1/models", Origin=origin["Origin"]).headers
        assert options(plain, preflight)[0] == 405
    with ServerThread(engine, api_key="sesame", cors_origins=("https://kiosk.example",)) as cors:
        status, headers = options(cors, preflight)  # a browser sends no key with its preflight
        assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://kiosk.example"
        assert (
            "POST" in headers["Access-Control-Allow-Methods"]
            and headers["Access-Control-Allow-Headers"] == "authorization"
        )
        answer = post(cors, SPEAK, Authorization="Bearer sesame", **origin)
        assert answer.status == 200 and answer.headers["Access-Control-Allow-Origin"] == "https://kiosk.example"
        assert "X-Request-Id" in answer.headers["Access-Control-Expose-Headers"]
        other = post(cors, SPEAK, Authorization="Bearer sesame", Origin="https://elsewhere.example")
        assert other.status == 200 and "Access-Control-Allow-Origin" not in other.headers
        assert options(cors, {**preflight, "Origin": "https://elsewhere.example"})[0] == 401


def options(server: ServerThread, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("OPTIONS", "/v1/audio/speech", headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def test_the_bearer_scheme_is_matched_in_any_case(engine: BatchedCSMEngine) -> None:
    with ServerThread(engine, api_key="sesame") as keyed:
        for scheme in ("Bearer", "bearer", "BEARER"):
            assert post(keyed, SPEAK, Authorization=f"{scheme} sesame").status == 200
        refused(post(keyed, SPEAK, Authorization="Basic sesame"), None, "missing or wrong API key", 401)
        refused(post(keyed, SPEAK, Authorization="bearer wrong"), None, "missing or wrong API key", 401)
        connection = http.client.HTTPConnection("127.0.0.1", keyed.port, timeout=10)
        connection.putrequest("GET", "/v1/models")
        connection.putheader("Authorization", b"Bearer \xff\xfe")  # not UTF-8
        connection.endheaders()
        assert connection.getresponse().status == 401
        connection.close()
