"""`python -m assistant.tts.server`: check the arguments (one line and exit 2 when wrong), load CSM, serve until
SIGTERM or Ctrl-C, drain, exit 0."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from assistant.hub import is_hub_id

from .service import Engine, Settings, SpeechService

if TYPE_CHECKING:
    from assistant.tts.csm.batched_engine import BatchedCSMEngine

log = logging.getLogger("assistant.tts.server")

EXIT_USAGE, EXIT_FAILURE = 2, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage block."""
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _count(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m assistant.tts.server", description="CSM as an OpenAI-compatible speech server.")
    parser.add_argument("--model", required=True, help="CSM checkpoint folder or hub id (e.g. sesame/csm-1b)")
    parser.add_argument("--mimi", help="Mimi weights file (default: moshi's default repository)")
    parser.add_argument("--tokenizer", help="tokenizer.json (default: the one in the model folder)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="auto: bfloat16 on CUDA, float32 on the CPU",
    )
    parser.add_argument(
        "--slots",
        type=_count(1),
        default=16,
        help="streams generated at once, each in its own slot of the batch (more wait in line)",
    )
    parser.add_argument(
        "--topk-cap",
        type=_count(1),
        default=100,
        help="the largest topk a request may ask for (the batch samples every row from this many)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=_count(0), default=8000)
    parser.add_argument(
        "--api-key-env",
        metavar="NAME",
        help="environment variable holding the API key requests must bear (default: no key)",
    )
    parser.add_argument("--max-input-chars", type=_count(1), default=4096, help="longer input is refused (413)")
    parser.add_argument(
        "--max-queue", type=_count(0), default=64, help="requests that may wait for a free slot; beyond that 429"
    )
    parser.add_argument(
        "--drain-s",
        type=float,
        default=10.0,
        help="on SIGTERM/Ctrl-C, how long open streams may run on before they are cancelled",
    )
    parser.add_argument(
        "--cors-origins",
        metavar="ORIGINS",
        default="",
        help="comma-separated origins a browser page may call the server from ('*': any; default: none, no CORS)",
    )
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"), default="INFO")
    return parser


def check(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, as one line (None: nothing), before anything loads."""
    model = Path(args.model).expanduser()
    if not model.is_dir() and not is_hub_id(args.model):
        return f"--model {args.model}: no such folder, and not a hub id like sesame/csm-1b"
    if args.tokenizer is not None and not Path(args.tokenizer).expanduser().is_file():
        return f"--tokenizer {args.tokenizer}: no such file"
    if args.tokenizer is None and model.is_dir() and not (model / "tokenizer.json").is_file():
        return f"--model {args.model}: the folder has no tokenizer.json; name one with --tokenizer"
    if args.mimi is not None and not Path(args.mimi).expanduser().is_file():
        return f"--mimi {args.mimi}: no such file"
    if args.port > 65535:
        return f"--port {args.port}: must be at most 65535"
    if args.api_key_env is not None and not os.environ.get(args.api_key_env):
        return f"--api-key-env {args.api_key_env}: ${args.api_key_env} is not set (the API key goes there)"
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "--device cuda: no CUDA device is available here"
    return None


class EngineLoadError(RuntimeError):
    """The engine could not be loaded; the message names the model and the cause."""


class FlagError(RuntimeError):
    """What `--model`, `--mimi` or `--tokenizer` names cannot be read; the message starts with the flag."""


SETTINGS_AS_FLAGS = {
    **{"csm.model": "--model", "csm.mimi": "--mimi", "csm.tokenizer": "--tokenizer"},
    **{"mimi=": "--mimi", "tokenizer=": "--tokenizer"},  # the engine's own arguments
}
"""The assistant's settings (and the engine's arguments) the loaders' messages name, and the server's flags that
stand for them."""


@contextmanager
def _reading(flag: str, value: object) -> Iterator[None]:
    """A failure inside is a FlagError, one line in the server's own terms: `FLAG VALUE: what is wrong`."""
    try:
        yield
    except Exception as error:
        argument, named = getattr(error, "argument", None), getattr(error, "named", None)
        if isinstance(argument, str) and callable(named):  # assistant.hub.PathError: which path, and what is wrong
            raise FlagError(" ".join(str(named(f"--{argument}")).split())) from None
        message = " ".join(str(error).split()) or type(error).__name__
        for setting, name in SETTINGS_AS_FLAGS.items():
            message = re.sub(rf"(?<![\w.-]){re.escape(setting)}(?!\w|\.\w)", name, message)
        raise FlagError(f"{flag} {value}: {message}") from None


def load_engine(args: argparse.Namespace) -> BatchedCSMEngine:
    """The engine the server runs: `BatchedCSMEngine`, `args.slots` streams at once (CUDA graphs on a GPU). What
    `--model`, `--tokenizer` and `--mimi` name is read first, a failure a FlagError naming the flag."""
    import torch

    from assistant.tts.csm.batched_engine import BatchedCSMEngine
    from assistant.tts.csm.codec import load_mimi
    from assistant.tts.csm.engine import pretrained

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    with _reading("--model", args.model):
        config, weights, tokenizer = pretrained(args.model, args.tokenizer)
    with _reading("--mimi", args.mimi or "(moshi's default Mimi)"):
        mimi = load_mimi(args.mimi, config.num_codebooks, device)
    return BatchedCSMEngine.from_weights(
        config, weights, mimi, tokenizer, device=device, dtype=dtype, slots=args.slots, topk_cap=args.topk_cap
    )


def served_name(model: str) -> str:
    """The model's id for clients: a hub id as it is, a folder by its name."""
    path = Path(model).expanduser()
    return path.resolve().name if path.is_dir() else model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (problem := check(args)) is not None:
        print(f"speech server: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from assistant.logs import setup_logging

    setup_logging(args.log_level)
    settings = Settings(
        model_id=served_name(args.model),
        host=args.host,
        port=args.port,
        api_key=os.environ[args.api_key_env] if args.api_key_env else None,
        max_input_chars=args.max_input_chars,
        max_queue=args.max_queue,
        drain_s=args.drain_s,
        cors_origins=tuple(origin.strip().rstrip("/") for origin in args.cors_origins.split(",") if origin.strip()),
    )
    from .serve import ListenError, serve

    loaded: list[BatchedCSMEngine] = []

    def load() -> Engine:
        try:
            loaded.append(load_engine(args))
            return loaded[0]
        except FlagError:
            raise
        except Exception as error:  # torch, or the engine's warm-up: one line, not a traceback
            cause = f"{type(error).__name__}: {error}"
            raise EngineLoadError(f"cannot load the CSM speech model {args.model!r}: {cause}") from None

    async def run() -> None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        try:
            await serve(SpeechService(settings), load, stop)
        finally:
            for engine in loaded:  # its frame loop's thread
                await asyncio.to_thread(engine.close)

    try:
        asyncio.run(run())
    except FlagError as error:  # as a bad argument: one line, exit status 2
        print(f"speech server: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (ListenError, EngineLoadError) as error:
        log.error("%s", error)
        return EXIT_FAILURE
    return 0
