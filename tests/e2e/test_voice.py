"""The assistant's voice end to end: the locked voice across runs of the program, `--voice`, `--show-voice` and
`--reset-voice`, and `Assistant(voice=...)`, with real Whisper and a tiny random CSM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from assistant.audio.streams import FileSink
from assistant.audio.wavfile import read_wav, write_wav
from assistant.config import Config
from pipelines.assistant import Assistant
from pipelines.components import StartupError
from tests.e2e.test_cli import cli
from tests.e2e.test_file_mode import model_settings
from tests.support.fakes import FakeBackend, FakeTranscriber, QueueSource
from tests.support.speech import Clip

LOCKED = Path("csm-assistant") / "voice.safetensors"


def test_the_locked_voice_is_made_once_the_same_on_two_machines_and_can_be_replaced_shown_and_reset(
    tmp_path: Path,
    speech_clips: list[Clip],
    whisper_tiny_en: Path,
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    models = model_settings(whisper_tiny_en, tiny_csm_dir, random_mimi_file, llama3_tokenizer_json)
    question = str(speech_clips[0].path)

    def answer(home: Path, *extra: str) -> str:
        result = cli(
            "--input",
            question,
            "--output",
            str(tmp_path / "reply.wav"),
            "--set",
            "csm.max_audio_ms=800",
            *models,
            *extra,
            env={"XDG_DATA_HOME": str(home)},
            timeout_s=600,
        )
        assert result.returncode == 0, result.stderr
        return result.stderr

    first, second = tmp_path / "first", tmp_path / "second"
    assert "making the assistant's voice" in answer(first) and "making the assistant's voice" in answer(second)
    made = (first / LOCKED).read_bytes()
    assert torch.equal(load_file(first / LOCKED)["codes"], load_file(second / LOCKED)["codes"])  # same seed, same text

    again = answer(first)
    assert "making the assistant's voice" not in again and f"voice: {first / LOCKED}" in again
    assert (first / LOCKED).read_bytes() == made

    clip = speech_clips[1]
    chosen = answer(first, "--voice", str(clip.path), "--set", f"voice.text={clip.text}")
    assert f"voice: {clip.path}" in chosen and "making" not in chosen

    shown = cli("--show-voice", env={"XDG_DATA_HOME": str(first)})
    assert shown.returncode == 0 and f"locked voice: {first / LOCKED}" in shown.stdout and "Hello!" in shown.stdout
    reset = cli("--reset-voice", env={"XDG_DATA_HOME": str(first)})
    assert reset.returncode == 0 and not (first / LOCKED).exists() and "the next run makes a new one" in reset.stdout
    assert "none yet; the first run makes it" in cli("--show-voice", env={"XDG_DATA_HOME": str(first)}).stdout


@pytest.mark.parametrize("problem", ["missing", "no transcript"])
def test_a_voice_that_cannot_be_used_stops_the_start_with_one_line(problem: str, tmp_path: Path) -> None:
    clip = tmp_path / "me.wav"
    if problem == "no transcript":
        write_wav(clip, np.zeros(24_000, np.float32), 24_000)
    result = cli("--text", "--voice", str(clip), stdin="hello\n")
    expected = "no such voice file or clip" if problem == "missing" else "needs its transcript"
    assert result.returncode == 2 and result.stderr.startswith(f"--voice: {clip}")
    assert expected in result.stderr and "Traceback" not in result.stderr


def config(tiny_csm_dir: Path, random_mimi_file: Path, tokenizer: Path) -> Config:
    return Config.model_validate(
        {
            "csm": {
                "model": str(tiny_csm_dir),
                "mimi": str(random_mimi_file),
                "tokenizer": str(tokenizer),
                "device": "cpu",
                "seed": 3,
                "max_audio_ms": 480,
            },
            "llm": {"backend": "scripted"},
        }
    )


async def spoken_with(voice: str | Path | None, settings: Config, out: Path) -> torch.Tensor:
    """The codes of what the assistant said, after checking that it went to the file."""
    sink = FileSink(out)
    assistant = Assistant(
        settings, backend=FakeBackend([]), transcriber=FakeTranscriber(), source=QueueSource(), sink=sink, voice=voice
    )
    async with assistant:
        await assistant.say("Nice to meet you.")
        said = assistant.conversation.turns[-1].codes
    await sink.aclose()  # handed in, so not closed by the assistant
    assert said is not None and len(read_wav(out)[0]) == said.shape[1] * 1920
    return said


async def test_assistant_voice_argument_speaks_in_that_voice(
    tmp_path: Path,
    speech_clips: list[Clip],
    tiny_csm_dir: Path,
    random_mimi_file: Path,
    llama3_tokenizer_json: Path,
) -> None:
    settings = config(tiny_csm_dir, random_mimi_file, llama3_tokenizer_json)
    clip = speech_clips[2]
    (tmp_path / "clip.wav").write_bytes(clip.path.read_bytes())
    (tmp_path / "clip.txt").write_text(clip.text)
    plain = await spoken_with(
        None,
        settings.model_copy(update={"voice": settings.voice.model_copy(update={"locked": False})}),
        tmp_path / "a.wav",
    )
    voiced = await spoken_with(tmp_path / "clip.wav", settings, tmp_path / "b.wav")
    same = await spoken_with(tmp_path / "clip.wav", settings, tmp_path / "c.wav")
    assert torch.equal(voiced, same)  # the same seed in the same voice
    assert plain.shape != voiced.shape or not torch.equal(plain, voiced)  # the reference changed what was said
    with pytest.raises(StartupError, match="no such voice file"):
        await spoken_with(tmp_path / "nothing.wav", settings, tmp_path / "d.wav")
