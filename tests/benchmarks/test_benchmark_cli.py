"""The benchmark scripts' command lines: every bad value ends in one ``error: ...`` line and exit status 2
before any work starts (no traceback, nothing silently replaced); and validate/gpu_validate.sh stops when its
calibrate phase fails."""
from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from offload.errors import run_cli

ROOT = Path(__file__).resolve().parents[2]
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _bench(name: str) -> ModuleType:
    """benchmarks.<name>, imported from the checkout (benchmarks/ is not an installed package). sim_speed sets
    the BLAS thread variables when imported; they are restored so later tests' subprocesses do not inherit them."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    saved = {v: os.environ.get(v) for v in _THREAD_VARS}
    try:
        return importlib.import_module(f"benchmarks.{name}")
    finally:
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _fails_in_one_line(module: ModuleType, argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as ei:
        run_cli(module.main, argv)
    err = capsys.readouterr().err
    assert ei.value.code == 2, (argv, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, err)
    return err


# (arguments, a piece of the expected message); a folder stands in for a model or a profile file
SIM_SPEED = [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "{dir}"], "is a directory"),
    (["--hardware", "no-such-hw"], "unknown hardware"),
    (["--hardware", "{dir}"], "is a directory"),
    (["--mode", "nope"], "--mode"),
    (["--gen-length", "0"], "--gen-length"),
    (["--gen-length", "-5"], "--gen-length"),
    (["--block-length", "0"], "--block-length"),
    (["--gen-length", "40"], "not a multiple"),
    (["--gpu-experts-per-layer", "0"], "--gpu-experts-per-layer"),
    (["--gpu-experts-per-layer", "-1"], "--gpu-experts-per-layer"),
    (["--gpu-experts-per-layer", "1000"], "exceeds"),
    (["--repeat", "0"], "--repeat"),
    (["--repeat", "x"], "--repeat"),
    (["--seed", "-1"], "--seed"),
    (["--models", "llada2-tiny", "no-such-model"], "unknown model"),
    (["--policies", "nope"], "unknown policy"),
    (["--policies", "tide(tau=0)"], "tau"),
    (["--executors", "nope"], "unknown executor"),
    (["--repeats", "0"], "--repeats"),
    (["--jobs", "0"], "--jobs"),
    (["--publish", "{dir}"], "is a directory"),
    (["--quick", "--paper"], "--quick"),
]

RIPTIDE_GRID = [
    (["--models", "nope"], "--models"),
    (["--hardware", "no-such-hw"], "unknown hardware"),
    (["--hardware", "{dir}"], "is a directory"),
    (["--budgets", "0"], "(0, 1]"),
    (["--budgets", "-0.5"], "(0, 1]"),
    (["--budgets", "2"], "(0, 1]"),
    (["--budgets", "nan"], "(0, 1]"),
    (["--budgets", "x"], "not a number"),
    (["--budgets", "0GB"], "--budgets 0GB"),
    (["--budgets", "0.0001GB"], "one expert"),
    (["--budgets", "xGB"], "not a number"),
    (["--modes", "nope"], "--modes"),
    (["--tau", "0"], "--tau"),
    (["--jobs", "0"], "--jobs"),
    (["--jobs", "-1"], "--jobs"),
    (["--json", "{dir}"], "is a directory"),
]

RANDOM_WEIGHTS = [
    (["--model", "no-such-model"], "unknown model"),
    (["--model", "{dir}"], "is a directory"),
    (["--model", "mixtral-8x7b"], "LLaDA2"),
    (["--model", "llada2-tiny", "--num-layers", "0"], "--num-layers"),
    (["--model", "llada2-tiny", "--num-layers", "99"], "--num-layers"),
    (["--model", "llada2-tiny", "--num-layers", "x"], "--num-layers"),
    (["--model", "llada2-tiny", "--threads", "0"], "--threads"),
    (["--model", "llada2-tiny", "--threads", "-2"], "--threads"),
    (["--model", "llada2-tiny", "--repeat", "0"], "--repeat"),
    (["--model", "llada2-tiny", "--dtype", "x"], "--dtype"),
]


def _fill(argv: list[str], tmp_path: Path) -> list[str]:
    return [a.replace("{dir}", str(tmp_path)) for a in argv]


@pytest.mark.parametrize("argv,says", SIM_SPEED)
def test_sim_speed_refuses(argv, says, tmp_path, capsys):
    # --no-pin: a check that came too late would otherwise pin the test process to one core
    assert says in _fails_in_one_line(_bench("sim_speed"), ["--no-pin", *_fill(argv, tmp_path)], capsys)


@pytest.mark.parametrize("argv,says", RIPTIDE_GRID)
def test_riptide_grid_refuses(argv, says, tmp_path, capsys):
    assert says in _fails_in_one_line(_bench("riptide_grid"), _fill(argv, tmp_path), capsys)


@pytest.mark.parametrize("argv,says", RANDOM_WEIGHTS)
def test_random_weights_refuses(argv, says, tmp_path, capsys):
    assert says in _fails_in_one_line(_bench("random_weights"), ["--skip-old", *_fill(argv, tmp_path)], capsys)


def test_random_weights_refuses_cuda_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    err = _fails_in_one_line(_bench("random_weights"), ["--model", "llada2-tiny", "--device", "cuda"], capsys)
    assert "--device cuda" in err


@pytest.mark.parametrize("script,argv", [("sim_speed.py", ["--no-pin", "--repeat", "0"]),
                                         ("riptide_grid.py", ["--budgets", "0"]),
                                         ("random_weights.py", ["--model", "no-such-model"])])
def test_scripts_run_through_run_cli(script, argv):
    """Run as scripts, as documented: the one-line error comes from the script's own entry point."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr


