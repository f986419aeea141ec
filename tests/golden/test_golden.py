"""Every simulated time and counter of the golden grid (tests/golden/grid.py) as recorded in rows.json: a refactor
of the engine, the stepper or the policies reproduces them to a relative 1e-9 and the counters exactly. A deliberate
change regenerates rows.json in the same commit (python tests/golden/grid.py) and says why."""

from __future__ import annotations

import json

import numpy as np
import pytest

import grid

GOLDEN = json.loads(grid.ROWS.read_text())


@pytest.mark.parametrize("name,mode", [(n, m) for n, modes in grid.MODELS for m in modes])
def test_traces_unchanged(name, mode):
    assert grid.trace_digest(name, mode) == GOLDEN["traces"][f"{name}|{mode}"]


@pytest.mark.parametrize("name,mode", [(n, m) for n, modes in grid.MODELS for m in modes])
def test_rows_reproduced(name, mode):
    got = grid.compute(lambda c: c[0] == name and c[1] == mode)
    want = {k: v for k, v in GOLDEN["rows"].items() if k.startswith(f"{name}|{mode}|")}
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        assert g["counters"] == w["counters"], k
        assert g["max_resident"] == w["max_resident"], k
        assert (g["tau"], g["steps"]) == (w["tau"], w["steps"]), k
        np.testing.assert_allclose(g["sim_time_s"], w["sim_time_s"], rtol=1e-9, atol=0, err_msg=k)
        np.testing.assert_allclose(g["step_times_s"], w["step_times_s"], rtol=1e-9, atol=1e-15, err_msg=k)
        np.testing.assert_allclose(g["mandatory_gpu_s"], w["mandatory_gpu_s"], rtol=1e-9, atol=0, err_msg=k)
        assert g["busy_s"].keys() == w["busy_s"].keys(), k
        for r in w["busy_s"]:
            np.testing.assert_allclose(g["busy_s"][r], w["busy_s"][r], rtol=1e-9, atol=1e-15, err_msg=f"{k} {r}")
