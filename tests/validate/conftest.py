"""Shared fixtures for the validation tests: one CPU run of validate/gpu_validate.sh for the whole session.

The script runs exactly as on the GPU machine, in its dry-run mode (--dry-run: --device cpu, the llada2-tiny
preset, one torch thread, quick calibration; the same settings are also given through the environment) and with simpy, plotly, scipy and tqdm made
unimportable (a sitecustomize on PYTHONPATH), as they are absent on the GPU machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("simpy", "plotly", "scipy", "tqdm")
CPU_SETTINGS = {"TIDE_DEVICE": "cpu", "TIDE_MODEL": "llada2-tiny", "TIDE_NUM_LAYERS": "4", "TIDE_BUDGET": "16",
                "TIDE_THREADS": "1", "TIDE_QUICK": "1", "TIDE_GEN_LENGTH": "32", "TIDE_STEPS": "8",
                "TIDE_CAL_TIMEOUT": "120", "TIDE_RUN_TIMEOUT": "120"}


@pytest.fixture
def cpu_settings() -> dict[str, str]:
    return dict(CPU_SETTINGS)


@pytest.fixture(scope="session")
def gpu_script_cpu(tmp_path_factory, import_blocker) -> Path:
    """The output folder of validate/gpu_validate.sh run with its CPU settings (torch + numpy only)."""
    base = tmp_path_factory.mktemp("gpu_script")
    site = base / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(import_blocker(BLOCKED))
    out = base / "out"
    env = {**os.environ, **CPU_SETTINGS, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           # the script runs $PYTHON (default python3 from PATH): this interpreter, venv activated or not
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "validate" / "gpu_validate.sh"), "--dry-run", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out
