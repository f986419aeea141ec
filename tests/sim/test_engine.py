"""Engine invariants on random traces with the roofline cost model of LLaDA2.0-mini on the H100 preset, and
hand-computed schedules with the constant cost model (shared-duplex link, serial mode)."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

from dataclasses import dataclass

import numpy as np

from simcases import SWAP, SwapAndOverlap, tiny_trace
from offload.cost import ConstantCostModel, RooflineCostModel
from sim.engine import mandatory_gpu_time, simulate
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.results import RESOURCES, WHAT
from offload.trace_check import make_trace
from offload.trace import model_header

MODEL = ModelSpec.load("llada2.0-mini")
COST = RooflineCostModel(MODEL, HardwareProfile.load("h100-pcie5"))
POLICIES = [("all-gpu", {}), ("cpu-route", {}), ("static", {}), ("static", {"profile_steps": 3}), ("fetch-lru", {}),
            ("tide", {"tau": 1}), ("tide", {"tau": 3})]


def random_trace(seed: int, steps: int = 12, tokens: int = 32, skew: float = 0.2):
    rng = np.random.default_rng(seed)
    L, E, k = MODEL.num_moe_layers, MODEL.num_experts, MODEL.top_k
    pop = rng.dirichlet(np.full(E, skew), size=L)
    counts = np.stack([[rng.multinomial(tokens * k, pop[l]) for l in range(L)] for _ in range(steps)])
    header = {"version": 1, "model": model_header(MODEL),
              "generation": {"mode": "block-cache", "block_length": 32, "gen_length": 1024, "steps": 32,
                             "threshold": 0.95, "prompt_length": 0},
              "origin": {"kind": "synthetic", "seed": seed}}
    s = np.arange(steps)
    return make_trace(header, counts, block=s // 4, step_in_block=s % 4, tokens_forwarded=np.full(steps, tokens),
                      context_tokens=np.full(steps, tokens) + 32 * (s // 4), tokens_committed=np.full(steps, 2),
                      kind=np.zeros(steps))


@pytest.mark.parametrize("name,params", POLICIES)
@pytest.mark.parametrize("budget", [1, 16, 128])
def test_invariants(name, params, budget):
    trace = random_trace(budget)
    r = simulate(trace, make_policy(name, **params), COST, budget, timeline=True)
    if make_policy(name).needs_budget:
        assert np.all(r.max_resident <= budget)  # resident never exceeds the budget
    assert r.counters.h2d_weight_bytes == r.counters.promotions * MODEL.expert_bytes
    assert r.counters.h2d_bytes == r.counters.h2d_weight_bytes + r.counters.cpu_assignments * MODEL.token_bytes
    assert r.counters.d2h_bytes == r.counters.cpu_assignments * MODEL.token_bytes
    assert r.counters.gpu_assignments + r.counters.cpu_assignments == int(trace.counts.sum())
    for res in RESOURCES:
        assert r.busy_s[res] <= r.sim_time_s * (1 + 1e-12)
    assert r.sim_time_s >= mandatory_gpu_time(trace, COST) * (1 - 1e-12)
    tl = r.timeline
    assert r.sim_time_s == pytest.approx(tl.end.max())  # makespan = last completion
    assert r.step_times_s.sum() == pytest.approx(r.sim_time_s)
    busy = tl.what != WHAT.index("wait")
    for i, res in enumerate(RESOURCES):
        sel = busy & (tl.resource == i)
        assert tl.end[sel].sum() - tl.start[sel].sum() == pytest.approx(r.busy_s[res], rel=1e-9, abs=1e-12)
        order = np.argsort(tl.start[sel], kind="stable")
        # a resource serialises its work: intervals never overlap
        assert np.all(tl.start[sel][order][1:] >= tl.end[sel][order][:-1] - 1e-12)


def test_all_gpu_matches_analytic_roofline():
    trace = random_trace(7)
    r = simulate(trace, make_policy("all-gpu"), COST)
    expected = mandatory_gpu_time(trace, COST) + float(COST.gpu_experts(trace.counts).sum())
    assert r.sim_time_s == pytest.approx(expected, rel=1e-12)
    assert r.busy_s["gpu"] == pytest.approx(r.sim_time_s)


def test_deterministic():
    trace = random_trace(3)
    a = simulate(trace, make_policy("tide", tau=2), COST, 64)
    b = simulate(trace, make_policy("tide", tau=2), COST, 64)
    assert a.sim_time_s == b.sim_time_s and a.counters.promotions == b.counters.promotions
    np.testing.assert_array_equal(a.step_times_s, b.step_times_s)


def test_policies_rank_sensibly_on_skewed_routing():
    trace = random_trace(11, steps=16, skew=0.05)
    tput = {n: simulate(trace, make_policy(n), COST, 128).tokens_per_s for n in ("all-gpu", "cpu-route", "fetch-lru")}
    assert tput["all-gpu"] >= max(tput["cpu-route"], tput["fetch-lru"])


# SWAP with SwapAndOverlap (simcases): one MoE layer, experts 0 and 1 resident (budget 2), expert 1 carries 5
# tokens; ConstantCostModel: 1 s of dense work per step and per layer, 0.1 s per GPU expert, 1 s per CPU expert,
# 0.01 s per byte copied, 100 B an expert
def test_shared_duplex_serialises_both_directions():
    """The CPU path's activations leave at the decision, while the promotion is being copied: on a full-duplex
    link they overlap, on a shared one they queue behind it."""
    cost = ConstantCostModel()
    split = simulate(tiny_trace(SWAP), SwapAndOverlap(), cost, 2, timeline=True)
    shared = simulate(tiny_trace(SWAP), SwapAndOverlap(), cost, 2, shared_duplex=True, timeline=True)
    # split: weights 2-3 | d2h 2-2.05, CPU 2.05-3.05, results 3.05-3.10 | GPU experts 3-3.2 | prefetch 3.2-4.2
    assert split.sim_time_s == pytest.approx(4.2)
    # shared: weights 2-3, d2h 3-3.05, CPU 3.05-4.05, results 4.05-4.10, prefetch 4.10-5.10
    assert shared.sim_time_s == pytest.approx(5.1)
    for r, d2h_start in ((split, 2.0), (shared, 3.0)):
        tl = r.timeline
        assert tl.start[tl.what == WHAT.index("act_d2h")] == pytest.approx([d2h_start])
    assert shared.busy_s == split.busy_s  # the same work, only later
    # by default the engine takes the flag from the cost model (RooflineCostModel: its profile's link)
    assert simulate(tiny_trace(SWAP), SwapAndOverlap(), ConstantCostModel(shared_duplex=True), 2).sim_time_s == \
        pytest.approx(5.1)
    # without concurrent copies there is nothing to serialise: the flag changes nothing
    counts, policy = [[[1, 1, 1, 0]]], make_policy("cpu-route")
    a, b = (simulate(tiny_trace(counts), policy, cost, 2, shared_duplex=d).sim_time_s for d in (False, True))
    assert a == pytest.approx(b)


@dataclass(frozen=True)
class _OneDevice(ConstantCostModel):
    serial: bool = True  # what RooflineCostModel says for a single_device profile


def test_serial_mode_charges_every_item_in_turn():
    """One device: no overlap with the CPU, the prefetch waited for where it is issued, activations free."""
    trace = tiny_trace(SWAP * 2)
    r = simulate(trace, SwapAndOverlap(), _OneDevice(), 2, timeline=True)
    # step 0: dense 2, weights 1, GPU experts {0, 2} 0.2, CPU expert 1 1.0, prefetch 1.0 = 5.2
    # step 1: dense 2, GPU experts {1, 2} 0.2, CPU expert 0 1.0 = 3.2
    np.testing.assert_allclose(r.step_times_s, [5.2, 3.2])
    assert r.sim_time_s == pytest.approx(8.4)
    tl = r.timeline
    work = tl.what != WHAT.index("wait")
    assert np.sum(tl.end[work] - tl.start[work]) == pytest.approx(r.sim_time_s)  # never two items at once
    act = np.isin(tl.what, [WHAT.index("act_d2h"), WHAT.index("act_h2d")])
    assert act.sum() == 4 and np.all(tl.end[act] == tl.start[act])
    assert r.busy_s["d2h"] == 0 and r.counters.d2h_bytes == 6  # activation bytes still counted as the runtime does
    # cost.serial is the default; serial=False overlaps the same work: CPU under the copy, prefetch under step 1
    assert simulate(trace, SwapAndOverlap(), _OneDevice(), 2, serial=False).sim_time_s == pytest.approx(6.42)
    assert simulate(trace, SwapAndOverlap(), ConstantCostModel(), 2, serial=True).sim_time_s == pytest.approx(8.4)
