"""issue 12's loop, as a user runs it on the tiny model with no other flags: explore recommends, the runtime
executes the policy file (its model, hardware, budget and mode), compare replays the run with equal counters."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("simpy", exc_type=ImportError)
pytest.importorskip("plotly", exc_type=ImportError)

from conftest import ROOT


def _run(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_explore_generate_compare(tmp_path):
    p = _run("sim.explore", "--model", "llada2-tiny", "--gen-length", "128", "--out", "R", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    choice = json.loads((tmp_path / "R" / "recommended-policy.json").read_text())
    assert choice["model_source"] == "llada2-tiny" and choice["hardware_source"] == "h100-pcie5"
    p = _run("runtime.generate", "--policy", "R/recommended-policy.json", "--trace-out", "T.npz", "--metrics-out",
             "M.json", "--quiet", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "wrote trace T.npz" in p.stdout and "wrote metrics M.json" in p.stdout
    m = json.loads((tmp_path / "M.json").read_text())
    assert m["model"] == "llada2-tiny" and m["budget"] == choice["budget"]["experts_per_layer"]
    assert m["mode"] == choice["mode"] and m["policy"] == choice["policy"]
    p = _run("validate.compare", "M.json", "T.npz", "--out", "C", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "not a validation of this machine" in p.stdout  # no calibrated profile: said, not hidden
    rows = json.loads((tmp_path / "C" / "compare.json").read_text())["runs"]
    assert len(rows) == 1 and not rows[0]["counter_mismatch"]


def test_a_policy_file_for_another_model_is_refused(tmp_path):
    p = _run("sim.explore", "--model", "llada2-tiny", "--gen-length", "64", "--seeds", "1", "--policies", "tide",
             "--tau", "2", "--out", "R", "--quiet", "--no-report", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    p = _run("runtime.generate", "--policy", "R/recommended-policy.json", "--model", "llada2-tiny", "--num-layers",
             "3", "--quiet", cwd=tmp_path)
    assert p.returncode == 2 and "the policy file was made for llada2-tiny" in p.stderr and "\n" not in p.stderr.strip()
