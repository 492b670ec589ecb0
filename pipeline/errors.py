"""User-facing failures: one readable paragraph and a non-zero exit, never a traceback."""
from __future__ import annotations

import functools
import sys
import textwrap
from typing import Callable

# Exit codes shared by every stage; retrain maps its own outcomes on top of these.
EXIT_USER_ERROR = 2


class PipelineError(Exception):
    """A failure the user can fix (bad params, bad data, unreachable source).

    The message is shown as one paragraph; tracebacks are kept for bugs.
    """


def cli(fn: Callable[[], None]) -> Callable[[], None]:
    """Wrap a stage's ``main()`` so a PipelineError prints one paragraph and exits 2."""

    @functools.wraps(fn)
    def wrapper() -> None:
        try:
            fn()
        except PipelineError as err:
            main_spec = getattr(sys.modules["__main__"], "__spec__", None)
            name = (main_spec.name if main_spec else fn.__module__).rsplit(".", 1)[-1]
            paragraph = " ".join(str(err).split())
            print(
                # Breaking at hyphens or inside long words would corrupt paths and URLs.
                "\n" + textwrap.fill(f"ERROR [{name}]: {paragraph}", width=100,
                                     break_on_hyphens=False, break_long_words=False) + "\n",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt:
            print("\ninterrupted: outputs written so far are complete, nothing partial was kept",
                  file=sys.stderr)
            sys.exit(130)

    return wrapper
