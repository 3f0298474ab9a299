"""User-facing errors: one clear line and a non-zero exit instead of a traceback."""

from __future__ import annotations

import functools
import sys
from typing import Callable

# Exit status for a mistake the user can fix (bad config, missing file, ...). argparse uses 2 as well.
USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake in the user's input; its message is shown as one line, without a traceback."""


def cli_main(fn: Callable[[], object]) -> Callable[[], None]:
    """Wrap a script's main(): a UserError becomes `error: <message>` on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper() -> None:
        try:
            fn()
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT)

    return wrapper
