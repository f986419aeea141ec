"""oracle: hand-computed plans with the constant cost model, its mirrored clock equal to the engine's, never slower
than any causal policy on synthetic and random traces, and refused by the runtime.

ConstantCostModel: step 1 s, MoE pre-expert work 1 s per layer, 0.1 s per active GPU expert, 1 s per active CPU
expert, copies 0.01 s per byte; an expert is 100 bytes, a token's activation 1 byte.
"""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error
pytest.importorskip("scipy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

from functools import lru_cache

import dataclasses

import numpy as np

from simcases import tiny_trace
from offload.cost import ConstantCostModel, RooflineCostModel
from offload.executor import ExecutorProfile
from sim.engine import simulate
from offload.errors import TideError
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import POLICIES, make_policy
from offload.policies.oracle import Oracle
from offload.trace_check import make_trace
from offload.trace import model_header
from traces.synthetic import default_config, generate

COST = ConstantCostModel()
MINI = ModelSpec.load("llada2.0-mini")


# the executor the oracle's mirrored clock is exact for: streamed experts copied with the promotions in one batch
MIRRORED = dataclasses.replace(ExecutorProfile.load("tide-moe"), staging_slots=0, shared_dram=False)


def run(counts, budget, cost=COST, **kw):
    policy = Oracle()
    return policy, simulate(tiny_trace(counts, **kw), policy, cost, budget, executor=MIRRORED)


def test_registered_as_non_causal():
    assert POLICIES["oracle"] is Oracle and not Oracle.causal
    assert make_policy("oracle").params() == {} and make_policy("oracle", discount=0.5).params() == {"discount": 0.5}
    with pytest.raises(TideError, match="discount"):
        make_policy("oracle", discount=1.0)


def test_prefetch_lands_just_in_time():
    # step 0 uses experts 0, 1 (loaded up front), step 1 uses 2, 3. After step 0's layer (t = 2.2) the link is
    # free until step 1's layer starts (4.2): 2 copies of 1 s fit, replacing 0 and 1. No wait: 4.4 s, the
    # all-gpu time
    policy, r = run([[[1, 1, 0, 0]], [[0, 0, 1, 1]]], 2)
    assert r.sim_time_s == pytest.approx(4.4) and policy.t == pytest.approx(4.4)
    assert (r.counters.promotions, r.counters.demotions, r.counters.cpu_assignments) == (2, 2, 0)


def test_misses_run_on_cpu_when_cheaper_than_a_fetch():
    # budget 1, expert 1 (3 tokens) loaded up front; expert 2 (1 token) misses: the CPU path (0.01 + 1 + 0.01)
    # overlaps the GPU's 0.1, beating a fetch (1 s) then 0.2 of GPU work
    _, r = run([[[0, 3, 1, 0]]], 1)
    assert r.sim_time_s == pytest.approx(1 + 1 + 1.02)
    assert (r.counters.cpu_assignments, r.counters.promotions) == (1, 0)


def test_misses_are_streamed_when_the_link_is_cheap():
    # copies at 0.001 s/byte: fetching expert 2 (0.1 s) then 0.2 s of GPU beats the CPU (1.002 s); no slot can
    # be freed (expert 1 is in use), so it is streamed
    _, r = run([[[0, 3, 1, 0]]], 1, cost=ConstantCostModel(h2d_per_byte_s=0.001, d2h_per_byte_s=0.001))
    assert r.sim_time_s == pytest.approx(1 + 1 + 0.1 + 0.2)
    assert (r.counters.cpu_assignments, r.counters.promotions, r.counters.demotions) == (0, 1, 1) and r.max_resident.max() <= 1


def test_overlapped_split_cpu_starts_at_the_decision():
    # budget 1, expert 1 (5 tokens) loaded up front; misses 2 (2 tokens) and 3 (1 token), 0.5 s each on the CPU,
    # 10 bytes a token. Fetching expert 2 (1 s, streamed: no slot can be freed) while the CPU path of expert 3
    # starts at the decision (t = 2: D2H 0.1, CPU 0.5) -- its results (0.1) queue behind the weight copy on the
    # H2D engine: 3.0 + 0.1 = 3.1, after the GPU's 3.0 + 0.02. All-CPU: 2 + 0.3 + 1 + 0.3 = 3.6; all-fetch 4.03
    cost = ConstantCostModel(gpu_expert_s=0.01, cpu_expert_s=0.5, token_bytes=10)
    policy, r = run([[[0, 5, 2, 1]]], 1, cost=cost)
    assert r.sim_time_s == pytest.approx(3.1) and policy.t == pytest.approx(3.1)
    assert (r.counters.cpu_assignments, r.counters.promotions, r.counters.demotions) == (1, 1, 1) and r.max_resident.max() <= 1


def test_needs_the_trace_and_a_cost_model():
    from offload.policies.base import PolicyContext

    ctx = PolicyContext(num_moe_layers=1, num_experts=4, top_k=1, budget=np.array([2]), expert_bytes=100,
                        block_length=2, mode="block-cache", cost=COST, trace=None)
    with pytest.raises(TideError, match="simulator only"):
        Oracle().initial_placement(ctx)


def test_refused_by_the_runtime():
    torch = pytest.importorskip("torch")
    from runtime.expert_store import ExpertStore

    spec = ModelSpec.load("llada2-tiny")
    E, H, I = spec.num_experts, spec.hidden_size, spec.moe_intermediate_size
    experts = [{"gate": torch.zeros(E, I, H), "up": torch.zeros(E, I, H), "down": torch.zeros(E, H, I)}
               for _ in range(spec.num_moe_layers)]
    with pytest.raises(TideError, match="simulator only"):
        ExpertStore(spec, experts, make_policy("oracle"), 8, torch.device("cpu"), torch.float32)


# ---- never slower than a causal policy --------------------------------------------------------------------
CAUSAL = [("cpu-route", {}), ("static", {}), ("static", {"profile_steps": 3}), ("fetch-lru", {}), ("tide-opt", {}),
          ("riptide", {})] + [("tide", {"tau": t}) for t in range(1, 9)]


def random_trace(seed: int, steps: int = 16, tokens: int = 8):
    """Unstructured routing (Dirichlet popularity per layer, multinomial per step) of a mini-shaped model."""
    rng = np.random.default_rng(seed)
    L, E, k = MINI.num_moe_layers, MINI.num_experts, MINI.top_k
    pop = rng.dirichlet(np.full(E, 0.3), size=L)
    counts = np.stack([[rng.multinomial(tokens * k, pop[l]) for l in range(L)] for _ in range(steps)])
    header = {"version": 1, "model": model_header(MINI),
              "generation": {"mode": "block-cache", "block_length": 32, "gen_length": 1024, "steps": 32,
                             "threshold": 0.95, "prompt_length": 0},
              "origin": {"kind": "synthetic", "seed": seed}}
    s = np.arange(steps)
    return make_trace(header, counts, block=s // 4, step_in_block=s % 4, tokens_forwarded=np.full(steps, tokens),
                      context_tokens=np.full(steps, tokens) + 32 * (s // 4), tokens_committed=np.full(steps, 2),
                      kind=np.zeros(steps))


@lru_cache(maxsize=1)
def traces():
    return [(mode, generate(MINI, default_config(MINI, mode, gen_length=96, prompt_length=32, seed=3)))
            for mode in ("prefix-recompute", "block-cache")] + [("random", random_trace(5))]


@pytest.mark.parametrize("hardware,budget", [("h100-pcie5", 128), ("h100-pcie5", 32), ("a100-pcie4", 64),
                                             ("rtx4090-pcie4", 64)])
def test_oracle_beats_every_causal_policy(hardware, budget):
    hw = HardwareProfile.load(hardware)
    cost = RooflineCostModel(MINI, hw)
    for name, trace in traces():
        oracle = Oracle()
        best = simulate(trace, oracle, cost, budget, shared_duplex=hw.link.shared_duplex, executor=MIRRORED)
        # the mirrored clock is the engine's (a change of engine semantics shows up here first)
        assert oracle.t == pytest.approx(best.sim_time_s, rel=1e-9), name
        for policy, params in CAUSAL:
            r = simulate(trace, make_policy(policy, **params), cost, budget, shared_duplex=hw.link.shared_duplex,
                         executor=MIRRORED)
            assert best.sim_time_s <= r.sim_time_s * (1 + 1e-9), (name, policy, params)
