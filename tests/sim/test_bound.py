"""sim.bound: the LP lower bound on any policy's simulated time.

Hand-computed optima with the constant cost model, every registered policy at or above the bound on a grid of
small traces (modes, budgets, cost models, serial, shared duplex, DRAM), monotone in the budget, tight where
a simulated run can reach it, and the certified value equal to the LP's.
"""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error
pytest.importorskip("scipy", exc_type=ImportError)

from dataclasses import replace
from functools import lru_cache

import numpy as np

from simcases import tiny_trace
from offload.cost import ConstantCostModel, RooflineCostModel
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import POLICIES, make_policy
from sim.bound import lower_bound
from sim.engine import mandatory_gpu_time, simulate
from traces.synthetic import default_config, generate

TINY = ModelSpec.load("llada2-tiny")
# a hand-checkable trace: one step, one MoE layer, experts 1 (3 tokens) and 2 (1 token) active
HAND = [[[0, 3, 1, 0]]]


# ---- hand-computed optima --------------------------------------------------------------------------------------
def test_hand_computed_cpu_and_link_bind():
    # G0 = step 1 + pre 1 = 2. x = GPU share of the two experts (X = sum), budget 1 (one free resident), a weight
    # copy 100 B x 0.1 s/B = 10 s, an activation 0.1 s/assignment H2D and 0.01 s D2H. Offloading the 1-token
    # expert is cheapest (fewest activations):
    #   GPU = 2 + 0.1 X, CPU = 3 (2 - X), H2D = 10 (X - 1) + 0.1 (2 - X), D2H = 0.01 (2 - X)
    # CPU = H2D at X = 15.8 / 12.9, where T = 6 - 3X = 30 / 12.9 = 100 / 43 > GPU
    cost = ConstantCostModel(cpu_expert_s=3.0, h2d_per_byte_s=0.1)
    b = lower_bound(tiny_trace(HAND), cost, 1)
    assert b.seconds == pytest.approx(100 / 43, rel=1e-9)
    assert b.binding == ("cpu", "h2d")
    assert b.gpu_experts == pytest.approx(15.8 / 12.9) and b.streamed_experts == pytest.approx(15.8 / 12.9 - 1)
    assert b.cpu_s == pytest.approx(100 / 43) and b.h2d_s == pytest.approx(100 / 43)
    assert b.gpu_s == pytest.approx(2 + 0.1 * 15.8 / 12.9) and b.mandatory_gpu_s == 2.0
    assert b.tokens_per_s == pytest.approx(b.generated_tokens / b.seconds)
    assert b.solver.lp_seconds == pytest.approx(b.seconds, rel=1e-9)
    # one copy engine: LINK = H2D + D2H, so CPU = LINK at X = 15.78 / 12.89, T = 30 / 12.89
    shared = lower_bound(tiny_trace(HAND), cost, 1, shared_duplex=True)
    assert shared.seconds == pytest.approx(30 / 12.89, rel=1e-9) and shared.binding == ("cpu", "link")
    # serial: T >= 2 + 0.1 X + 3 (2 - X) + 10 (X - 1)^+, least at X = 1: 5.1 (no activation copies)
    serial = lower_bound(tiny_trace(HAND), cost, 1, serial=True)
    assert serial.seconds == pytest.approx(5.1, rel=1e-9) and serial.binding == ("serial",)
    assert serial.d2h_s == 0.0 and serial.streamed_experts == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_gpu_and_cpu_balance():
    # a free budget of 2: no copies; GPU = 2 + 0.1 X, CPU = 3 (2 - X) meet at X = 40 / 31: T = 66 / 31
    b = lower_bound(tiny_trace(HAND), ConstantCostModel(cpu_expert_s=3.0), 2)
    assert b.seconds == pytest.approx(66 / 31, rel=1e-9) and set(b.binding) == {"gpu", "cpu"}
    assert b.streamed_experts == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_dram():
    # DRAM at 100 B/s: each CPU expert or weight copy reads 100 B = 1 s. With budget 2 and cheap CPU experts
    # (GPU = 2 + 0.1 X, CPU = 0.5 (2 - X), DRAM = 2 - X) GPU meets DRAM at X = 0: T = 2, the mandatory part
    cost = ConstantCostModel(cpu_expert_s=0.5)
    assert lower_bound(tiny_trace(HAND), cost, 2, dram_bytes_per_s=100.0).seconds == pytest.approx(2.0)
    # a slow DRAM (10 B/s: 10 s an expert) binds: GPU = 2 + 0.1 X = DRAM = 10 (2 - X) at X = 18 / 10.1
    b = lower_bound(tiny_trace(HAND), cost, 2, dram_bytes_per_s=10.0)
    assert b.seconds == pytest.approx(2 + 1.8 / 10.1, rel=1e-9) and set(b.binding) == {"gpu", "dram"}
    assert b.dram_s == pytest.approx(b.seconds)


