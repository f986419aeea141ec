"""The policies' measured decide() time: driving a policy as the executors do (offload.policies.drive), the
hardware profile's ``decide_us`` table and the engine charging it under tide-moe."""
from __future__ import annotations

import json

import numpy as np
import pytest

from offload.cost import RooflineCostModel
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.policies.base import PolicyContext, Prefetch, StepInfo
from offload.policies.drive import decide_times, drive
from offload.policies.residency import Residency

TINY = ModelSpec.load("llada2-tiny")  # 3 MoE layers of 32 experts, top-4


def _profile_dict(**decide: float) -> dict:
    d = HardwareProfile.load("h100-pcie5").to_dict()
    if decide:
        d["decide_us"] = dict(decide)
    return d


# ---- the profile's table ------------------------------------------------------------------------------------
def test_decide_us_round_trips_and_presets_have_none(tmp_path):
    assert HardwareProfile.load("h100-pcie5").decide_us == {}
    assert "decide_us" not in HardwareProfile.load("h100-pcie5").to_dict()  # presets keep their shape
    hw = HardwareProfile.from_dict(_profile_dict(tide=14, riptide=99.5))
    assert hw.decide_us == {"tide": 14.0, "riptide": 99.5}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(hw.to_dict()))
    back = HardwareProfile.load(path)
    assert back == hw and back.to_dict() == hw.to_dict()
    cost = RooflineCostModel(TINY, back)
    assert cost.decide_s("riptide") == pytest.approx(99.5e-6) and cost.decide_s("static") is None


@pytest.mark.parametrize("bad, words", [({"nope": 1.0}, "unknown policy 'nope'"), ({"tide": -1.0}, "non-negative"),
                                        ({"tide": "fast"}, "non-negative"), ({"tide": float("nan")}, "non-negative"),
                                        ({"tide": True}, "non-negative"), ([1.0], "must be an object")])
def test_bad_decide_us_is_one_line(bad, words):
    d = _profile_dict()
    d["decide_us"] = bad
    with pytest.raises(TideError, match=words) as exc:
        HardwareProfile.from_dict(d, origin="p.json")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("p.json: decide_us")


def test_executor_prefers_its_own_figure_then_the_measured_one():
    moe, ref = ExecutorProfile.load("tide-moe"), ExecutorProfile.load("tide-reference")
    assert moe.decide_s("riptide") == 0.0 and moe.decide_s("riptide", 120e-6) == pytest.approx(120e-6)
    assert ref.decide_s("riptide", 120e-6) == pytest.approx(99e-6)  # the released code keeps its own table
    assert ExecutorProfile.from_dict({"name": "x", "decide_default_us": 7.0}).decide_s("tide") == pytest.approx(7e-6)


# ---- driving a policy -----------------------------------------------------------------------------------------
def test_prefetch_outside_the_layers_is_one_line():
    pol = make_policy("all-gpu")
    res = Residency(pol, np.zeros((2, 4), dtype=bool), np.full(2, 4))
    assert [a.tolist() if hasattr(a, "tolist") else a for a in res.prefetch(Prefetch(1, np.array([2])))] == [1, [], [2]]
    with pytest.raises(TideError, match="prefetched into MoE layer -1 of 2"):
        res.prefetch(Prefetch(-1, np.array([0])))


def _steps(n: int, per_block: int = 4) -> list[StepInfo]:
    return [StepInfo(index=s, block=s // per_block, step_in_block=s % per_block, kind=0, tokens_forwarded=8)
            for s in range(n)]


def test_decide_times_one_per_call_and_a_bad_shape_is_one_line():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, size=(6, 3, 8))
    ctx = PolicyContext(num_moe_layers=3, num_experts=8, top_k=2, budget=np.full(3, 4), expert_bytes=100,
                        block_length=4, mode="prefix-recompute")
    t = decide_times(make_policy("tide", tau=2), counts, _steps(6), 4, ctx)
    assert t.shape == (18,) and np.all(t >= 0) and t.dtype == np.float64
    with pytest.raises(TideError, match="counts must be"):
        decide_times(make_policy("tide"), counts[0], _steps(1), 4, ctx)
    with pytest.raises(TideError, match="5 StepInfo for 6 steps"):
        decide_times(make_policy("tide"), counts, _steps(5), 4, ctx)


