"""sim.spread on hand-built rows: each draw's best tau, ratios to that draw's best baseline, medians, ranges and
the share of draws a recommendation wins."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import numpy as np

from offload.results import SimRecord
from sim import spread
from simcases import sim_row


def row(policy: str, draw: int, tps: float, tau: int | None = None) -> SimRecord:
    return sim_row(f"m-draw{draw}", policy, tps, tau=tau, mode="m", draw=draw)


ROWS = [row("cpu-route", 0, 10), row("cpu-route", 1, 20), row("cpu-route", 2, 16),
        row("tide", 0, 12, tau=1), row("tide", 0, 15, tau=4), row("tide", 1, 18, tau=1), row("tide", 1, 16, tau=4),
        row("tide", 2, 45, tau=4)]


def test_best_tau_per_draw_and_ratios_to_that_draws_baseline():
    (base, tide) = spread.spreads(ROWS)
    assert base.policy == "cpu-route" and np.allclose(base.vs_base, [1, 1, 1])
    assert np.allclose(tide.tokens_per_s, [15, 18, 45]) and [r.tau for r in tide.rows] == [4, 1, 4]
    assert np.allclose(tide.vs_base, [1.5, 0.9, 45 / 16]) and tide.label == "tide best"


def test_recommendation_by_median_with_its_share_of_wins():
    best, share = spread.recommend(ROWS, lambda r: True)
    # medians 18 (tide) against 16 (cpu-route); in draw 1 cpu-route (20) beats tide (18)
    assert best.policy == "tide" and share == pytest.approx(2 / 3)
    best, share = spread.recommend(ROWS, lambda r: r.policy != "tide")
    assert best.policy == "cpu-route" and share == 1.0


def test_table_shows_median_and_range():
    text = spread.spread_table(ROWS)
    assert "median [min-max] over 3 trace draws" in text
    assert "18.0 [15.0-45.0]" in text and "1.50 [0.90-2.81]" in text and "(tau 1/4)" in text
