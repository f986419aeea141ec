"""Atomic file writes: a temporary file beside the target, written, fsync'ed and renamed over it, so a crash
never leaves a half-written file (the rename is atomic on POSIX file systems).

A write that the file system refuses is a one-line :class:`TideError` naming the destination and the cause
(``cannot write out/x.json: it is a directory``), never the temporary file's name, which the user did not give
and which is gone by the time the message is read. A missing folder is created."""
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any

from offload.errors import TideError


def atomic_write_bytes(path: str | Path, writer: Any) -> None:
    """Call ``writer(fileobj)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    # refused before anything is written: the rename would fail only after the whole (maybe large) file
    if path.is_dir():
        raise TideError(f"cannot write {path}: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _write_error(path, exc, creating=True) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask)
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        # the file system's own refusals (full disk, a directory put in the way meanwhile, ...) name the
        # destination; anything else (the writer's own errors, an interrupt) passes through unchanged
        if isinstance(exc, OSError) and getattr(exc, "filename", None) in (None, tmp, str(path)):
            raise _write_error(path, exc) from None
        raise


def _write_error(path: Path, exc: OSError, creating: bool = False) -> TideError:
    """The one-line message for a refused write of ``path`` (``creating``: while creating its folder)."""
    if isinstance(exc, IsADirectoryError) or (exc.errno == errno.EISDIR):
        return TideError(f"cannot write {path}: it is a directory")
    if isinstance(exc, (NotADirectoryError, FileExistsError)):  # mkdir met a file where a folder must be
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return TideError(f"cannot write {path}: {blocker} is a file, not a directory")
    if isinstance(exc, PermissionError):
        return TideError(f"cannot write {path}: permission denied")
    cause = (exc.strerror or str(exc)).replace("\n", " ")
    cause = cause[:1].lower() + cause[1:]
    if creating:
        return TideError(f"cannot write {path}: cannot create its folder {path.parent} ({cause})")
    return TideError(f"cannot write {path}: {cause}")


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask is a set-and-restore)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
