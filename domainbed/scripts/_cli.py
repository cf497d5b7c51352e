"""What every command does with errors: one line, naming the problem and the fix, exit code 2."""

from __future__ import annotations

import sys
from typing import Callable, NoReturn


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_main(main: Callable[[], object], expected: tuple[type[BaseException], ...]) -> None:
    """Call ``main``; turn the errors a user can cause into one-line messages."""
    try:
        main()
    except expected as error:
        fail(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    except KeyboardInterrupt as interruption:
        code = 143 if type(interruption).__name__ == "RunTerminated" else 130  # 128 + SIGTERM / SIGINT
        fail(str(interruption) or "interrupted; run the same command again to resume from the last checkpoint",
             code=code)


def add_checkpoint_arguments(parser, help: str = "a model.pkl") -> None:
    """The flags of every command that reads a trained model."""
    parser.add_argument("--checkpoint", required=True, help=help)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--allow_unsafe_pickle", action="store_true",
                        help="allow full unpickling (runs code stored in the file: trusted files only)")


def load_checkpoint_from_args(args):
    """(algorithm, device) for the flags of ``add_checkpoint_arguments``."""
    from ..checkpoints import load_checkpoint
    from ..run.distributed import DistEnv, pick_device

    device = pick_device(args.device, DistEnv())
    return load_checkpoint(args.checkpoint, device, args.allow_unsafe_pickle), device
