"""The engine under executor profiles: the default reproduces the engine of before, and each executor field
prices the plan as its equation says (hand-computed with ConstantCostModel: dense 1 s per step and per layer,
0.1 s per GPU expert, 1 s per CPU expert, 0.01 s per byte copied, 100 B an expert, 1 B a token's row)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("simpy", exc_type=ImportError)

from simcases import SwapAndOverlap, tiny_trace
from offload.cost import ConstantCostModel, RooflineCostModel
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.results import RESOURCES, WHAT
from sim.engine import mandatory_gpu_time, simulate
from traces.synthetic import default_config, generate

COST = ConstantCostModel()
SERIAL = {"overlap": False}


def _x(**kw) -> ExecutorProfile:
    return ExecutorProfile.from_dict({"name": "test", **kw})


SWAP2 = [[[1, 5, 1]]] * 2  # one MoE layer, experts 0 and 1 resident (budget 2)


@pytest.fixture(scope="module")
def mini():
    spec = ModelSpec.load("llada2.0-mini")
    cost = RooflineCostModel(spec, HardwareProfile.load("h100-pcie5"))
    trace = generate(spec, default_config(spec, "prefix-recompute", gen_length=64, prompt_length=32, seed=1))
    return cost, trace


@pytest.mark.parametrize("policy", ["cpu-route", "fetch-lru", "tide", "riptide", "tide-opt"])
def test_default_executor_is_tide_moe_and_changes_nothing(mini, policy):
    cost, trace = mini
    a = simulate(trace, make_policy(policy), cost, 64)
    b = simulate(trace, make_policy(policy), cost, 64, executor="tide-moe")
    assert a.sim_time_s == b.sim_time_s and a.counters == b.counters
    np.testing.assert_array_equal(a.step_times_s, b.step_times_s)
    assert a.busy_s["host"] == 0.0
    assert mandatory_gpu_time(trace, cost, ExecutorProfile.load("tide-moe")) == mandatory_gpu_time(trace, cost)


def test_reference_executor_is_slower_and_counts_the_same(mini):
    cost, trace = mini
    for policy in ("cpu-route", "tide", "riptide"):
        moe = simulate(trace, make_policy(policy), cost, 64)
        ref = simulate(trace, make_policy(policy), cost, 64, executor="tide-reference", timeline=True)
        assert ref.counters == moe.counters  # the same plan: only its price differs
        assert ref.sim_time_s > moe.sim_time_s and ref.busy_s["host"] > 0
        # nothing overlaps: the busy intervals of all resources tile the makespan without overlapping
        tl = ref.timeline
        work = tl.what != WHAT.index("wait")
        assert np.sum(tl.end[work] - tl.start[work]) == pytest.approx(ref.sim_time_s, rel=1e-9)
        floor = mandatory_gpu_time(trace, cost, ExecutorProfile.load("tide-reference"))
        assert ref.sim_time_s >= floor > mandatory_gpu_time(trace, cost)  # lm_head over the prefix, in fp32


def test_serial_executor_pays_its_activation_copies():
    # step 0: dense 2 + weights 1 + GPU {0, 2} 0.2 + CPU path (0.05 + 1 + 0.05) + prefetch 1 = 5.3
    # step 1: dense 2 + GPU {1, 2} 0.2 + CPU expert 0 (0.01 + 1 + 0.01) = 3.22
    r = simulate(tiny_trace(SWAP2), SwapAndOverlap(), COST, 2, executor=_x(**SERIAL))
    np.testing.assert_allclose(r.step_times_s, [5.3, 3.22])
    # one device (serial mode) instead: the same order, activations free (tests/sim/test_engine.py: 8.4)
    assert simulate(tiny_trace(SWAP2), SwapAndOverlap(), COST, 2, serial=True,
                    executor=_x(**SERIAL)).sim_time_s == pytest.approx(8.4)


def test_demotions_copied_back():
    # + the demotion of expert 1 at step 0 (1 s, before the promotion) and the prefetch's demotion of expert 0 (1 s)
    r = simulate(tiny_trace(SWAP2), SwapAndOverlap(), COST, 2, executor=_x(demote_d2h=True, **SERIAL), timeline=True)
    np.testing.assert_allclose(r.step_times_s, [7.3, 3.22])
    tl = r.timeline
    dem = tl.what == WHAT.index("demote_d2h")
    assert dem.sum() == 2 and np.all(tl.resource[dem] == RESOURCES.index("d2h"))
    np.testing.assert_allclose(tl.start[dem], [2.0, 5.3])  # dense 0-2, demote 2-3, weights 3-4, GPU 4-4.2, CPU 4.2-5.3
    assert r.counters.d2h_bytes == 6  # the counters are the runtime's: activations only
    # with overlap: dense 0-2, demotion 2-3 (blocking), weights 3-4 under the CPU path 3-4.1, GPU 4-4.2, then the
    # prefetch's demotion 4.2-5.2 before its copy 5.2-6.2
    r2 = simulate(tiny_trace(SWAP2[:1]), SwapAndOverlap(), COST, 2, executor=_x(demote_d2h=True))
    assert r2.sim_time_s == pytest.approx(1 + 1 + 1 + 1 + 0.2 + 1 + 1)


def test_pageable_copies_and_rows():
    # pageable: every copy at twice the time. step 0: 2 + 2 + 0.2 + (0.1 + 1 + 0.1) + 2 = 7.4; step 1: 2 + 0.2 + 1.04
    r = simulate(tiny_trace(SWAP2), SwapAndOverlap(), COST, 2,
                 executor=_x(host_memory="pageable", copy_granularity="projection", act_copies="per_expert", **SERIAL))
    np.testing.assert_allclose(r.step_times_s, [7.4, 3.24])


def test_expert_overheads():
    # 0.1 s per active GPU expert, 0.2 s per active CPU expert on top of (5.3, 3.22)
    r = simulate(tiny_trace(SWAP2), SwapAndOverlap(), COST, 2,
                 executor=_x(gpu_expert_overhead_us=1e5, cpu_expert_overhead_us=2e5, **SERIAL))
    np.testing.assert_allclose(r.step_times_s, [5.3 + 0.4, 3.22 + 0.4])


@pytest.mark.parametrize("slots,expected", [(0, 5.4), (1, 5.3), (2, 5.1), (8, 5.3)])
def test_streamed_experts_through_staging_halves(slots, expected):
    """fetch-lru, budget 1, resident {0}, experts 1-3 streamed (tests/sim/test_policies.py: 5.4 as one copy).
    slots 2 (chunks of 1, two halves): copies 2-3, 3-4, then the third waits for chunk 0's compute (3.1) and the
    engine: 4-5; GPU expert 0 2-2.1, chunks 3-3.1, 4-4.1, 5-5.1 -> 5.1. slots 1: copy, compute, copy, ... each
    copy after the previous compute: 2-3 | 3-3.1, 3.1-4.1 | 4.1-4.2, 4.2-5.2 | 5.2-5.3. slots 8: one chunk of 3,
    copy 2-5 under the resident expert, compute 5-5.3."""
    trace = tiny_trace([[[1, 1, 1, 1]]])
    r = simulate(trace, make_policy("fetch-lru"), COST, 1, executor=_x(staging_slots=slots), timeline=True)
    assert r.sim_time_s == pytest.approx(expected)
    assert r.counters.promotions == 3 and r.counters.h2d_weight_bytes == 300
    tl = r.timeline
    work = tl.what != WHAT.index("wait")
    for i in range(len(RESOURCES)):  # still one item at a time per resource
        sel = work & (tl.resource == i)
        order = np.argsort(tl.start[sel], kind="stable")
        assert np.all(tl.start[sel][order][1:] >= tl.end[sel][order][:-1] - 1e-12)


@pytest.mark.parametrize("policy,slots", [("fetch-lru", 8), ("fetch-lru", 2), ("fetch-lru", 1), ("tide", 8),
                                          ("riptide", 8)])
def test_staging_alone_in_closed_form_times_as_the_event_chain(mini, policy, slots):
    """A staged layer with no other copy or CPU job in flight is timed in closed form (sim.engine
    _staged_closed); a timeline run keeps the per-chunk event chain: the same instants to the bit."""
    cost, trace = mini
    x = ExecutorProfile.from_dict({**ExecutorProfile.load("tide-moe").to_dict(), "staging_slots": slots})
    fast, chain = (simulate(trace, make_policy(policy), cost, 8, executor=x, timeline=t) for t in (False, True))
    assert fast.sim_time_s == chain.sim_time_s and fast.busy_s == chain.busy_s
    assert np.array_equal(fast.step_times_s, chain.step_times_s) and fast.counters == chain.counters
    if policy == "fetch-lru":  # streams every miss, nothing else in flight: every layer alone
        assert fast.events < chain.events


def test_staging_in_serial_mode_is_copy_then_compute():
    # serial, chunks of 1: resident 2-2.1, then (copy 1 + compute 0.1) x 3 = 5.4
    r = simulate(tiny_trace([[[1, 1, 1, 1]]]), make_policy("fetch-lru"), COST, 1, serial=True,
                 executor=_x(staging_slots=2))
    assert r.sim_time_s == pytest.approx(5.4)


def test_executor_option_and_sweep_task(tmp_path):
    from offload.errors import TideError
    from offload.trace_io import write_trace
    from sim.explore import _check_args, parse_args
    from sim.sweep import Task, run_task

    with pytest.raises(TideError, match="unknown executor 'nope'"):
        _check_args(parse_args(["--executor", "nope"]))
    _check_args(parse_args(["--study", "paper", "--executor", "tide-reference"]))  # a study runs under it too
    _check_args(parse_args(["--executor", "tide-reference"]))
    assert parse_args([]).executor is None  # the default executor
    # a sweep task carries the executor as a dict and runs under it
    spec = ModelSpec.load("llada2.0-mini")
    trace = generate(spec, default_config(spec, "prefix-recompute", gen_length=32, prompt_length=16, seed=3))
    path = str(write_trace(trace, tmp_path / "t.npz"))
    model = {"name": spec.name, "config": dict(spec.raw_config)}
    hw = HardwareProfile.load("h100-pcie5").to_dict()
    plain = Task(path, "t", model, hw, 64, "cpu-route")
    ref = Task(path, "t", model, hw, 64, "cpu-route", executor=ExecutorProfile.load("tide-reference").to_dict())
    cost = RooflineCostModel(spec, HardwareProfile.load("h100-pcie5"))
    assert run_task(plain).sim_time_s == simulate(trace, make_policy("cpu-route"), cost, 64).sim_time_s
    assert run_task(ref).sim_time_s == pytest.approx(
        simulate(trace, make_policy("cpu-route"), cost, 64, executor="tide-reference").sim_time_s)