@pytest.mark.parametrize("policy", ["tide", "fetch-lru", "riptide", "tide-opt"])
def test_driving_leaves_the_engines_residency(policy):
    """drive's bookkeeping is the engine's: the same promotions, demotions and peak residency on the same counts
    (riptide exercises prefetches and per-layer budgets, fetch-lru streams)."""
    pytest.importorskip("simpy", exc_type=ImportError)
    pytest.importorskip("scipy", exc_type=ImportError)
    from sim.engine import simulate
    from traces.synthetic import default_config, generate

    cost = RooflineCostModel(TINY, HardwareProfile.load("h100-pcie5"))
    trace = generate(TINY, default_config(TINY, "prefix-recompute", gen_length=64, prompt_length=32, seed=3))
    budget = 12
    sim = simulate(trace, make_policy(policy), cost, budget)
    L, E = trace.num_moe_layers, trace.num_experts
    steps = [StepInfo(index=s, block=int(trace.block[s]), step_in_block=int(trace.step_in_block[s]),
                      kind=int(trace.kind[s]), tokens_forwarded=int(trace.tokens_forwarded[s]))
             for s in range(trace.num_steps)]
    ctx = PolicyContext(num_moe_layers=L, num_experts=E, top_k=trace.top_k, budget=np.full(L, budget),
                        expert_bytes=cost.expert_bytes, block_length=int(trace.header["generation"]["block_length"]),
                        mode=trace.mode, cost=cost)
    res, us = drive(make_policy(policy), trace.counts, steps, budget, ctx)
    assert us.shape == (trace.num_steps * L,)
    assert res.moves.promotions == sim.counters.promotions > 0
    assert res.moves.demotions == sim.counters.demotions
    np.testing.assert_array_equal(res.max_resident, sim.max_resident)


# ---- the engine charges the measured figure -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_trace():
    pytest.importorskip("simpy", exc_type=ImportError)
    pytest.importorskip("scipy", exc_type=ImportError)
    from traces.synthetic import default_config, generate

    return generate(TINY, default_config(TINY, "prefix-recompute", gen_length=64, prompt_length=32, seed=1))


def test_engine_charges_the_profiles_decide_time(tiny_trace):
    from sim.engine import simulate

    trace = tiny_trace
    plain = RooflineCostModel(TINY, HardwareProfile.from_dict(_profile_dict()))
    measured = RooflineCostModel(TINY, HardwareProfile.from_dict(_profile_dict(tide=250.0)))
    calls = trace.num_steps * trace.num_moe_layers
    serial = ExecutorProfile.from_dict({"name": "serial", "overlap": False})  # nothing overlaps: times add up
    a = simulate(trace, make_policy("tide"), plain, 16, executor=serial)
    b = simulate(trace, make_policy("tide"), measured, 16, executor=serial)
    assert a.busy_s["host"] == 0.0 and b.busy_s["host"] == pytest.approx(calls * 250e-6, rel=1e-12)
    assert b.sim_time_s - a.sim_time_s == pytest.approx(calls * 250e-6, rel=1e-9)
    assert b.counters == a.counters  # a price, not a different plan
    # tide-moe (the default) charges it on its host thread too; a policy the table does not name: nothing
    moe = simulate(trace, make_policy("tide"), measured, 16)
    assert moe.busy_s["host"] == pytest.approx(calls * 250e-6, rel=1e-12)
    assert moe.sim_time_s > simulate(trace, make_policy("tide"), plain, 16).sim_time_s
    assert simulate(trace, make_policy("static"), measured, 16).busy_s["host"] == 0.0
    # tide-reference keeps its own table (14 us for tide, plus its 15 us host sync)
    ref_a = simulate(trace, make_policy("tide"), plain, 16, executor="tide-reference")
    ref_b = simulate(trace, make_policy("tide"), measured, 16, executor="tide-reference")
    assert ref_a.sim_time_s == ref_b.sim_time_s and ref_b.busy_s["host"] == pytest.approx(calls * 29e-6, rel=1e-12)
