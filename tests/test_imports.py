"""The GPU machines have torch (and numpy) but not simpy, plotly, scipy, tqdm, safetensors or transformers:
policies, model spec, traces and the random-weight runtime must import and run there, and the gpu-marked
tests must be collected there."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKED = ("simpy", "plotly", "scipy", "tqdm", "safetensors", "transformers")
REPO = Path(__file__).resolve().parents[1]
# gpu-marked tests when this test was written: 15 in tests/runtime/test_expert_store.py, 13 in
# tests/runtime/test_store_streams.py; more may be added
KNOWN_GPU_TESTS = 28


def test_runtime_runs_with_torch_only(tmp_path, import_blocker):
    code = import_blocker(BLOCKED) + textwrap.dedent(f"""
        import offload.policies, offload.model_spec, offload.hardware, offload.cost, offload.budget, offload.trace_io, offload.trace_check
        sys.argv = ["runtime.bench", "--threads", "1", "--gen-length", "8", "--block-length", "8",
                    "--prompt-length", "8", "--policies", "all-gpu", "tide(tau=2)", "--modes", "block-cache",
                    "--out", {str(tmp_path)!r}]
        import runpy
        runpy.run_module("runtime.bench", run_name="__main__")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tide(tau=2)" in proc.stdout
    assert (tmp_path / "runtime_results.json").is_file() and (tmp_path / "runtime_traces.tar").is_file()


def _collect_gpu(paths: list[str], bootstrap: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    """``pytest -m gpu --collect-only -q PATHS`` in a fresh interpreter that first runs ``bootstrap``; returns
    the process and the node ids it listed."""
    args = ["-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider", *paths]
    code = bootstrap + f"\nimport pytest\nraise SystemExit(pytest.main({args!r}))\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    return proc, [line for line in proc.stdout.splitlines() if "::" in line]


def test_gpu_tests_collect_with_torch_only(import_blocker):
    """``python3 -m pytest -m gpu`` collects every gpu-marked test without simpy, plotly, scipy, ...: the GPU
    machine has torch + numpy only. Test modules that need the simulator skip themselves there
    (``pytest.importorskip``); the GPU ones import it only inside the tests that replay through it."""
    full, gpu_ids = _collect_gpu(["tests/"])
    assert full.returncode == 0, full.stdout[-3000:] + full.stderr[-2000:]
    assert len(gpu_ids) >= KNOWN_GPU_TESTS, full.stdout[-3000:]
    blocked, blocked_ids = _collect_gpu(["tests/"], import_blocker(BLOCKED))
    assert blocked.returncode == 0, blocked.stdout[-3000:] + blocked.stderr[-2000:]
    assert not re.search(r"\b\d+ errors?\b", blocked.stdout), blocked.stdout[-3000:]
    assert blocked_ids == gpu_ids


def test_calibration_measures_decide_times_with_torch_only(import_blocker):
    """validate.calibrate and its decide() step (validate.bench_decide, offload.step) import and run
    without simpy or scipy: tide-opt then solves its tau on the grid."""
    code = import_blocker(BLOCKED) + textwrap.dedent("""
        import numpy as np
        import validate.calibrate
        from offload.cost import RooflineCostModel
        from offload.hardware import HardwareProfile
        from offload.model_spec import ModelSpec
        from offload.policies import make_policy
        from offload.step import RunShape, Stepper
        from validate.bench_decide import decide_table, routing
        spec = ModelSpec.load("llada2-tiny")
        cost = RooflineCostModel(spec, HardwareProfile.load("h100-pcie5"))
        table = decide_table(spec, cost)
        assert all(v > 0 for v in table.values()) and "tide-opt" in table, table
        counts, steps = routing(spec.num_moe_layers, spec.num_experts, spec.top_k)
        L, E = spec.num_moe_layers, spec.num_experts
        shape = RunShape(L, E, spec.top_k, spec.expert_bytes, spec.token_bytes, 32, "prefix-recompute")
        pol = make_policy("tide-opt")
        Stepper(pol, E // 2, shape, cost=cost).run(counts, steps)
        print("solver", pol.report()["solver"])
        assert not any(m in sys.modules for m in ("simpy", "scipy"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "solver grid" in proc.stdout