# ---- validate/gpu_validate.sh: a failing calibrate stops the script -------------------------------------------

# PYTHON stands in for python3 in the script: the phases are faked (smoke passes, calibrate exits with
# SHIM_CAL_RC and optionally leaves SHIM_PROFILE as its profile.json, the runtime phase records its arguments),
# anything else (the profile check) runs the real interpreter
SHIM = """#!/usr/bin/env bash
case " $* " in
  *" -m validate.gpu_smoke "*) exit 0 ;;
  *" -m validate.calibrate "*)
    if [ -n "${SHIM_PROFILE:-}" ]; then
      while [ $# -gt 0 ]; do [ "$1" = --out ] && cp "$SHIM_PROFILE" "$2"; shift; done
    fi
    echo "shim: calibrate ends with $SHIM_CAL_RC" >&2
    exit "$SHIM_CAL_RC" ;;
  *" -m runtime.bench "*) echo "$*" > "$SHIM_MARK"; exit 0 ;;
  *"import torch"*) exit 0 ;;
esac
exec "$SHIM_REAL" "$@"
"""


def _gpu_script(tmp_path: Path, cal_rc: int, profile: Path | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    shim = tmp_path / "python-shim"
    shim.write_text(SHIM)
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(shim), "SHIM_REAL": sys.executable, "SHIM_CAL_RC": str(cal_rc),
           "SHIM_MARK": str(tmp_path / "runtime-args"), "SHIM_PROFILE": str(profile or ""),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(["bash", str(ROOT / "validate" / "gpu_validate.sh"), "--dry-run", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    return proc, out


def test_gpu_script_stops_when_calibrate_fails(tmp_path):
    proc, out = _gpu_script(tmp_path, cal_rc=3)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert not (tmp_path / "runtime-args").exists()  # the runtime phase never started
    for name in ("log.txt", "env.txt"):
        lines = [l for l in (out / name).read_text().splitlines() if l.startswith("error: ")]
        assert lines == [f"error: calibrate failed (exit 3): stopping before the runtime phase; see {out}/log.txt"]
    assert "next, on a CPU machine" not in proc.stdout


def test_gpu_script_stops_when_calibrate_times_out_without_a_profile(tmp_path):
    proc, out = _gpu_script(tmp_path, cal_rc=124)
    assert proc.returncode == 1 and not (tmp_path / "runtime-args").exists()
    assert "timed out before a loadable profile.json" in (out / "log.txt").read_text()


def test_gpu_script_goes_on_after_a_timeout_that_left_a_profile(tmp_path):
    """calibrate writes profile.json once its required tables are done: cut after that, the runs still compare."""
    preset = ROOT / "offload" / "presets" / "hardware" / "h100-pcie5.json"
    proc, out = _gpu_script(tmp_path, cal_rc=124, profile=preset)
    assert proc.returncode == 1  # a phase timed out: still reported as a failure at the end
    assert f"--hardware {out}/profile.json" in (tmp_path / "runtime-args").read_text()
    assert "error: calibrate failed" not in (out / "log.txt").read_text()


def test_gpu_script_goes_on_after_a_calibrate_that_succeeded(tmp_path):
    """Unchanged: exit 0 without a loadable profile falls back to the preset, as before."""
    proc, out = _gpu_script(tmp_path, cal_rc=0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--hardware h100-pcie5" in (tmp_path / "runtime-args").read_text()
    assert "no loadable calibrated profile" in (out / "env.txt").read_text()
