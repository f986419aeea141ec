"""What a new user's first hour costs: the README's quick start, run verbatim in a brand-new virtual environment.

    python benchmarks/first_hour.py [--no-tests] [--sensitivity] [--keep DIR] [--publish docs/results/first-hour.md]

Runs the two blocks of the README's Quick start (benchmarks/readme_blocks.py; ``.venv`` replaced by a new
temporary folder) one after the other, as a user would, and measures:

- block 1 (venv, ``pip install ... -e ".[sim]"``, ``python -m sim.explore``): wall s of the whole block, the
  study's own wall s as it prints it ("N runs in X s"), so set-up s = block s - study s; the venv's size (MiB);
- with ``--sensitivity``: ``python -m sim.explore --sensitivity`` in that venv, wall s;
- block 2 (the tests' set-up, ``python -m pytest -q``): wall s and pytest's closing line.

Prints a table and, with ``--publish``, writes it as a results page with its provenance (offload/provenance.py).
A block that fails ends the benchmark with exit 1 and its output's tail: a README that does not run on a new
machine is the first thing this measures. Run it on a quiet machine: the page records the load it ran under.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from benchmarks.readme_blocks import in_venv, quick_start_blocks  # noqa: E402
from offload import provenance  # noqa: E402
from offload.errors import TideError, run_cli  # noqa: E402


def run_block(name: str, block: str, timeout_s: float) -> tuple[float, str]:
    """Run ``block`` with bash from the repository root; (wall s, combined output). A failure is a TideError."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + block], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        raise TideError(f"{name}: still running after {timeout_s:.0f} s") from None
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = " | ".join(out.strip().splitlines()[-5:])
        raise TideError(f"{name} failed (exit {proc.returncode}) after {wall:.0f} s: {tail}")
    return wall, out


def _du_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def _study_seconds(out: str) -> float:
    m = re.findall(r"(\d+) runs in ([0-9.]+) s", out)
    if not m:
        raise TideError("the main job did not print its 'N runs in X s' line")
    return float(m[-1][1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/first_hour.py", description=__doc__.splitlines()[0])
    ap.add_argument("--no-tests", action="store_true", help="skip block 2 (the tests)")
    ap.add_argument("--sensitivity", action="store_true", help="also time `python -m sim.explore --sensitivity`")
    ap.add_argument(
        "--keep",
        default=None,
        metavar="DIR",
        help="make the venv here and keep it (default: a temporary folder, removed afterwards)",
    )
    ap.add_argument("--publish", default=None, metavar="PAGE.md", help="write the table as a results page")
    a = ap.parse_args(argv)
    began = provenance.start("python benchmarks/first_hour.py", argv)
    main_block, test_block = quick_start_blocks()
    venv = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="tide-first-hour-"))
    if a.keep and venv.exists() and any(venv.iterdir()):
        raise TideError(f"--keep {venv}: not empty (a fresh venv is the point)")
    rows: list[tuple[str, str, str]] = []
    try:
        wall, out = run_block("quick start, main job", in_venv(main_block, venv), 3600)
        study = _study_seconds(out)
        rows += [
            ("main job block: venv + pip + `python -m sim.explore`", f"{wall:.0f}", ""),
            (
                "  of which the study (as it prints it)",
                f"{study:.0f}",
                next((ln for ln in out.splitlines() if ln.startswith("recommended:")), ""),
            ),
            ("  of which set-up (venv + pip)", f"{wall - study:.0f}", f"venv {_du_mib(venv):.0f} MiB"),
        ]
        if a.sensitivity:
            with tempfile.TemporaryDirectory() as runs:
                cmd = f". {venv}/bin/activate && python -m sim.explore --sensitivity --quiet --no-report --out {runs}/s"
                wall, out = run_block("sensitivity", cmd, 3600)
            rows.append(("`python -m sim.explore --sensitivity`", f"{wall:.0f}", ""))
        if not a.no_tests:
            wall, out = run_block("quick start, tests", in_venv(test_block, venv), 3600)
            closing = next((ln for ln in reversed(out.splitlines()) if re.search(r"\d+ passed", ln)), "")
            rows.append(("tests block: pip + `python -m pytest -q`", f"{wall:.0f}", closing.strip("= ")))
    finally:
        if not a.keep:
            shutil.rmtree(venv, ignore_errors=True)
    table = "\n".join(
        ["| step | wall s | what it printed |", "|---|---|---|", *(f"| {s} | {w} | {p} |" for s, w, p in rows)]
    )
    print(table)
    if a.publish:
        note = (
            "The README's two Quick start blocks run verbatim, one after the other, in a new virtual "
            "environment (`.venv` replaced by a temporary folder), as `.ci/run` runs them. Package downloads "
            "come from the machine's package index; wall times include the load recorded above."
        )
        provenance.write_page(a.publish, "A new user's first hour", table, began, note)
        print(f"wrote {a.publish}")
    return 0


if __name__ == "__main__":
    run_cli(main)
