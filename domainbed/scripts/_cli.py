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
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume from the last checkpoint", code=130)
