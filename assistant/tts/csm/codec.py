"""Mimi through moshi: encode context audio, decode generated frames with moshi's streaming state."""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from assistant.audio.resample import resample

SAMPLE_RATE = 24_000
FRAME_SAMPLES = 1920  # one 80 ms Mimi frame


def load_mimi(mimi: Any, num_codebooks: int, device: torch.device | str) -> Any:
    """A moshi Mimi module as is, or loaded from a weights path (None: moshi's default hub repo). A path that does not
    hold Mimi's weights is a PathError (`assistant.hub`) saying what it is instead."""
    from moshi.models import loaders

    if mimi is None or isinstance(mimi, (str, Path)):
        if mimi is None:
            from huggingface_hub import hf_hub_download

            from .weights import CheckpointError

            try:
                mimi = hf_hub_download(loaders.DEFAULT_REPO, loaders.MIMI_NAME)
            except Exception as e:  # offline, gated or missing: say what to do
                raise CheckpointError(
                    f"cannot fetch Mimi from {loaders.DEFAULT_REPO} ({type(e).__name__}: {e}); connect once, "
                    f"or pass mimi= a local weights file or a moshi Mimi module"
                ) from e
        path, mimi = mimi, check_mimi(mimi)
        try:
            mimi = loaders.get_mimi(str(mimi), device=device)
        except Exception as error:  # another model's weights, or a damaged file: moshi's words are no help
            from assistant.hub import PathError

            lines = str(error).strip().splitlines() or [type(error).__name__]
            said = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
            raise PathError("mimi", path, f"not Mimi's weights ({said.strip()[:100]})", MIMI_FIX) from error
    mimi.set_num_codebooks(num_codebooks)
    return mimi.eval()


MIMI_FIX = "point {setting} at Mimi's weights file (moshi's tokenizer-e351c8d8-checkpoint125.safetensors), or unset it"
SAFETENSORS_SUFFIXES = (".safetensors", ".sft", ".sfts")  # moshi reads these as safetensors, anything else torch.load


def check_mimi(path: str | Path) -> Path:
    """`path` if it may hold Mimi's weights (a safetensors file so named, or a torch checkpoint); PathError saying
    what it is instead."""
    from assistant.hub import PathError

    file = Path(path).expanduser()
    if not file.exists():
        raise PathError("mimi", path, "no such file or folder", MIMI_FIX)
    if file.is_dir():
        inside = ", ".join(sorted(p.name for p in file.glob("*.safetensors"))[:3])
        fix = "point {setting} at the weights file in it (" + inside + "?)" if inside else MIMI_FIX
        raise PathError("mimi", path, "a folder, not a file", fix)
    kind = _weights_kind(file)
    if file.suffix in SAFETENSORS_SUFFIXES and kind != "safetensors":
        raise PathError("mimi", path, "named as a safetensors file, but it is not one", MIMI_FIX)
    if file.suffix not in SAFETENSORS_SUFFIXES and kind == "safetensors":
        raise PathError(
            "mimi",
            path,
            "a safetensors file without a .safetensors name: moshi would not read it as one",
            "rename it to end in .safetensors",
        )
    if file.suffix not in SAFETENSORS_SUFFIXES and kind != "torch":
        raise PathError("mimi", path, "not Mimi's weights: neither a safetensors file nor a torch checkpoint", MIMI_FIX)
    return file


def _weights_kind(file: Path) -> str | None:
    """What the file's first bytes say it is: "safetensors", "torch" (a zip or pickle, as torch.save writes), None."""
    with file.open("rb") as f:
        head = f.read(16)
    size = file.stat().st_size
    if len(head) >= 9 and 2 <= int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"):
        return "torch"
    return None


