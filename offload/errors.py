"""One error type for bad input, and the CLI wrapper that turns it into a one-line message.

Every user-facing failure that is the input's fault (unknown preset, malformed file, budget that does not
fit, ...) raises :class:`TideError` with a message that names the problem. Command-line entry points run
through :func:`run_cli`, which prints ``error: <message>`` on one line and exits with status 2. A reader that
closes stdout early (``... | head``) ends the command quietly with status 0: the output was wanted only in part.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, NoReturn, Sequence


class TideError(ValueError):
    """Bad input: the message names what is wrong, in one line."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``main(argv)``; a TideError (or an unreadable file) becomes ``error: ...`` and exit status 2; a
    closed stdout (the reader of a pipe has gone) ends with status 0 and no message."""
    try:
        code = main(argv)
        # flushed here, not at interpreter exit: a pipe closed after the last print must be caught below too
        if sys.stdout is not None:
            sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():
            _report_os_error(sys.exc_info()[1])  # a pipe of the program's own (a subprocess), not stdout
        _silence_stdout()
        sys.exit(0)
    except TideError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # unreadable or unwritable file: name it, no traceback
        _report_os_error(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _report_os_error(exc: BaseException | None) -> NoReturn:
    name = getattr(exc, "filename", None)
    where = f" {name}" if name else ""
    print(f"error: cannot access{where}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
    sys.exit(2)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports an error on it). Where that cannot
    be told (no poll, stdout replaced by an object without a descriptor), a broken pipe is taken to be stdout's:
    it is by far the usual one."""
    try:
        import select

        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        events = poller.poll(0)
    except (AttributeError, OSError, ValueError):
        return True
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in events)


def _silence_stdout() -> None:
    """Point stdout's descriptor at /dev/null: Python flushes stdout again at exit, and that flush would fail on
    the closed pipe with an 'Exception ignored ... BrokenPipeError' message and status 120."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass
