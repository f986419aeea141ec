"""validate.calibrate writes as it goes: a run stopped after any table leaves everything measured so far.

Three ways to stop a run: an exception from the ``on_save`` hook after a chosen table (deterministic, every
intermediate file inspected), a real SIGKILL of the CLI (what ``timeout`` does in gpu_validate.sh; also
checks that the log was flushed) and ``--deadline-seconds``.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.errors import TideError
from offload.hardware import HardwareProfile
from validate.calibrate import PARTIAL_FORMAT, REQUIRED, calibrate, parse_args, partial_path

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--device", "cpu", "--quick", "--threads", "1"]


class _Killed(Exception):
    """Stands in for the outer kill."""


def _state(out: Path) -> dict:
    """What a reader finds on disk now: which files exist, what they say, whether the profile loads."""
    part = partial_path(out)
    state = {"out": out.exists(), "partial": part.exists()}
    path = out if out.exists() else part
    d = json.loads(path.read_text())
    state.update(format=d.get("format"), tables=sorted(d["tables"]), cal=d["calibration"])
    try:
        HardwareProfile.load(path)
        state["load_error"] = None
    except TideError as exc:
        state["load_error"] = str(exc)
    return state


def test_partial_path():
    assert partial_path(Path("o/profile.json")) == Path("o/profile.partial.json")
    assert partial_path(Path("o/profile")) == Path("o/profile.partial.json")


def test_a_stopped_run_leaves_the_tables_so_far(tmp_path):
    out = tmp_path / "profile.json"
    out.write_text('{"stale": "from an earlier run"}')
    seen: list[tuple[str, Path, dict]] = []

    def hook(name: str, path: Path) -> None:
        seen.append((name, path, _state(out)))
        if name == "attention":  # the first table after the profile became loadable
            raise _Killed

    with pytest.raises(_Killed):
        calibrate(parse_args([*QUICK, "--out", str(out)]), on_save=hook)

    names = [n for n, _, _ in seen]
    assert names == [*REQUIRED, "step", "attention"]  # the tables a profile needs come first
    for i, (name, path, st) in enumerate(seen):
        assert st["out"] != st["partial"], name  # exactly one file, and the stale profile is gone from the start
        assert st["cal"]["complete"] is False and st["cal"]["tables_done"] == names[: i + 1]
        assert st["tables"] == sorted(n for n in names[: i + 1] if n != "step")
        if i < len(REQUIRED):  # the step overhead is still missing: a partial record, refused in one line
            assert path == partial_path(out) and st["partial"] and st["format"] == PARTIAL_FORMAT
            assert "incomplete-calibration" in st["load_error"] and "\n" not in st["load_error"]
        else:
            assert path == out and st["out"] and st["load_error"] is None
    final = _state(out)
    assert final == seen[-1][2]  # the kill left exactly the last write
    hw = HardwareProfile.load(out)
    assert "attention" in hw.tables and hw.calibration["step_overhead"]["step_overhead_s"] >= 0
    assert hw.calibration["timing"]["host_flush_bytes"] > 0


def test_deadline_before_the_required_tables_is_an_error(tmp_path):
    out = tmp_path / "profile.json"
    with pytest.raises(TideError, match="incomplete calibration") as exc:
        calibrate(parse_args([*QUICK, "--out", str(out), "--deadline-seconds", "1e-9"]))
    assert "\n" not in str(exc.value) and not out.exists()
    cal = json.loads(partial_path(out).read_text())["calibration"]
    assert cal["complete"] is False and cal["tables_done"] == [] and cal["deadline_cut"][: len(REQUIRED)] == list(REQUIRED)


def test_sigkill_keeps_the_profile_and_the_log(tmp_path):
    """The CLI killed as ``timeout -s KILL`` would: the log has every line up to the last write, the file is
    complete so far. Not --quick, so the run is still busy when the first write appears."""
    out, log = tmp_path / "profile.json", tmp_path / "calibrate.log"
    # without PYTHONUNBUFFERED, as under gpu_validate.sh: stdout to a file is block-buffered unless flushed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(ROOT)}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "validate.calibrate", "--device", "cpu", "--threads", "1",
                                 "--out", str(out)], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        t0 = time.monotonic()
        while not (out.exists() or partial_path(out).exists()):
            assert proc.poll() is None and time.monotonic() - t0 < 60, log.read_text()
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    st = _state(out)
    done = st["cal"]["tables_done"]
    assert done and st["cal"]["complete"] is False
    text = log.read_text()
    assert text.startswith("calibrating ")
    for name in done:  # each table's line was printed (and flushed) before its write
        assert f"  {name} " in text, (name, text)
