"""Each policy on small hand-computed cases with a constant cost model.

ConstantCostModel: step 1 s, MoE pre-expert work 1 s per layer, 0.1 s per active GPU expert, 1 s per active CPU
expert, copies 0.01 s per byte; an expert is 100 bytes, a token's activation 1 byte.
"""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import numpy as np

from simcases import tiny_trace
from offload.cost import ConstantCostModel
from offload.executor import ExecutorProfile
from sim.engine import simulate
from offload.errors import TideError
from offload.policies import KEEP, LayerDecision, Policy, Prefetch, make_policy

COST = ConstantCostModel()
# one MoE layer, 4 experts, top-1, two tokens per step; step 0 uses experts 0 and 1, step 1 uses 2 and 3
COUNTS = [[[1, 1, 0, 0]], [[0, 0, 1, 1]]]


def run(policy, budget=2, trace=None, **kw):
    return simulate(trace or tiny_trace(COUNTS, **kw), policy, COST, budget)


def test_all_gpu_is_dense_plus_experts():
    r = run(make_policy("all-gpu"))
    assert r.sim_time_s == pytest.approx(2 * (1 + 1 + 0.2))
    assert (r.counters.promotions, r.counters.demotions, r.counters.cpu_assignments, r.counters.gpu_assignments) == (0, 0, 0, 4)
    assert r.counters.h2d_bytes == r.counters.d2h_bytes == 0 and r.counters.hit_ratio == 1.0
    assert r.tokens_per_s == pytest.approx(2 / 4.4)


def test_cpu_route_sends_misses_to_cpu():
    r = run(make_policy("cpu-route"))
    # step 1: no GPU expert; CPU path = D2H 2 B (0.02) + 2 experts (2.0) + H2D 2 B (0.02)
    assert r.sim_time_s == pytest.approx(2.2 + (1 + 1 + 0 + 0.02 + 2.0 + 0.02))
    assert (r.counters.cpu_assignments, r.counters.gpu_assignments, r.counters.promotions) == (2, 2, 0)
    assert r.counters.d2h_bytes == 2 and r.counters.h2d_bytes == 2 and r.counters.hit_ratio == 0.5
    np.testing.assert_allclose(r.step_times_s, [2.2, 4.04])


def test_static_places_the_first_steps_most_used_once():
    counts = [[[0, 0, 3, 1]], [[0, 0, 2, 2]]]
    r = run(make_policy("static"), trace=tiny_trace(counts))
    # step 0 loads experts 2 and 3 (200 B, 2 s) once; afterwards everything hits
    assert (r.counters.promotions, r.counters.demotions, r.counters.cpu_assignments) == (2, 2, 0)
    assert r.sim_time_s == pytest.approx((1 + 1 + 2 + 0.2) + 2.2)


def test_static_profiles_a_prefix_then_never_moves():
    # budget 2; step 0 favours expert 0, steps 0-1 summed favour 2 and 3, step 2 would favour 1
    counts = [[[3, 0, 2, 2]], [[0, 0, 2, 2]], [[0, 5, 0, 0]]]
    r = run(make_policy("static", profile_steps=2), trace=tiny_trace(counts))
    # steps 0: experts 0, 1 resident (id order), misses 2, 3 on the CPU; step 1: place {2, 3} (2 promotions, 2
    # demotions); step 2: expert 1 is missed but nothing moves any more
    assert (r.counters.promotions, r.counters.demotions) == (2, 2)
    assert r.counters.cpu_assignments == 4 + 5


def test_fetch_lru_fetches_every_miss():
    r = run(make_policy("fetch-lru"))
    # step 1: evict 0 and 1, fetch 2 and 3 synchronously (200 B = 2 s), then 2 GPU experts
    assert r.sim_time_s == pytest.approx(2.2 + (1 + 1 + 2 + 0.2))
    assert (r.counters.promotions, r.counters.demotions, r.counters.cpu_assignments, r.counters.h2d_bytes) == (2, 2, 0, 200)


def test_fetch_lru_evicts_least_recently_used():
    counts = [[[1, 0, 0, 0]], [[0, 1, 0, 0]], [[0, 0, 1, 0]], [[1, 0, 0, 0]]]
    r = run(make_policy("fetch-lru"), trace=tiny_trace(counts))
    # resident {0,1}; step 2 needs 2: LRU of the idle {0 (used step 0), 1 (step 1)} is 0 -> step 3 misses 0
    assert (r.counters.promotions, r.counters.demotions) == (2, 2)