def test_bad_input_is_one_line():
    for budget in (0, 5, [1, 2]):
        with pytest.raises(TideError, match="budget"):
            lower_bound(tiny_trace(HAND), ConstantCostModel(), budget)
    with pytest.raises(TideError, match="dram"):
        lower_bound(tiny_trace(HAND), ConstantCostModel(), 1, dram_bytes_per_s=0.0)
    with pytest.raises(TideError, match="method"):
        lower_bound(tiny_trace(HAND), ConstantCostModel(), 1, method="simplex")


def test_no_active_expert_is_the_mandatory_time():
    tr = tiny_trace([[[1, 0]], [[0, 1]]])
    b = lower_bound(replace(tr, counts=np.zeros_like(tr.counts)), ConstantCostModel(), 1)  # past the trace checks
    assert b.seconds == pytest.approx(4.0) and b.solver.method == "trivial"


# ---- every policy at or above the bound -----------------------------------------------------------------------
@lru_cache(maxsize=None)
def trace(mode: str):
    return generate(TINY, default_config(TINY, mode, gen_length=64, prompt_length=16, seed=1))


COSTS = {"roofline": RooflineCostModel(TINY, HardwareProfile.load("h100-pcie5")),
         # expensive copies and a CPU near the GPU's speed: every resource can bind
         "constant": ConstantCostModel(gpu_expert_s=0.01, cpu_expert_s=0.03, h2d_per_byte_s=1e-4,
                                       d2h_per_byte_s=1e-4, expert_bytes=100, token_bytes=1)}
POLICY_RUNS = [(name, {}) for name in POLICIES] + [("tide", {"tau": 1}), ("static", {"profile_steps": 3})]


