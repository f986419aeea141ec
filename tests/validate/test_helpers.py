"""Timing, table fitting, held-out records, the serial replay and the statistics, on small hand cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from validate.tables import Measured, geometric_midpoints, holdout_record, isotonic, isotonic_2d, measure_1d
from validate.timing import Clock, TimingSettings, rel_errors


def test_isotonic():
    assert isotonic([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert isotonic([3, 2, 1]) == [2, 2, 2]
    assert isotonic([1, 2, 3]) == [1, 2, 3]
    z = isotonic_2d([[1, 3, 2], [0, 5, 4]])
    a = np.asarray(z)
    assert np.all(np.diff(a, axis=0) >= 0) and np.all(np.diff(a, axis=1) >= 0)


def test_holdout_and_measure_1d():
    rec = holdout_record([2, 4], [1.0, 2.0], [1.1, 1.8])
    np.testing.assert_allclose(rec["rel_error"], [0.1, -0.1])
    assert rec["median_abs_rel_error"] == pytest.approx(0.1) and rec["max_abs_rel_error"] == pytest.approx(0.1)
    t = measure_1d("embed", [1, 4, 16], [2, 8], lambda x: 1e-6 * x + 1e-5)
    assert t.holdout["points"] == [2.0, 8.0] and max(abs(e) for e in t.holdout["rel_error"]) < 1e-9
    assert t.to_json() == {"tokens": [1.0, 4.0, 16.0], "seconds": t.seconds}
    assert geometric_midpoints([1, 4, 16, 64]) == [2, 8, 32]
    assert rel_errors(np.array([2.0]), np.array([1.0]))[0] == 1.0


def test_measured_table_objects():
    m = Measured("gpu_expert", [1, 2], [1e-5, 2e-5], call=3e-5)
    assert m.table().call == 3e-5 and m.to_json()["call_seconds"] == 3e-5
    a = Measured("attention", [1, 2], [[1, 2], [3, 4]], y=[1, 2])
    assert a.table()(2, 2) == 4 and a.to_json()["context"] == [1.0, 2.0]


@pytest.mark.parametrize("flush", [0, 1 << 20])
def test_clock_measures_a_sleep(flush):
    import time

    clock = Clock(torch.device("cpu"), TimingSettings(warmup=1, repeats=3, flush_bytes=flush))
    t = clock.measure(lambda: time.sleep(0.002))
    assert 0.0015 < t < 0.05 and clock.samples == 3
