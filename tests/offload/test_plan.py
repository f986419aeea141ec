"""The layer-execution plan: hand-computed cases, and its invariants on random residencies and decisions
(masks partition the active experts, assignments sum to the counts, bytes follow Residency's moves)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offload.errors import TideError
from offload.plan import PlanTotals, plan_layer
from offload.policies import KEEP, LayerDecision, Prefetch, make_policy
from offload.policies.residency import MoveCounters, Residency
from offload.results import Counters

EXPERT_BYTES, TOKEN_BYTES = 100, 8


def apply_and_plan(resident_before, counts, dec):
    """What the engine and the store both do: Residency.apply (the one validation), then the applied decision's plan."""
    resident_before = np.asarray(resident_before, dtype=bool)
    E = resident_before.size
    res = Residency(make_policy("fetch-lru"), resident_before[None, :], np.array([E]))
    moved = res.apply(0, dec)
    row = res.resident[0]
    before = row.copy()
    plan = plan_layer(row, *moved, np.asarray(counts), dec, EXPERT_BYTES, TOKEN_BYTES)
    np.testing.assert_array_equal(row, before)  # the engine's or store's live residency is only read
    return plan, res


def test_stream_promote_and_cpu_by_hand():
    # experts 0-2 resident; 1 and 2 demoted, 3 promoted, 4 and 6 streamed (6 idle this step), 5 never resident
    counts = [2, 0, 1, 3, 4, 1, 0]
    dec = LayerDecision(demote=[1, 2], promote=[3], stream=[4, 6], overlap_cpu=True)
    plan, res = apply_and_plan([1, 1, 1, 0, 0, 0, 0], counts, dec)
    assert np.flatnonzero(plan.resident_mask).tolist() == [0, 3]
    assert np.flatnonzero(plan.gpu_mask).tolist() == [0, 3, 4]
    assert np.flatnonzero(plan.cpu_mask).tolist() == [2, 5]
    assert plan.gpu_counts.tolist() == [2, 0, 0, 3, 4, 0, 0] and plan.cpu_counts.tolist() == [0, 0, 1, 0, 0, 1, 0]
    assert (plan.gpu_assignments, plan.cpu_assignments) == (9, 2)
    assert plan.weight_h2d_bytes == 3 * EXPERT_BYTES  # an idle streamed expert is still copied
    assert plan.act_bytes == 2 * TOKEN_BYTES
    assert (plan.demote.tolist(), plan.promote.tolist(), plan.stream.tolist()) == ([1, 2], [3], [4, 6])
    assert plan.overlap_cpu
    assert res.moves.promotions * EXPERT_BYTES == plan.weight_h2d_bytes


def test_keep_moves_nothing_and_leaves_prefetch_to_the_executor():
    pf = (Prefetch(layer=0, promote=np.array([3])),)
    plan, res = apply_and_plan([1, 1, 0, 0], [0, 2, 3, 0], LayerDecision(prefetch=pf))
    assert not plan.overlap_cpu
    assert res.resident[0].tolist() == [True, True, False, False]  # applied later, after the experts ran
    assert (plan.gpu_assignments, plan.cpu_assignments, plan.weight_h2d_bytes) == (2, 3, 0)
    idle, _ = apply_and_plan([1, 0], [0, 0], KEEP)
    assert not idle.gpu_mask.any() and not idle.cpu_mask.any() and idle.act_bytes == 0


def test_invalid_decisions_are_refused_before_any_plan():
    with pytest.raises(TideError, match="streamed a resident"):
        apply_and_plan([1, 0], [1, 1], LayerDecision(stream=[0]))


def test_totals_sum_plans():
    t = PlanTotals()
    assert Counters.of(MoveCounters(), t, EXPERT_BYTES).hit_ratio == 1.0  # nothing routed: nothing missed
    for counts in ([2, 0, 1, 3], [0, 5, 0, 1]):
        t.add(apply_and_plan([1, 0, 0, 1], counts, KEEP)[0])
    assert (t.gpu_assignments, t.cpu_assignments) == (6, 6)
    c = Counters.of(MoveCounters(promotions=2, demotions=1), t, EXPERT_BYTES)
    assert t.act_bytes == 6 * TOKEN_BYTES and c.hit_ratio == 0.5
    assert (c.h2d_weight_bytes, c.h2d_bytes, c.d2h_bytes) == (200, 200 + 6 * TOKEN_BYTES, 6 * TOKEN_BYTES)


@st.composite
def layer_cases(draw):
    """A residency, counts and a decision Residency accepts: demote from the resident, promote and stream from
    the rest (disjoint)."""
    E = draw(st.integers(1, 24))
    resident = np.array(draw(st.lists(st.booleans(), min_size=E, max_size=E)))
    counts = np.array(draw(st.lists(st.integers(0, 9), min_size=E, max_size=E)), dtype=np.int64)
    role = np.array(draw(st.lists(st.integers(0, 3), min_size=E, max_size=E)))  # 1 move, 2 stream, 3 both
    demote = np.flatnonzero(resident & (role % 2 == 1))
    promote = np.flatnonzero(~resident & (role == 1))
    stream = np.flatnonzero(~resident & (role >= 2))
    dec = LayerDecision(demote=demote, promote=promote, stream=stream, overlap_cpu=draw(st.booleans()))
    return resident, counts, dec


@settings(max_examples=300, deadline=None)
@given(layer_cases())
def test_plan_invariants(case):
    resident, counts, dec = case
    plan, res = apply_and_plan(resident, counts, dec)
    after = res.resident[0]
    active = counts > 0
    streamed = np.isin(np.arange(counts.size), dec.stream)
    assert not (plan.gpu_mask & plan.cpu_mask).any()
    np.testing.assert_array_equal(plan.gpu_mask | plan.cpu_mask, active)
    # per expert, by the protocol's definition (base.py): resident or streamed runs on the GPU
    for e in range(counts.size):
        assert plan.gpu_mask[e] == (active[e] and (after[e] or streamed[e]))
        assert plan.resident_mask[e] == (active[e] and after[e])
    np.testing.assert_array_equal(plan.gpu_counts + plan.cpu_counts, counts)
    assert plan.gpu_assignments == plan.gpu_counts.sum() and plan.cpu_assignments == plan.cpu_counts.sum()
    assert plan.gpu_assignments + plan.cpu_assignments == counts.sum()
    assert plan.weight_h2d_bytes == res.moves.promotions * EXPERT_BYTES
    assert plan.act_bytes == plan.cpu_assignments * TOKEN_BYTES
    assert plan.overlap_cpu == dec.overlap_cpu