@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
@pytest.mark.parametrize("cost_name", list(COSTS))
@pytest.mark.parametrize("serial", [False, True])
def test_every_policy_is_at_or_above_the_bound(mode, cost_name, serial):
    tr, cost = trace(mode), COSTS[cost_name]
    E = tr.num_experts
    for budget in (1, E // 4, E):
        for duplex in (False, True):
            if serial and duplex:
                continue  # one device: no link, the duplex setting changes nothing
            bound = lower_bound(tr, cost, budget, serial=serial, shared_duplex=duplex)
            full = lower_bound(tr, cost, None, serial=serial, shared_duplex=duplex)
            assert bound.seconds >= mandatory_gpu_time(tr, cost) * (1 - 1e-12)
            assert bound.solver.lp_seconds == pytest.approx(bound.seconds, rel=1e-6)
            for name, params in POLICY_RUNS:
                policy = make_policy(name, **params)
                r = simulate(tr, policy, cost, budget, serial=serial, shared_duplex=duplex)
                # a policy without a budget runs with every expert resident (simulate): its bound is the full one
                b = bound if policy.needs_budget else full
                assert r.sim_time_s >= b.seconds * (1 - 1e-9), (name, params, budget, duplex)
                assert r.tokens_per_s <= b.tokens_per_s * (1 + 1e-9)


@pytest.mark.parametrize("executor", ["tide-moe", "tide-reference"])
@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
def test_every_policy_is_at_or_above_the_bound_under_each_executor(executor, mode):
    """The executor's certain costs (its mandatory GPU work, host syncs, per-expert overheads when nothing
    overlaps) tighten the bound, never past a run; with host DRAM shared as the executor shares it."""
    x = ExecutorProfile.load(executor)
    tr, cost = trace(mode), COSTS["roofline"]
    dram = cost.dram_bytes_per_s if x.shared_dram else None
    plain = lower_bound(tr, cost, 8)
    for budget in (1, 8, tr.num_experts):
        bound = lower_bound(tr, cost, budget, executor=x, dram_bytes_per_s=dram)
        full = lower_bound(tr, cost, None, executor=x, dram_bytes_per_s=dram)
        for name, params in POLICY_RUNS:
            policy = make_policy(name, **params)
            r = simulate(tr, policy, cost, budget, executor=x)
            b = bound if policy.needs_budget else full
            assert r.sim_time_s >= b.seconds * (1 - 1e-9), (executor, name, params, budget)
    if executor == "tide-reference":  # its overheads are certain costs: the bound rises above the plain one
        assert lower_bound(tr, cost, 8, executor=x).seconds > plain.seconds * 1.05


def test_dram_bound_only_tightens():
    tr, cost = trace("prefix-recompute"), COSTS["roofline"]
    base = lower_bound(tr, cost, 8)
    slow = lower_bound(tr, cost, 8, dram_bytes_per_s=1e9)
    assert slow.seconds >= base.seconds * (1 - 1e-9) and slow.dram_s is not None and base.dram_s is None
    assert lower_bound(tr, cost, 8, dram_bytes_per_s=1e18).seconds == pytest.approx(base.seconds, rel=1e-9)


@pytest.mark.parametrize("cost_name", list(COSTS))
def test_cutting_planes_reach_the_lp_optimum(cost_name):
    # the fast exact method against scipy's LP (HiGHS) on the full (step, count) formulation
    cost = COSTS[cost_name]
    for mode in ("prefix-recompute", "block-cache"):
        tr = trace(mode)
        for budget in (1, 3, 8, 20, tr.num_experts):
            for serial, duplex, dram in ((False, False, None), (False, True, None), (True, False, None),
                                         (False, False, 1e9), (True, False, 1e7)):
                kw = dict(serial=serial, shared_duplex=duplex, dram_bytes_per_s=dram)
                cp = lower_bound(tr, cost, budget, method="cutting-plane", **kw)
                lp = lower_bound(tr, cost, budget, method="lp", **kw)
                assert cp.solver.method == "cutting-plane" and cp.solver.converged, (mode, budget, kw)
                assert lp.solver.method == "lp" and lp.solver.converged
                assert cp.seconds == pytest.approx(lp.seconds, rel=1e-8), (mode, budget, kw)
                assert cp.solver.lp_seconds >= cp.seconds * (1 - 1e-12)


# ---- shape of the bound -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cost_name", list(COSTS))
@pytest.mark.parametrize("serial", [False, True])
def test_monotone_in_budget(cost_name, serial):
    tr, cost = trace("block-cache"), COSTS[cost_name]
    E = tr.num_experts
    secs = [lower_bound(tr, cost, b, serial=serial).seconds for b in range(1, E + 1)]
    assert all(a >= b * (1 - 1e-9) for a, b in zip(secs, secs[1:]))
    # a per-layer budget is bounded by its total: [1, 3, 2] behaves as 2 per layer (total 6)
    L = tr.num_moe_layers
    uneven = np.array([1, 3, 2] + [2] * (L - 3))
    assert lower_bound(tr, cost, uneven, serial=serial).seconds == pytest.approx(secs[1], rel=1e-9)


@pytest.mark.parametrize("mode", ["prefix-recompute", "block-cache"])
def test_budget_e_with_a_slow_cpu_is_the_gpu_time_less_a_sliver(mode):
    # budget E: no copies. Static (all resident up front, nothing moves) takes G = mandatory + g x (active
    # experts) with the constant cost model. The relaxation may still move a fraction d of one expert (1 token,
    # so its activation copies stay far below T) to an idle CPU of c s an expert: GPU = G - g d, CPU = c d,
    # equal at T = G c / (c + g), the exact optimum once c > G (less than one expert's worth moves)
    tr = trace(mode)
    g, c = 0.01, 1e4
    cost = ConstantCostModel(gpu_expert_s=g, cpu_expert_s=c)
    b = lower_bound(tr, cost, tr.num_experts)
    G = mandatory_gpu_time(tr, cost) + g * int((tr.counts > 0).sum())
    assert c > G and b.seconds == pytest.approx(G * c / (c + g), rel=1e-9) and set(b.binding) == {"gpu", "cpu"}
    static = simulate(tr, make_policy("static"), cost, tr.num_experts).sim_time_s
    assert static == pytest.approx(G, rel=1e-12) and b.seconds <= static
    # with a real profile the budget-E bound lies between the mandatory work and the all-gpu run
    roof = COSTS["roofline"]
    rb = lower_bound(tr, roof, None)
    assert mandatory_gpu_time(tr, roof) <= rb.seconds <= simulate(tr, make_policy("all-gpu"), roof).sim_time_s


def test_serial_counts_the_cheaper_per_call_term():
    # serial mode adds min(call_gpu, call_cpu) per active layer-step; the CPU's is 0 on the roofline model, so a
    # CPU with a per-call cost too lifts the serial bound by exactly min(calls) x active layer-steps
    class CallCost(ConstantCostModel):
        def gpu_experts(self, counts):
            return super().gpu_experts(counts) + 0.5 * np.any(np.asarray(counts) > 0, axis=-1)

        def cpu_experts(self, counts):
            return super().cpu_experts(counts) + 0.2 * np.any(np.asarray(counts) > 0, axis=-1)

    tr = tiny_trace(HAND)
    base = lower_bound(tr, ConstantCostModel(cpu_expert_s=3.0, h2d_per_byte_s=0.1), 1, serial=True)
    calls = lower_bound(tr, CallCost(cpu_expert_s=3.0, h2d_per_byte_s=0.1), 1, serial=True)
    assert calls.seconds == pytest.approx(base.seconds + 0.2, rel=1e-9)
    # outside serial mode the per-call terms are dropped (which resource pays them is a 0/1 choice)
    assert lower_bound(tr, CallCost(cpu_expert_s=3.0, h2d_per_byte_s=0.1), 1).seconds == pytest.approx(100 / 43)


def test_refuses_a_cost_model_it_cannot_bound_per_expert():
    class Subadditive(ConstantCostModel):  # a batch cheaper than its experts: no per-expert price is sound
        def gpu_experts(self, counts):
            return np.sqrt((np.asarray(counts) > 0).sum(axis=-1)) * self.gpu_expert_s

    with pytest.raises(TideError, match="per-expert"):
        lower_bound(tiny_trace([[[1, 1, 1, 1]]]), Subadditive(), 1)
