"""Host resources in the engine: DRAM bandwidth shared by copies and CPU experts, pinned-memory capacity, and
the host thread that syncs and decides. Hand-computed with ConstantCostModel (dense 1 s per step and per
layer, 0.1 s per GPU expert, 1 s per CPU expert, 0.01 s per byte copied, 100 B an expert)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("simpy", exc_type=ImportError)

from simcases import SWAP, SwapAndOverlap, tiny_trace
from offload.cost import ConstantCostModel
from offload.executor import ExecutorProfile
from offload.policies import make_policy
from offload.results import RESOURCES, WHAT
from sim.chrome_trace import TRACK_NAMES, chrome_trace_events
from sim.engine import simulate
from sim.host_dram import waterfill

SHARED = ExecutorProfile(name="shared", shared_dram=True)


def test_waterfill_shares():
    np.testing.assert_allclose(waterfill(100, [80, 80]), [50, 50])      # both want more than half: split
    np.testing.assert_allclose(waterfill(100, [20, 200]), [20, 80])     # the small one gets all it asks
    np.testing.assert_allclose(waterfill(100, [10, 20]), [10, 20])      # enough for both
    np.testing.assert_allclose(waterfill(215, [50, 215]), [50, 165])    # a 50 GB/s copy under CPU experts
    np.testing.assert_allclose(waterfill(90, [10, 50, 50]), [10, 40, 40])


@pytest.mark.parametrize("dram,expected,both_end", [(None, 4.2, 3.0), (1000.0, 4.2, 3.0), (150.0, 2 + 0.2 + 1 / 0.75 + 1, 2 + 1 / 0.75),
                                                    (100.0, 5.2, 4.0)])
def test_copy_and_cpu_experts_share_dram(dram, expected, both_end):
    """Activations of 0 B, so at t = 2 the promotion (1 s nominal, 100 B: 100 B/s) and the CPU expert (1 s,
    its 100 B of weights: 100 B/s) start together. D = 100 B/s: 50 each, speed 0.5, both end at 4.0; GPU
    experts 4.0-4.2, prefetch (alone, 100 B/s <= D) 4.2-5.2. D = 150: 75 each, both end at 2 + 1/0.75.
    D = 1000 or none: no slowdown (weights 2-3, CPU 2-3, GPU 3-3.2, prefetch 3.2-4.2)."""
    cost = ConstantCostModel(token_bytes=0, dram_bytes_per_s=dram)
    r = simulate(tiny_trace(SWAP), SwapAndOverlap(), cost, 2, executor=SHARED, timeline=True)
    assert r.sim_time_s == pytest.approx(expected)
    tl = r.timeline
    for what in ("weights_h2d", "experts_cpu"):
        sel = tl.what == WHAT.index(what)
        assert tl.start[sel] == pytest.approx([2.0]) and tl.end[sel] == pytest.approx([both_end])
    assert r.busy_s["cpu"] == pytest.approx(both_end - 2)  # each is busy for longer: it got less bandwidth
    # an executor without shared_dram ignores the figure
    private = ExecutorProfile(name="private", shared_dram=False)
    assert simulate(tiny_trace(SWAP), SwapAndOverlap(), cost, 2, executor=private).sim_time_s == pytest.approx(4.2)


def test_unequal_demands_share_max_min_fairly():
    """D = 150 B/s; 10 B rows. The promotion wants 100 B/s (100 B in 1 s), the activations' D2H 100 B/s (50 B in
    0.5 s), the CPU expert 200 B/s (its 100 B of weights + 2 x 50 B of rows in 1 s): every pair wants more than
    half of D, so water-filling gives 75 B/s each and the jobs run at 0.75, 0.75 and 0.375 of full speed."""
    cost = ConstantCostModel(token_bytes=10, dram_bytes_per_s=150.0)
    r = simulate(tiny_trace(SWAP), SwapAndOverlap(), cost, 2, executor=SHARED, timeline=True)
    tl = r.timeline
    # t = 2: weights (100 B/s) and act D2H (50 B in 0.5 s: 100 B/s) start: 75 each, speed 0.75; D2H ends at
    # 2 + 0.5/0.75 = 2.6667 with the weights at 0.5 of 1 s. Then weights (100) and CPU (200): 75 each, speeds
    # 0.75 and 0.375; the weights' last 0.5 s end at 2.6667 + 0.6667 = 3.3333, the CPU has done 0.25 s. Alone
    # the CPU runs at 150/200 = 0.75: its last 0.75 s take 1.0 s, it ends at 4.3333; the results' H2D (alone,
    # 100 B/s) 4.3333-4.8333; GPU experts 3.3333-3.5333; the prefetch queues behind the results on the H2D
    # engine: 4.8333-5.8333.
    def span(what):
        sel = tl.what == WHAT.index(what)
        return float(tl.start[sel][0]), float(tl.end[sel][0])

    assert span("act_d2h") == pytest.approx((2.0, 2 + 2 / 3))
    assert span("weights_h2d") == pytest.approx((2.0, 3 + 1 / 3))
    assert span("experts_cpu") == pytest.approx((2 + 2 / 3, 4 + 1 / 3))
    assert span("act_h2d") == pytest.approx((4 + 1 / 3, 4 + 5 / 6))
    assert r.sim_time_s == pytest.approx(5 + 5 / 6)


def test_pinned_capacity_prices_the_rest_pageable():
    """200 B pinned: experts 0 and 1; the promotion of expert 2 is pageable (2 s instead of 1): weights 2-4,
    GPU experts 4-4.2; the CPU's results queue behind the weights (4-4.05); prefetch of expert 1 (pinned)
    4.2-5.2. Unlimited: 4.2 (tests/sim/test_engine.py)."""
    for pinned, expected in ((200.0, 5.2), (float("inf"), 4.2), (0.0, 2 + 2 + 0.2 + 2)):
        r = simulate(tiny_trace(SWAP), SwapAndOverlap(), ConstantCostModel(pinned_bytes=pinned), 2)
        assert r.sim_time_s == pytest.approx(expected), pinned


def test_host_thread_charges_sync_and_decide():
    """0.25 s per decide() of this policy + 0.05 s host sync per layer: the decision at 2.0 is made at 2.3 and
    everything after shifts by 0.3 (4.2 -> 4.5); the host is busy 0.3 s, logged as "decide" on its own track."""
    x = ExecutorProfile.from_dict({"name": "slow-host", "host_sync_us": 5e4,
                                   "decide_us": {"swap-and-overlap-test": 2.5e5, "tide": 1.0}})
    assert x.decide_s("swap-and-overlap-test") == pytest.approx(0.25)
    r = simulate(tiny_trace(SWAP), SwapAndOverlap(), ConstantCostModel(), 2, executor=x, timeline=True)
    assert r.sim_time_s == pytest.approx(4.5)
    assert r.busy_s["host"] == pytest.approx(0.3) and r.utilisation["host"] == pytest.approx(0.3 / 4.5)
    tl = r.timeline
    host = tl.resource == RESOURCES.index("host")
    assert host.sum() == 1 and tl.what[host][0] == WHAT.index("decide")
    assert (tl.start[host][0], tl.end[host][0]) == pytest.approx((2.0, 2.3))
    wait = (tl.what == WHAT.index("wait")) & (tl.start == 2.0)
    assert wait.sum() == 1  # the GPU stalls while the host decides
    # the timeline export names the host track
    events = [json.loads(e) for e in chrome_trace_events(r)]
    assert "host" in TRACK_NAMES
    assert any(e.get("name") == "decide" and e.get("tid") == RESOURCES.index("host") for e in events)
    # two steps, two layers: charged once per (step, layer)
    r2 = simulate(tiny_trace([[[1, 1], [1, 1]]] * 2), make_policy("all-gpu"), ConstantCostModel(), 2,
                  executor=ExecutorProfile(name="h", host_sync_us=1e5))
    assert r2.busy_s["host"] == pytest.approx(4 * 0.1)


def test_only_the_memory_bound_share_of_cpu_work_slows():
    """The CPU reads at 200 B/s while memory-bound: its 1 s batch of 100 B is half memory-bound (f = 0.5, peak
    200). D = 100 with the promotion's 100 B/s: 50 B/s each; the copy runs at 0.5 (ends at 4.0), the CPU at
    1 / (0.5 + 0.5 x 200/50) = 0.4, so by 4.0 it did 0.8 s; alone it gets min(200, D) = 100: speed
    1 / (0.5 + 0.5 x 2) = 2/3, its last 0.2 s take 0.3 s: it ends at 4.3. GPU experts 4.0-4.2, layer end 4.3,
    prefetch alone 4.3-5.3."""
    cost = ConstantCostModel(token_bytes=0, dram_bytes_per_s=100.0, cpu_dram_bytes_per_s=200.0)
    r = simulate(tiny_trace(SWAP), SwapAndOverlap(), cost, 2, executor=SHARED, timeline=True)
    tl = r.timeline
    cpu = tl.what == WHAT.index("experts_cpu")
    assert tl.end[cpu] == pytest.approx([4.3])
    assert r.sim_time_s == pytest.approx(5.3)
