"""Engine invariants on random traces with the roofline cost model of LLaDA2.0-mini on the H100 preset."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import numpy as np

from simcases import tiny_trace
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
POLICIES = [("all-gpu", {}), ("cpu-route", {}), ("cpu-route", {"initial": "first-step"}), ("fetch-lru", {}),
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
    assert r.h2d_weight_bytes == r.promotions * MODEL.expert_bytes
    assert r.h2d_bytes == r.h2d_weight_bytes + r.cpu_assignments * MODEL.token_bytes
    assert r.d2h_bytes == r.cpu_assignments * MODEL.token_bytes
    assert r.gpu_assignments + r.cpu_assignments == int(trace.counts.sum())
    for res in RESOURCES:
        assert r.busy_s[res] <= r.sim_time_s * (1 + 1e-12)
    assert r.sim_time_s >= r.lower_bound_s * (1 - 1e-12)
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
    assert a.sim_time_s == b.sim_time_s and a.promotions == b.promotions
    np.testing.assert_array_equal(a.step_times_s, b.step_times_s)


def test_policies_rank_sensibly_on_skewed_routing():
    trace = random_trace(11, steps=16, skew=0.05)
    tput = {n: simulate(trace, make_policy(n), COST, 128).tokens_per_s for n in ("all-gpu", "cpu-route", "fetch-lru")}
    assert tput["all-gpu"] >= max(tput["cpu-route"], tput["fetch-lru"])


def test_shared_duplex_serialises_both_directions():
    counts = [[[1, 1, 1, 0]]]
    cost = ConstantCostModel()
    split = simulate(tiny_trace(counts), make_policy("cpu-route"), cost, 2)
    shared = simulate(tiny_trace(counts), make_policy("cpu-route"), cost, 2, shared_duplex=True)
    assert shared.sim_time_s == pytest.approx(split.sim_time_s)  # no concurrency to lose in a serial path
    assert shared.busy_s["h2d"] == split.busy_s["h2d"]
