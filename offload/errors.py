"""One error type for bad input, and the CLI wrapper that turns it into a one-line message.

Every user-facing failure that is the input's fault (unknown preset, malformed file, budget that does not
fit, ...) raises :class:`TideError` with a message that names the problem. Command-line entry points run
through :func:`run_cli`, which prints ``error: <message>`` on one line and exits with status 2.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn, Sequence


class TideError(ValueError):
    """Bad input: the message names what is wrong, in one line."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``main(argv)``; a TideError (or an unreadable file) becomes ``error: ...`` and exit status 2."""
    try:
        code = main(argv)
    except TideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # unreadable or unwritable file: name it, no traceback
        name = getattr(exc, "filename", None)
        where = f" {name}" if name else ""
        print(f"error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
