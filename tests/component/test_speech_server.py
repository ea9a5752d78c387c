"""The speech server over a tiny random CSM, driven by the official `openai` client, raw HTTP
(urllib, http.client) and the assistant's own client (RemoteCSM)."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from assistant.audio.wavfile import pcm16
from assistant.segment import Segment
from assistant.tts.csm import CSMEngine
from assistant.tts.csm.batched_engine import BatchedCSMEngine
from assistant.tts.remote import RemoteCSM, SpeechServerError
from assistant.tts.server.wire import END, float_wav, read_record
from tests.support.processes import wait_until
from tests.support.speech_server import MODEL_ID, Answer, ServerProcess, ServerThread, get, metric, open_stream, request

K = 8  # TINY_CSM's codebooks
LONG = {"max_audio_ms": 60_000}  # ~750 frames: seconds of work for the tiny model, so a stream stays open


@pytest.fixture(scope="module")
def server(tiny_csm_engine: CSMEngine) -> Iterator[ServerThread]:
    with ServerThread(tiny_csm_engine, max_queue=1, max_input_chars=200) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def engine_pcm(engine: CSMEngine, text: str, **settings) -> bytes:
    """What the engine itself streams for these settings, as 16-bit PCM."""

    async def collect() -> list[np.ndarray]:
        return [chunk.audio async for chunk in engine.stream(text, **settings)]

    return pcm16(np.concatenate(asyncio.run(collect())))


def speech(
    client: openai.OpenAI, text: str, voice: str = "1", response_format: str = "pcm", model: str = MODEL_ID, **extra
) -> bytes:
    with client.audio.speech.with_streaming_response.create(
        model=model,
        input=text,
        voice=voice,
        response_format=response_format,
        extra_body=extra,  # type: ignore[arg-type]
    ) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        return b"".join(response.iter_bytes())


def post(server: ServerThread, body: dict) -> Answer:
    return request(f"{server.url}/v1/audio/speech", body)


def test_the_openai_client_streams_what_the_engine_says(client: openai.OpenAI, tiny_csm_engine: CSMEngine) -> None:
    heard = speech(client, "Hello there, how are you?", seed=3, max_audio_ms=800)
    assert heard == engine_pcm(tiny_csm_engine, "Hello there, how are you?", speaker=1, seed=3, max_audio_ms=800)
    assert len(heard) == 10 * 1920 * 2
    assert speech(client, "Hello there, how are you?", voice="ash", seed=3, max_audio_ms=800) == heard  # ash is 1


def test_context_reference_and_sampling_reach_the_engine(client: openai.OpenAI, tiny_csm_engine: CSMEngine) -> None:
    codes = np.random.default_rng(0).integers(0, 2048, (K, 6))
    audio = np.sin(np.arange(24_000) / 9).astype(np.float32) * 0.3
    extra = {
        "seed": 4,
        "max_audio_ms": 480,
        "temperature": 0.7,
        "topk": 20,
        "chunk_frames": 3,
        "context": [{"speaker": 0, "text": "Hi.", "audio": base64.b64encode(float_wav(audio, 24_000)).decode()}],
        "reference": {"speaker": 1, "text": "This is my voice.", "codes": codes.tolist()},
    }
    direct = engine_pcm(
        tiny_csm_engine,
        "Fine, thanks.",
        speaker=1,
        seed=4,
        max_audio_ms=480,
        temperature=0.7,
        topk=20,
        chunk_frames=3,
        context=[Segment(0, "Hi.", audio=audio)],
        reference=Segment(1, "This is my voice.", codes=torch.tensor(codes)),
    )
    assert speech(client, "Fine, thanks.", **extra) == direct


def test_wav_is_a_header_then_the_same_samples(client: openai.OpenAI) -> None:
    settings = {"seed": 5, "max_audio_ms": 400}
    data = speech(client, "A wave file.", response_format="wav", **settings)
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        samples = wav.readframes(10**6)
    assert samples == speech(client, "A wave file.", **settings) and len(samples) == 5 * 1920 * 2


@pytest.mark.parametrize(
    ("change", "status", "param", "words"),
    [
        ({"voice": "bob"}, 400, "voice", "unknown voice 'bob'"),
        ({"input": "  "}, 400, "input", "input is empty"),
        ({"input": "x" * 201}, 413, "input", "at most 200"),
        ({"speed": 1.5}, 400, "speed", "only 1.0"),
        ({"response_format": "mp3"}, 400, "response_format", "'pcm', 'wav' or 'csm'"),
        ({"model": "whisper-1"}, 404, "model", "is not served here"),
        ({"temperature": -1}, 400, "temperature", "greater than or equal to 0"),
        ({"volume": 3}, 400, "volume", "unknown field 'volume'"),
        (
            {"context": [{"speaker": 0, "text": "Hi.", "codes": [[1, 2]] * (K - 1)}]},
            400,
            "context.0.codes",
            f"must be {K} rows",
        ),
        (
            {"context": [{"speaker": 0, "text": "Hi.", "codes": [[1, 2]] * (K - 1) + [[3]]}]},
            400,
            "context.0.codes",
            "of equal length",
        ),
        ({"context": [{"speaker": 0, "text": "Hi.", "codes": [[5000]] * K}]}, 400, "context.0.codes", "0..2047"),
        (
            {"context": [{"speaker": 0, "text": "Hi.", "audio": "bm90IGF1ZGlv"}]},
            400,
            "context.0.audio",
            "not an audio file",
        ),
        (
            {"reference": {"speaker": 1, "text": "Long.", "codes": [[1] * 600] * K}},
            400,
            "reference",
            "use a shorter clip",
        ),
    ],
)
def test_a_bad_request_says_what_is_wrong(
    server: ServerThread, change: dict, status: int, param: str, words: str
) -> None:
    response = post(server, {"model": MODEL_ID, "input": "Hello.", "voice": "1", **change})
    assert response.status == status, response.body
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"] and error["type"]


def test_the_openai_client_raises_the_servers_reason(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown voice 'robot'"):
        client.audio.speech.create(model=MODEL_ID, input="Hello.", voice="robot")


def test_a_body_that_is_not_json_or_a_wrong_path_is_an_error_in_openais_shape(server: ServerThread) -> None:
    response = request(f"{server.url}/v1/audio/speech", b"{nope")
    assert response.status == 400 and "not JSON" in response.json()["error"]["message"]
    response = request(f"{server.url}/v1/audio/speech")
    assert response.status == 405 and "Method Not Allowed" in response.json()["error"]["message"]
    assert request(f"{server.url}/v2/nothing").json()["error"]["message"] == "GET /v2/nothing: Not Found"


def test_an_api_key_is_required_when_set(tiny_csm_engine: CSMEngine) -> None:
    with ServerThread(tiny_csm_engine, api_key="sesame") as keyed:
        wrong = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="guess", max_retries=0)
        with pytest.raises(openai.AuthenticationError, match="missing or wrong API key"):
            wrong.audio.speech.create(model=MODEL_ID, input="Hello.", voice="1")
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
        right = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="sesame", max_retries=0)
        assert speech(right, "Hello.", max_audio_ms=160)
        assert [m.id for m in right.models.list()] == [MODEL_ID]
        assert get(f"{keyed.url}/health")[0] == 200 and get(f"{keyed.url}/metrics")[0] == 200  # probes need no key


def test_beyond_the_slots_requests_wait_in_line_and_beyond_the_queue_get_429(server: ServerThread) -> None:
    body = {"model": MODEL_ID, "input": "Hello.", "voice": "1", "response_format": "pcm"}
    with open_stream(f"{server.url}/v1/audio/speech", {**body, **LONG}) as held:
        held.read(1920)  # streaming: the one slot is taken
        waiting: list[Answer] = []
        line = threading.Thread(target=lambda: waiting.append(post(server, {**body, "max_audio_ms": 160})))
        line.start()
        wait_until(lambda: metric(server.url, "csm_requests_queued") == 1, 10, "the second request queued")
        refused = post(server, body)
        assert refused.status == 429 and refused.headers["Retry-After"] == "1"
        error = refused.json()["error"]
        assert error["code"] == "queue_full" and "1 requests are waiting" in error["message"]
    line.join(30)  # the first client left: the waiting one got the slot
    assert waiting[0].status == 200 and len(waiting[0].body) == 2 * 1920 * 2


def test_a_client_that_leaves_mid_stream_frees_its_slot_at_once(server: ServerThread) -> None:
    body = {"model": MODEL_ID, "input": "Hello.", "voice": "1", "response_format": "csm", **LONG}
    frames_before = metric(server.url, "csm_frames_generated_total")
    with open_stream(f"{server.url}/v1/audio/speech", body) as held:
        held.read(1920)
        assert metric(server.url, "csm_streams_active") == 1
    left = time.monotonic()
    wait_until(lambda: metric(server.url, "csm_streams_active") == 0, 5, "the stream to stop")
    assert time.monotonic() - left < 0.5
    assert metric(server.url, "csm_frames_generated_total") - frames_before < 300  # it did not run on to its end
    assert metric(server.url, 'csm_requests_total{path="/v1/audio/speech",status="499"}') >= 1
    assert post(server, {**body, "max_audio_ms": 160}).status == 200


def test_models_health_and_metrics(server: ServerThread, tiny_csm_engine: CSMEngine) -> None:
    listed = request(f"{server.url}/v1/models").json()
    assert listed["object"] == "list" and listed["data"][0]["id"] == MODEL_ID
    assert listed["data"][0]["csm"] == {
        "num_codebooks": K,
        "max_seq_len": 2048,
        "codec": tiny_csm_engine.codec.fingerprint,
        "slots": 1,
        "sample_rate": 24_000,
    }
    assert get(f"{server.url}/health") == (200, b'{"status": "ready", "active": 0, "queued": 0}')
    status, text = get(f"{server.url}/metrics")
    assert status == 200
    for name in (
        "csm_streams_active 0",
        "csm_requests_queued 0",
        "csm_slots 1",
        "csm_frames_generated_total ",
        'csm_first_chunk_seconds_bucket{le="+Inf"} ',
        "# TYPE csm_requests_total counter",
    ):
        assert name in text.decode()


def test_the_codes_endpoint_encodes_a_wav_or_base64_json(server: ServerThread, tiny_csm_engine: CSMEngine) -> None:
    audio = np.sin(np.arange(12_000) / 7).astype(np.float32) * 0.4
    expected = asyncio.run(tiny_csm_engine.encode(audio, 16_000)).tolist()
    wav = float_wav(audio, 16_000)
    raw = request(f"{server.url}/v1/audio/codes", wav, **{"Content-Type": "audio/wav"})
    as_json = request(f"{server.url}/v1/audio/codes", {"audio": base64.b64encode(wav).decode()})
    for response in (raw, as_json):
        reply = response.json()
        assert reply["codes"] == expected and reply["num_codebooks"] == K and reply["frames"] == len(expected[0])
        assert reply["codec"] == tiny_csm_engine.codec.fingerprint
    bad = request(f"{server.url}/v1/audio/codes", b"not audio", **{"Content-Type": "audio/wav"})
    assert bad.status == 400 and "not an audio file" in bad.json()["error"]["message"]


def test_the_cli_serves_drains_on_sigterm_and_exits_0(
    tmp_path: Path, tiny_csm_dir: Path, random_mimi_file: Path, llama3_tokenizer_json: Path
) -> None:
    args = (
        "--model",
        str(tiny_csm_dir),
        "--mimi",
        str(random_mimi_file),
        "--tokenizer",
        str(llama3_tokenizer_json),
        "--device",
        "cpu",
        "--api-key-env",
        "TEST_SPEECH_KEY",
        "--drain-s",
        "1",
        "--cors-origins",
        "https://kiosk.example, https://lobby.example/",
    )
    with ServerProcess(*args, env={"TEST_SPEECH_KEY": "k"}, log=tmp_path / "server.log") as process:
        assert all(
            status == 200 or body["error"]["message"] == "the speech model is still loading"
            for status, body in process.health
        )
        client = openai.OpenAI(base_url=f"{process.url}/v1", api_key="k", max_retries=0)
        model = client.models.list().data[0].id
        assert model == tiny_csm_dir.name
        browser = request(f"{process.url}/v1/models", Origin="https://lobby.example", Authorization="bearer k")
        assert browser.status == 200 and browser.headers["Access-Control-Allow-Origin"] == "https://lobby.example"
        assert len(speech(client, "Hello there.", voice="0", model=model, seed=1, max_audio_ms=400)) == 5 * 1920 * 2

        async def interrupted_by_sigterm() -> tuple[int, bytes]:
            async with RemoteCSM(process.url, api_key="k") as remote:
                chunks = remote.stream("Hello there.", speaker=0, seed=1, **LONG)
                await anext(chunks)
                process.process.send_signal(signal.SIGTERM)  # the stream runs on for --drain-s, then is cut
                health = await asyncio.to_thread(get, f"{process.url}/health")
                with pytest.raises(SpeechServerError, match="shut down before the end of this speech"):
                    async for _ in chunks:
                        pass
            return health

        status, body = asyncio.run(interrupted_by_sigterm())
        assert status == 503 and b"shutting down" in body
        assert process.stop() == 0
    log = process.output()
    assert f"speech server ready at http://127.0.0.1:{process.port}/v1" in log and "draining 1 open stream" in log
    assert "drained for 1.0 s: cutting 1 stream(s) still speaking (request " in log
    assert '"POST /v1/audio/speech HTTP/1.1" 200' in log and "/health" not in log  # the probes stay out of the log
    assert all(" id=" in line for line in log.splitlines() if '"POST /v1/audio/speech HTTP/1.1"' in line)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/no/such/csm"], "--model /no/such/csm: no such folder"),
        (["--model", "sesame/csm-1b", "--api-key-env", "NO_SUCH_KEY_VAR"], "$NO_SUCH_KEY_VAR is not set"),
        (["--model", "sesame/csm-1b", "--slots", "0"], "must be at least 1"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    env = {name: value for name, value in os.environ.items() if name != "NO_SUCH_KEY_VAR"}
    result = subprocess.run(
        [sys.executable, "-m", "assistant.tts.server", *args], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["empty folder", "hub id not downloaded", "mimi not weights"])
def test_what_cannot_be_loaded_is_one_line_naming_the_servers_flag_and_exit_2(
    case: str, tmp_path: Path, tiny_csm_dir: Path, llama3_tokenizer_json: Path
) -> None:
    """The loaders' errors in the server's terms: its flags, not the assistant's settings (`csm.model`), and no
    exception class as a prefix."""
    empty, mimi = tmp_path / "not-a-csm", tmp_path / "mimi.safetensors"
    empty.mkdir()
    mimi.write_text("not weights")
    args, flag = {
        "empty folder": (["--model", str(empty)], f"--model {empty}: no config.json in {empty}"),
        "hub id not downloaded": (["--model", "nobody/no-such-csm"], "--model nobody/no-such-csm: "),
        "mimi not weights": (["--model", str(tiny_csm_dir), "--mimi", str(mimi)], f"--mimi {mimi}: "),
    }[case]
    result = subprocess.run(
        [sys.executable, "-m", "assistant.tts.server", *args, "--tokenizer", str(llama3_tokenizer_json), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"speech server: {flag}"), result.stderr
    assert "Traceback" not in result.stderr and "CheckpointError" not in line and "csm." not in line
    if case == "hub id not downloaded":
        assert "set --model to a local folder" in line


@pytest.fixture(scope="module")
def batched_server(tiny_csm_dir: Path, tiny_mimi, llama3_tokenizer_json: Path) -> Iterator[ServerThread]:
    engine = BatchedCSMEngine.from_pretrained(tiny_csm_dir, tiny_mimi, llama3_tokenizer_json, slots=4)
    with ServerThread(engine, max_queue=8) as running:
        yield running
    engine.close()


def csm_codes(data: bytes) -> torch.Tensor:
    """The codes of a `csm` record stream that ended complete."""
    body = io.BytesIO(data)

    async def read(n: int) -> bytes:
        return body.read(n)

    async def records() -> list[torch.Tensor]:
        chunks = []
        while (record := await read_record(read)).kind != END:
            assert record.codes is not None, record.error
            chunks.append(record.codes)
        return chunks

    return torch.cat(asyncio.run(records()), dim=1)


def test_eight_clients_at_once_get_what_each_gets_alone(
    batched_server: ServerThread, tiny_csm_engine: CSMEngine
) -> None:
    """Eight official clients stream together from a batched server (four slots: four wait, then join the batch
    between frames); each gets the codes it gets alone, and that the local engine gives."""
    client = openai.OpenAI(base_url=f"{batched_server.url}/v1", api_key="none", max_retries=0)
    asks = [
        dict(
            text=f"Request number {i}, said its own way.",
            voice=str(i % 4),
            seed=i,
            max_audio_ms=160 * (3 + i),
            temperature=0.0 if i % 3 == 0 else 0.6 + 0.1 * i,
            topk=10 * (i + 1),
        )
        for i in range(8)
    ]

    def ask(settings: dict) -> torch.Tensor:
        settings = dict(settings)
        return csm_codes(speech(client, settings.pop("text"), settings.pop("voice"), response_format="csm", **settings))

    alone = [ask(settings) for settings in asks]
    together: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, ask(asks[i]))) for i in range(8)]
    for thread in threads:
        thread.start()
    wait_until(lambda: metric(batched_server.url, "csm_streams_active") >= 2, 30, "streams speaking at once")
    for thread in threads:
        thread.join(120)
    for i, settings in enumerate(asks):
        assert torch.equal(together[i], alone[i]) and alone[i].shape == (K, 2 * (3 + i))
        local = asyncio.run(collect_codes(tiny_csm_engine, settings))
        assert torch.equal(alone[i], local)


async def collect_codes(engine: CSMEngine, settings: dict) -> torch.Tensor:
    settings = dict(settings)
    text, speaker = settings.pop("text"), int(settings.pop("voice"))
    return torch.cat([chunk.codes async for chunk in engine.stream(text, speaker, **settings)], dim=1)


def test_a_client_that_leaves_frees_its_batched_slot_within_a_frame(batched_server: ServerThread) -> None:
    body = {"model": MODEL_ID, "input": "Hello.", "voice": "1", "response_format": "pcm", **LONG}
    with open_stream(f"{batched_server.url}/v1/audio/speech", {**body, "seed": 2}) as other:
        other.read(1920)
        with open_stream(f"{batched_server.url}/v1/audio/speech", body) as held:
            held.read(1920)
            assert metric(batched_server.url, "csm_streams_active") == 2
        left = time.monotonic()
        wait_until(lambda: metric(batched_server.url, "csm_streams_active") == 1, 5, "the stream to stop")
        assert time.monotonic() - left < 0.5
        other.read(1920 * 10)  # the other stream goes on
