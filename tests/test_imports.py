"""The GPU machines have torch (and numpy) but not simpy, plotly, scipy, tqdm, safetensors or transformers:
policies, model spec, traces and the random-weight runtime must import and run there."""
from __future__ import annotations

import subprocess
import sys
import textwrap

BLOCKED = ("simpy", "plotly", "scipy", "tqdm", "safetensors", "transformers")


def test_runtime_runs_with_torch_only(tmp_path, import_blocker):
    code = import_blocker(BLOCKED) + textwrap.dedent(f"""
        import sim.policies, sim.model_spec, sim.hardware, sim.cost, sim.budget, traces.io, traces.validate
        sys.argv = ["runtime_policies", "--threads", "1", "--gen-length", "8", "--block-length", "8",
                    "--prompt-length", "8", "--policies", "all-gpu", "tide:2", "--modes", "block-cache",
                    "--out-dir", {str(tmp_path)!r}]
        import runpy
        runpy.run_path("benchmarks/runtime_policies.py", run_name="__main__")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tide(tau=2)" in proc.stdout
    assert (tmp_path / "runtime_results.json").is_file() and (tmp_path / "runtime_traces.tar").is_file()
