"""Published results pages: a table in docs/ is written by the command that measured it, never typed.

``--publish PATH`` on a measuring command (``sim.explore``, ``sim.synthetic_check``,
``validate.compare``, ``benchmarks/first_hour.py``) writes PATH as a markdown page: a title, the provenance
below, then the command's own table. Rerunning the command refreshes the page.

Provenance (what a reader needs to judge a figure):
- command: the exact command line (``python -m MODULE ARGS``), so the page can be rewritten;
- date: UTC start time; wall: seconds from start to publication;
- commit: ``git rev-parse --short HEAD`` of the checkout the code ran from, with "+ uncommitted changes" when
  ``git status --porcelain`` lists tracked files changed (a figure from unreleased code says so);
- machine: CPU model, logical cores, memory (GiB), Python, numpy (and torch when loaded);
- load: the 1-minute load average at start and at end per core, and this process's CPU share
  ``(user + system CPU s of the process and its children) / (wall s x cores)``: a figure measured on a busy
  machine says so.
Writes are atomic (offload.atomic_io)."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from offload.atomic_io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Start:
    """What is captured when a measuring command starts."""

    command: str
    date_utc: str
    wall0: float
    cpu0: float
    load0: float


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not on every platform
        return float("nan")


def start(prog: str, argv: Sequence[str] | None = None) -> Start:
    """Capture the start of ``prog`` (as a user types it: ``python -m sim.explore``) run with ``argv`` (None: this
    process's own arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return Start(
        command=shlex.join([*shlex.split(prog), *args]),
        date_utc=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        wall0=time.perf_counter(),
        cpu0=_cpu_seconds(),
        load0=_load(),
    )


def commit() -> str:
    """Short commit of the checkout this code runs from, marked when tracked files are changed."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return sha + (" + uncommitted changes" if dirty else "")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        mem = "memory unknown"
    import numpy

    libs = [f"Python {platform.python_version()}", f"numpy {numpy.__version__}"]
    if "torch" in sys.modules:  # only when the command used it: importing torch here would cost seconds
        libs.append(f"torch {sys.modules['torch'].__version__}")
    return f"{cpu}, {os.cpu_count()} logical cores, {mem}; {', '.join(libs)}"


def provenance_lines(s: Start) -> list[str]:
    wall = time.perf_counter() - s.wall0
    cores = os.cpu_count() or 1
    share = (_cpu_seconds() - s.cpu0) / max(wall, 1e-9) / cores
    load1 = _load()
    return [
        f"- command: `{s.command}`",
        f"- date: {s.date_utc}; wall {wall:.1f} s",
        f"- commit: {commit()}",
        f"- machine: {machine()}",
        f"- load: 1-min load average {s.load0 / cores:.2f} per core at start, {load1 / cores:.2f} at end; "
        f"this command's CPU share {share:.2f} of {cores} cores",
    ]


def write_page(path: str | Path, title: str, body_md: str, s: Start, note: str = "") -> Path:
    """Write the results page ``path``: title, provenance, an optional note, then the command's table."""
    parts = [
        f"# {title}",
        "",
        "Written by the command below; rerun it to refresh this page (do not edit by hand).",
        "",
        *provenance_lines(s),
        "",
    ]
    if note:
        parts += [note.strip(), ""]
    parts += [body_md.strip(), ""]
    path = Path(path)
    atomic_write_text(path, "\n".join(parts))
    return path