def test_fetch_lru_streams_overflow():
    counts = [[[1, 1, 1, 1]]]
    r = run(make_policy("fetch-lru"), budget=1, trace=tiny_trace(counts))
    # resident {0}; 3 misses, no free or idle slot: all three streamed (fetched, used, dropped)
    assert (r.counters.promotions, r.counters.demotions, r.counters.h2d_bytes, r.counters.cpu_assignments) == (3, 3, 300, 0)
    assert r.max_resident.max() <= 1
    # tide-moe streams them through its staging slots (one chunk of up to 4): the resident expert's 0.1 s runs
    # under the 3 s copy, then the chunk's 0.3 s
    assert r.sim_time_s == pytest.approx(1 + 1 + 3.0 + 0.3)
    # copied with the promotions as one blocking batch (no staging), everything waits for the copy
    one_batch = ExecutorProfile(name="one-batch", staging_slots=0)
    r = simulate(tiny_trace(counts), make_policy("fetch-lru"), COST, 1, executor=one_batch)
    assert r.sim_time_s == pytest.approx(1 + 1 + 3.0 + 0.4)


def test_tide_tau1_refreshes_like_fetch_here():
    r = run(make_policy("tide", tau=1), block=[0, 1], step_in_block=[0, 0])
    assert r.sim_time_s == pytest.approx(2.2 + 4.2)
    assert (r.counters.promotions, r.counters.demotions, r.counters.cpu_assignments) == (2, 2, 0)


def test_tide_frozen_between_refreshes():
    # block 1, in-block step 1 with tau 2: no refresh, misses go to the CPU
    r = run(make_policy("tide", tau=2), block=[1, 1], step_in_block=[0, 1])
    assert (r.counters.promotions, r.counters.cpu_assignments) == (0, 2)
    assert r.sim_time_s == pytest.approx(2.2 + 4.04)


def test_tide_first_block_refreshes_every_step():
    r = run(make_policy("tide", tau=8), block=[0, 0], step_in_block=[0, 1])
    assert r.counters.promotions == 2 and r.counters.cpu_assignments == 0


def test_tide_keeps_only_positive_counts_and_caps_demotions():
    # budget 3, resident {0,1,2}; step refreshes with counts on expert 3 only: promote 3, demote one (0)
    counts = [[[0, 0, 0, 4]]]
    r = run(make_policy("tide", tau=1), budget=3, trace=tiny_trace(counts))
    assert (r.counters.promotions, r.counters.demotions) == (1, 1)


def test_tide_skips_commit_forwards():
    r = run(make_policy("tide", tau=1), block=[1, 1], step_in_block=[0, 0], kind=[0, 1])
    assert r.counters.cpu_assignments == 2  # the commit forward (kind 1) did not refresh


def test_tau_must_be_positive():
    with pytest.raises(TideError, match="tau"):
        make_policy("tide", tau=0)
    with pytest.raises(TideError, match="unknown policy"):
        make_policy("nope")


class _Overlap(Policy):
    name = "overlap-test"

    def decide(self, view):
        return LayerDecision(overlap_cpu=True)


def test_overlap_hides_gpu_experts_under_cpu():
    counts = [[[1, 1, 1, 0]]]
    r = run(_Overlap(), budget=2, trace=tiny_trace(counts))
    # GPU experts 0.2 s run while the CPU path takes 0.01 + 1 + 0.01: layer = 1.02
    assert r.sim_time_s == pytest.approx(1 + 1 + 1.02)
    serial = run(make_policy("cpu-route"), budget=2, trace=tiny_trace(counts))
    assert serial.sim_time_s == pytest.approx(1 + 1 + 0.2 + 1.02)


class _Prefetcher(Policy):
    name = "prefetch-test"

    def decide(self, view):
        if view.step.index == 0:
            return LayerDecision(prefetch=(Prefetch(layer=0, promote=np.array([2, 3]), demote=np.array([0, 1])),))
        return KEEP


def test_prefetch_overlaps_next_step():
    r = run(_Prefetcher())
    # step 0 ends at 2.2; prefetch (2 s) lands at 4.2 while the GPU does step 1's 2 s dense work (to 4.2)
    assert r.sim_time_s == pytest.approx(4.4)
    assert (r.counters.promotions, r.counters.demotions, r.counters.h2d_bytes, r.counters.cpu_assignments) == (2, 2, 200, 0)


class _SlowPrefetcher(_Prefetcher):
    name = "slow-prefetch-test"


def test_prefetch_waits_for_arrival():
    slow = ConstantCostModel(h2d_per_byte_s=0.03)  # 200 B take 6 s
    r = simulate(tiny_trace(COUNTS), _SlowPrefetcher(), slow, 2)
    # the GPU waits from 4.2 until the copy lands at 2.2 + 6 = 8.2, then 0.2 of experts
    assert r.sim_time_s == pytest.approx(8.4)


class _Cheater(Policy):
    name = "cheater"

    def decide(self, view):
        return LayerDecision(promote=np.flatnonzero(~view.resident))


def test_engine_rejects_budget_violation():
    with pytest.raises(TideError, match="exceeded the budget"):
        run(_Cheater())