class MimiCodec:
    """Encode 24 kHz audio to codes `[K, frames]`; decode frames one at a time as they are generated."""

    def __init__(self, mimi: Any):
        self.mimi = mimi
        self.device = next(mimi.parameters()).device
        # A second module tree over the same weights stays in streaming mode for good: entering moshi's
        # streaming mode allocates its states (tens to hundreds of ms), resetting them takes a few ms, and
        # one-shot encode/decode on `mimi` itself must not see streaming state.
        self._streaming = self._streaming_copy(1)
        self._side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None  # overlapped decoding

    def _streaming_copy(self, rows: int) -> Any:
        """A module tree over `mimi`'s weights in streaming mode for `rows` streams at once."""
        shared = {id(t): t for t in (*self.mimi.parameters(), *self.mimi.buffers())}
        streaming = copy.deepcopy(self.mimi, memo=shared)
        with torch.inference_mode():
            streaming.streaming_forever(rows)
        return streaming

    def rows(self, rows: int, group: int) -> RowDecoder:
        """A decoder for `rows` streams at once, one frame of each per call, in groups of `group` rows (see
        `RowDecoder`)."""
        return RowDecoder(
            [self._streaming_copy(min(group, rows - start)) for start in range(0, rows, group)], self.device
        )

    @functools.cached_property
    def fingerprint(self) -> str:
        """Names this codec's weights (a hash of each tensor's name, shape and first values), so that codes saved
        from it are known as its own: codes from other weights would be another sound."""
        digest = hashlib.sha256(f"mimi {self.mimi.num_codebooks} codebooks".encode())
        with torch.inference_mode():
            for name, tensor in self.mimi.state_dict().items():
                digest.update(f"{name}{tuple(tensor.shape)}".encode())
                digest.update(tensor.reshape(-1)[:256].to("cpu", torch.float32).numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.inference_mode()
    def encode(self, audio: np.ndarray, sample_rate: int) -> torch.Tensor:
        """Codes `[K, frames]` (on the CPU) of mono audio at any sample rate."""
        audio = resample(np.asarray(audio, np.float32).reshape(-1), sample_rate, SAMPLE_RATE)
        pcm = torch.from_numpy(np.ascontiguousarray(audio)).to(self.device)[None, None]
        return self.mimi.encode(pcm)[0].cpu()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """One-shot decode of codes `[K, frames]` to float32 audio."""
        if codes.shape[-1] == 0:
            return np.zeros(0, np.float32)
        return self.mimi.decode(codes.to(self.device)[None])[0, 0].float().cpu().numpy()

    @contextmanager
    def stream(self, overlap: bool = True) -> Iterator[FrameDecoder]:
        """Within this context, `decoder.submit(codes [K])` starts turning a frame into its 1920 samples.

        On CUDA with `overlap`, the decoding runs on a second stream, beside whatever the caller queues next, until
        `result()` is asked for; otherwise `submit` decodes at once (on a CPU a decoding thread would contend with
        the model for the GIL). The audio is the same either way. One stream at a time (the engine sees to that);
        each starts from a fresh decoder state.
        """
        if overlap and self._side is not None:
            decoder: FrameDecoder = _SideStream(self._decode_frame_on_device, self._side)
        else:
            decoder = _AtOnce(self._decode_frame)
        with torch.inference_mode():
            self._streaming.reset_streaming()
        try:
            yield decoder
        finally:
            decoder.drain()

    def _decode_frame_on_device(self, codes: torch.Tensor) -> torch.Tensor:
        # Always one frame per call: on CUDA moshi graphs its streaming calls, which needs a fixed shape.
        with torch.inference_mode():
            return self._streaming.decode(codes.to(self.device).view(1, -1, 1))[0, 0]

    def _decode_frame(self, codes: torch.Tensor) -> np.ndarray:
        return self._decode_frame_on_device(codes).float().cpu().numpy()


class RowDecoder:
    """Mimi's streaming decode for a fixed number of rows, each its own stream (moshi keeps per-row state):
    `decode(codes [rows, K], rows)` turns one frame of each row in the mask `rows` into `[rows, 1920]` samples;
    the other rows' states do not move. `restart(row)` gives a row a fresh state, for a new stream. A row's audio
    equals its stream decoded alone.

    The rows are split into groups, one moshi module each, and a group with no row to decode is skipped: a batch
    costs about what its rows do, not what all of them would (on a CPU, 16 rows of Mimi cost 5.5 times one row).
    """

    def __init__(self, groups: list[Any], device: torch.device):
        self._groups = groups
        self._sizes = [g._streaming_state.batch_size for g in groups]
        self._fresh = torch.zeros(sum(self._sizes), dtype=torch.bool)
        self._device = device

    def restart(self, row: int) -> None:
        self._fresh[row] = True

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
        audio = np.zeros((len(rows), FRAME_SAMPLES), np.float32)
        start = 0
        for group, size in zip(self._groups, self._sizes):
            here = slice(start, start + size)
            start += size
            if not rows[here].any():
                continue
            if self._fresh[here].any():
                group.reset_streaming(self._fresh[here].to(self._device))
                self._fresh[here] = False
            group.set_exec_mask(rows[here].to(self._device))
            audio[here] = group.decode(codes[here].to(self._device)[:, :, None])[:, 0].float().cpu().numpy()
        return audio


class Decoded(Protocol):
    def result(self) -> np.ndarray: ...


class FrameDecoder(Protocol):
    def submit(self, codes: torch.Tensor) -> Decoded: ...

    def drain(self) -> None:
        """Wait until no submitted frame is still being decoded."""


class _AtOnce:
    """Decodes each frame when it is submitted."""

    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray]):
        self._decode = decode

    def submit(self, codes: torch.Tensor) -> Decoded:
        done: Future[np.ndarray] = Future()
        done.set_result(self._decode(codes))
        return done

    def drain(self) -> None:
        pass


class _SideStream:
    """Decodes on a second CUDA stream, beside the model's next frame on the current one.

    A submitted frame's codes must be complete, as they are once the host has read them (the engine checks each
    frame for the end frame first): the side stream does not wait for the current one, which by then holds the
    next frame's work.
    """

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], side: torch.cuda.Stream):
        self._decode_on_device = decode
        self._side = side
        self._last: torch.cuda.Event | None = None

    def submit(self, codes: torch.Tensor) -> Decoded:
        with torch.cuda.stream(self._side):
            pcm = self._decode_on_device(codes)  # moshi's static output: copied out before the next frame's decode
            host = torch.empty(pcm.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(pcm.float(), non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._side)
        self._last = done
        return _OnDevice(done, host, codes)

    def drain(self) -> None:
        if self._last is not None:
            self._last.synchronize()


@dataclass
class _OnDevice:
    done: torch.cuda.Event
    host: torch.Tensor
    codes: torch.Tensor  # kept alive until the side stream has read it

    def result(self) -> np.ndarray:
        self.done.synchronize()
        return self.host.numpy().copy()
