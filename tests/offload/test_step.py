"""offload.step: the per-layer protocol every executor follows -- budget, context and placement, one layer's
decide -> apply -> plan, staging chunks, prefetch bookkeeping over an executor's handles, decide() timing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.policies import LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo, make_policy
from offload.step import RunShape, Stepper, layer_budget

SHAPE = RunShape(num_moe_layers=3, num_experts=8, top_k=2, expert_bytes=100, token_bytes=4, block_length=4)


def _steps(n: int, per_block: int = 4) -> list[StepInfo]:
    return [StepInfo(s, s // per_block, s % per_block, 0, 8) for s in range(n)]


class Scripted(Policy):
    """Plays back one decision per call; checks it was given its context before placing experts."""

    name = "scripted"

    def __init__(self, decisions: list[LayerDecision]) -> None:
        super().__init__()
        self.decisions = list(decisions)

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        assert self.ctx is ctx  # bound first
        return super().initial_placement(ctx)

    def decide(self, view: LayerView) -> LayerDecision:
        return self.decisions.pop(0)


def _stepper(decisions: list[LayerDecision], budget: Any = 4, slots: int = 0, **kw: Any) -> Stepper[str]:
    return Stepper(Scripted(decisions), budget, SHAPE, executor=ExecutorProfile(name="x", staging_slots=slots), **kw)


# ---- once per run -------------------------------------------------------------------------------------------
def test_layer_budget():
    assert layer_budget(make_policy("tide"), None, 3, 8).tolist() == [8, 8, 8]
    assert layer_budget(make_policy("all-gpu"), 2, 3, 8).tolist() == [8, 8, 8]  # needs none: every expert
    assert layer_budget(make_policy("tide"), [1, 2, 3], 3, 8).tolist() == [1, 2, 3]
    for bad in (0, 9, [1, 0, 2]):
        with pytest.raises(TideError, match="budget must be between 1 and 8 experts per layer") as exc:
            layer_budget(make_policy("tide"), bad, 3, 8)
        assert "\n" not in str(exc.value)


def test_context_and_placement():
    class Wide(Scripted):
        def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
            return np.zeros((3, 9), dtype=bool)

    st = _stepper([], budget=[2, 3, 4])
    ctx = st.policy.ctx
    assert ctx.budget.tolist() == [2, 3, 4] and ctx.budget is not st.budget and ctx.expert_bytes == 100
    assert ctx.trace is None and st.residency.resident.sum(axis=1).tolist() == [2, 3, 4]
    with pytest.raises(TideError, match=r"initial placement has shape \(3, 9\), expected \(3, 8\)"):
        Stepper(Wide([]), 4, SHAPE)


def test_the_trace_goes_to_non_causal_policies_only():
    class Seer(Scripted):
        causal = False

    assert Stepper(Scripted([]), 4, SHAPE, trace="T").policy.ctx.trace is None
    assert Stepper(Seer([]), 4, SHAPE, trace="T").policy.ctx.trace == "T"


# ---- one layer ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("slots, chunks", [(0, []), (1, [[4], [5], [6]]), (2, [[4], [5], [6]]), (4, [[4, 5], [6]])])
def test_step_plans_and_chunks(slots, chunks):
    log: list = []
    st = _stepper([LayerDecision(stream=[4, 5, 6], demote=[0], promote=[7])], slots=slots, log=log)
    counts = np.array([1, 1, 0, 0, 2, 2, 2, 3])
    out = st.step(_steps(1)[0], 0, counts)
    assert [c.tolist() for c in out.chunks] == chunks
    p = out.plan
    assert p.gpu_mask.tolist() == [False, True, False, False, True, True, True, True] and p.cpu_counts[0] == 1
    assert p.weight_h2d_bytes == 4 * 100 and p.act_bytes == 4 and log == [(0, 0, out)]
    c = st.counters()
    assert (c.promotions, c.demotions, c.cpu_assignments, c.gpu_assignments) == (4, 4, 1, 10)
    st.reset_counters()
    assert st.counters().promotions == 0 and st.residency.resident[0, 7]


def test_run_times_every_decide_and_refuses_bad_shapes():
    counts = np.random.default_rng(0).integers(0, 4, size=(6, 3, 8))
    st = Stepper(make_policy("tide", tau=2), 4, SHAPE, timed=True)
    st.run(counts, _steps(6))
    assert st.decide_us.shape == (18,) and st.decide_us.dtype == np.float64 and np.all(st.decide_us >= 0)
    assert Stepper(make_policy("tide"), 4, SHAPE).decide_us.size == 0  # untimed: nothing kept
    with pytest.raises(TideError, match="counts must be"):
        Stepper(make_policy("tide"), 4, SHAPE).run(counts[0], _steps(1))
    with pytest.raises(TideError, match="5 StepInfo for 6 steps"):
        Stepper(make_policy("tide"), 4, SHAPE).run(counts, _steps(5))


# ---- prefetches -----------------------------------------------------------------------------------------------
def test_prefetch_handles_and_arrivals():
    """Handles that bring experts in are tracked per target layer; the GPU waits for those it reads and not yet
    done; done and waited-for ones leave the list."""
    pf = (
        Prefetch(1, np.array([4]), np.array([0])),
        Prefetch(1, np.array([5]), np.array([1])),
        Prefetch(2, np.array([], dtype=np.int64), np.array([0])),
    )
    st = _stepper([LayerDecision(prefetch=pf), LayerDecision()])
    issued = []

    def issue(layer: int, demote: np.ndarray, promote: np.ndarray) -> str:
        issued.append((layer, demote.tolist(), promote.tolist()))
        return f"h{len(issued)}"

    info = _steps(1)[0]
    dec = st.step(info, 0, np.zeros(8, dtype=np.int64)).decision
    assert st.prefetch(dec.prefetch, issue) == ["h1", "h2", "h3"]
    assert issued == [(1, [0], [4]), (1, [1], [5]), (2, [0], [])]
    assert [h for h, _ in st.pending[1]] == ["h1", "h2"] and st.pending[2] == []  # h3 brings nothing in
    assert st.residency.resident[1, [4, 5]].all() and not st.residency.resident[2, 0]
    p = st.step(info, 1, np.array([0, 0, 0, 0, 0, 3, 0, 0])).plan  # reads expert 5 only
    assert st.arrivals(1, p, lambda h: False) == ["h2"] and [h for h, _ in st.pending[1]] == ["h1"]
    assert st.arrivals(1, p, lambda h: True) == [] and st.pending[1] == []


# ---- the decide() timer's stepping is the engine's ------------------------------------------------------------
@pytest.mark.parametrize("policy", ["tide", "fetch-lru", "riptide", "tide-opt"])
def test_run_leaves_the_engines_residency_and_plans(policy):
    """Stepping without copies (the decide() timer) gives the engine's plans, promotions, demotions and peak
    residency on the same counts (riptide prefetches and re-partitions budgets, fetch-lru streams)."""
    pytest.importorskip("simpy", exc_type=ImportError)
    pytest.importorskip("scipy", exc_type=ImportError)
    from offload.cost import RooflineCostModel
    from offload.hardware import HardwareProfile
    from offload.model_spec import ModelSpec
    from offload.step import trace_steps
    from sim.engine import simulate
    from traces.synthetic import default_config, generate

    tiny = ModelSpec.load("llada2-tiny")
    cost = RooflineCostModel(tiny, HardwareProfile.load("h100-pcie5"))
    trace = generate(tiny, default_config(tiny, "prefix-recompute", gen_length=64, prompt_length=32, seed=3))
    engine: list = []
    sim = simulate(trace, make_policy(policy), cost, 12, plans=engine)
    shape = RunShape(
        trace.num_moe_layers,
        trace.num_experts,
        trace.top_k,
        cost.expert_bytes,
        cost.token_bytes,
        int(trace.header["generation"]["block_length"]),
        trace.mode,
    )
    stepped: list = []
    st = Stepper(make_policy(policy), 12, shape, cost=cost, log=stepped)
    st.run(trace.counts, trace_steps(trace))
    assert st.counters() == sim.counters and sim.counters.promotions > 0
    np.testing.assert_array_equal(st.residency.max_resident, sim.max_resident)
    assert len(stepped) == len(engine) == trace.num_steps * trace.num_moe_layers
    for (s, l, a), (s2, l2, b) in zip(stepped, engine):
        assert (s, l) == (s2, l2)
        np.testing.assert_array_equal(a.plan.gpu_counts, b.plan.gpu_counts)
        np.testing.assert_array_equal(a.plan.cpu_counts, b.plan.cpu_counts)
