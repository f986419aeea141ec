"""ExpertStore on the CPU (float32, llada2-tiny shapes, random weights, skewed random routing): offloading is
lossless for every policy and budget, its counters equal the simulator's on the counts it saw, slot maps stay
consistent, non-causal policies are refused, and the grouped kernel's fallback equals the per-expert reference.
CUDA-only checks are marked ``gpu``."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import runtime.kernels as kernels
from runtime.expert_store import ExpertStore, check_budget_fits
from runtime.kernels import expert_mlp, grouped_experts
from offload.cost import ConstantCostModel
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.model_spec import ModelSpec
from offload.policies import (POLICIES, LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo,
    make_policy)
from offload.policies.baselines import top_b
from offload.results import Counters
from offload.trace import KIND_COMMIT, KIND_DENOISE, KIND_PREFILL, model_header
from offload.trace_check import make_trace

SPEC = ModelSpec.load("llada2-tiny")
L, E, K, H, I = SPEC.num_moe_layers, SPEC.num_experts, SPEC.top_k, SPEC.hidden_size, SPEC.moe_intermediate_size
BLOCK_LENGTH = 16
# (block, step_in_block, kind, tokens): a prefill, a block of denoise steps + commit, a second block
SCHEDULE = [(-1, 0, KIND_PREFILL, 32)] + [(0, s, KIND_DENOISE, 16) for s in range(4)] + [(0, 4, KIND_COMMIT, 16)] \
    + [(1, s, KIND_DENOISE, 16) for s in range(4)]
POLICY_CASES = [("all-gpu", {}), ("cpu-route", {}), ("static", {}), ("static", {"profile_steps": 3}), ("fetch-lru", {}),
                ("tide", {"tau": 1}), ("tide", {"tau": 3})]
# riptide with every part on, and ablations; it is priced by RIPTIDE_COST on both sides (store and replay)
RIPTIDE_CASES = [("riptide", {}), ("riptide", {"prefetch": False, "balance": False}),
                 ("riptide", {"cost_aware": False, "layer_budgets": False, "carry": False}),
                 ("riptide", {"drift": None, "tau": 2})]
POLICY_CASES += RIPTIDE_CASES + [("tide-opt", {})]
BUDGETS = [1, 8, 32]
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda unavailable)")


# ---- fixtures: weights, routing ---------------------------------------------------------------------------
def make_experts(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"gate": (torch.randn(E, I, H, generator=g) / H**0.5).to(dtype),
             "up": (torch.randn(E, I, H, generator=g) / H**0.5).to(dtype),
             "down": (torch.randn(E, H, I, generator=g) / I**0.5).to(dtype)} for _ in range(L)]


def make_inputs(seed: int = 0, skew: tuple[float, ...] | None = None
                ) -> list[tuple[StepInfo, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]]:
    """Per step: its StepInfo and per MoE layer (x, topk_ids, topk_weights). Routing is skewed (Zipf-like
    popularity per layer, exponent 1.5 or ``skew[layer]``, drifting per block) and noisy per token, like a real
    router's."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.stack([torch.randperm(E, generator=g) for _ in range(L)]).float()
    base = -1.5 * torch.log1p(rank) if skew is None else -torch.tensor(skew)[:, None] * torch.log1p(rank)  # [L, E]
    steps = []
    for index, (block, sib, kind, T) in enumerate(SCHEDULE):
        drift = 0.5 * torch.randn(L, E, generator=torch.Generator().manual_seed(seed * 100 + block + 1))
        layers = []
        for layer in range(L):
            scores = base[layer] + drift[layer] + torch.randn(T, E, generator=g)
            vals, ids = torch.topk(scores, K, dim=-1)
            layers.append((torch.randn(T, H, generator=g), ids.to(torch.int64), torch.softmax(vals, dim=-1).float()))
        steps.append((StepInfo(index=index, block=block, step_in_block=sib, kind=kind, tokens_forwarded=T), layers))
    return steps


INPUTS = make_inputs()
EXPERTS = make_experts()


# copying an expert (0.5 s) costs half a CPU expert (1 s): riptide promotes, streams and prefetches here
RIPTIDE_COST = ConstantCostModel(expert_bytes=SPEC.expert_bytes, token_bytes=SPEC.token_bytes,
                                 h2d_per_byte_s=0.5 / SPEC.expert_bytes, d2h_per_byte_s=0.5 / SPEC.expert_bytes)


def policy_cost(policy: Policy) -> Any:
    """The cost model the store hands the policy (None: none calibrated) -- the replay uses the same."""
    return RIPTIDE_COST if policy.name in ("riptide", "tide-opt") else None


def staged(slots: int) -> ExecutorProfile:
    """An executor profile with ``slots`` staging slots: all the store takes from one."""
    return ExecutorProfile(name=f"staging-{slots}", staging_slots=slots)


def run_store(policy: Policy, budget: Any, staging_slots: int = 3, device: str = "cpu", dtype=torch.float32,
              experts=None, inputs=None) -> tuple[ExpertStore, list[torch.Tensor], np.ndarray]:
    store = ExpertStore(SPEC, experts or EXPERTS, policy, budget, torch.device(device), dtype,
                        executor=staged(staging_slots), block_length=BLOCK_LENGTH, mode="block-cache",
                        cost=policy_cost(policy))
    outs, counts = [], []
    for info, layers in inputs or INPUTS:
        store.begin_step(info)
        for layer, (x, ids, w) in enumerate(layers):
            outs.append(store.forward(layer, x.to(device, dtype), ids.to(device), w.to(device)))
        counts.append(store.step_counts)
        store.check_slots()
    return store, outs, np.stack(counts)


class PrefetchStreamPolicy(Policy):
    """Test policy using every mechanism: streams the two busiest misses, promotes the third (demoting an idle
    expert when full), prefetches the next layer's previous-step top-B, and overlaps the CPU share."""

    name = "test-prefetch-stream"

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        placement = super().initial_placement(ctx)
        self.res = placement.copy()  # mirror of the residency this policy's decisions produce
        self.last = np.zeros((ctx.num_moe_layers, ctx.num_experts), dtype=np.int64)
        return placement

    def decide(self, view: LayerView) -> LayerDecision:
        layer, counts, res = view.layer, view.counts, view.resident
        assert np.array_equal(res, self.res[layer]), "store residency diverged from the policy's decisions"
        B = int(self.ctx.budget[layer])
        self.last[layer] = counts
        missing = np.flatnonzero((counts > 0) & ~res)
        missing = missing[np.argsort(-counts[missing], kind="stable")]
        stream, promote, demote = missing[:2], missing[2:3], np.zeros(0, dtype=np.int64)
        if promote.size and res.sum() >= B:
            idle = np.flatnonzero(res & (counts == 0))
            demote = idle[:1]
            promote = promote[: demote.size]
        self.res[layer, demote] = False
        self.res[layer, promote] = True
        t = (layer + 1) % self.ctx.num_moe_layers
        target = np.zeros(self.ctx.num_experts, dtype=bool)
        target[top_b(self.last[t], int(self.ctx.budget[t]))] = True
        pf_promote = np.flatnonzero(target & ~self.res[t])
        pf_demote = np.flatnonzero(self.res[t] & ~target)[: pf_promote.size]
        self.res[t, pf_demote] = False
        self.res[t, pf_promote] = True
        return LayerDecision(promote=promote, demote=demote, stream=stream, overlap_cpu=True,
                             prefetch=(Prefetch(layer=t, promote=pf_promote, demote=pf_demote),))


class RebudgetPolicy(Policy):
    """Test policy re-partitioning the budgets (``LayerDecision.budget``): from step 2 on, layer 0 hands half its
    slots to the last layer (which takes them once they are free); every layer promotes its busiest misses into
    free slots and streams the next one, CPU overlapped. Exercises the shared slot pool in both directions."""

    name = "test-rebudget"

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        placement = super().initial_placement(ctx)
        self.b = np.array(ctx.budget, dtype=np.int64)
        return placement

    def decide(self, view: LayerView) -> LayerDecision:
        l, c, res = view.layer, view.counts, view.resident.copy()
        ctx, d = self.ctx, int(self.ctx.budget[0]) // 2
        want = int(ctx.budget[l])
        if view.step.index >= 2:
            want += d if l == ctx.num_moe_layers - 1 else -d if l == 0 else 0
        want = min(want, ctx.num_experts)
        demote, budget = np.zeros(0, dtype=np.int64), None
        if want < self.b[l]:
            idle, busy = np.flatnonzero(res & (c == 0)), np.flatnonzero(res & (c > 0))
            demote = np.concatenate([idle, busy])[: max(0, int(res.sum()) - want)]
            res[demote] = False
            budget = self.b[l] = want
        elif want > self.b[l]:
            budget = self.b[l] = self.b[l] + min(want - self.b[l], int(ctx.budget.sum() - self.b.sum()))
        missing = np.flatnonzero((c > 0) & ~res)
        missing = missing[np.argsort(-c[missing], kind="stable")]
        free = max(0, int(self.b[l] - res.sum()))
        return LayerDecision(promote=missing[:free], demote=demote, stream=missing[free:free + 1],
                             overlap_cpu=True, budget=None if budget is None else int(budget))


def all_cases() -> list[tuple[str, dict[str, Any]]]:
    return POLICY_CASES + [(PrefetchStreamPolicy.name, {}), (RebudgetPolicy.name, {})]


def build(name: str, params: dict[str, Any]) -> Policy:
    if name == RebudgetPolicy.name:
        return RebudgetPolicy()
    return PrefetchStreamPolicy() if name == PrefetchStreamPolicy.name else make_policy(name, **params)


@pytest.fixture(scope="module")
def reference() -> list[torch.Tensor]:
    return run_store(make_policy("all-gpu"), None)[1]


def replay(counts: np.ndarray, policy: Policy, budget: int):
    """The simulator on exactly the counts the store saw, with the store's byte sizes."""
    header = {"version": 1, "model": model_header(SPEC),
              "generation": {"mode": "block-cache", "block_length": BLOCK_LENGTH, "steps": 4, "threshold": 0.95,
                             "gen_length": 64, "prompt_length": 32},
              "origin": {"kind": "recorded", "seed": 0}}
    tf = np.array([T for *_, T in SCHEDULE])
    trace = make_trace(header, counts, block=[s[0] for s in SCHEDULE], step_in_block=[s[1] for s in SCHEDULE],
                       tokens_forwarded=tf, context_tokens=tf + 32, tokens_committed=np.zeros(len(SCHEDULE)),
                       kind=[s[2] for s in SCHEDULE])
    cost = policy_cost(policy) or ConstantCostModel(expert_bytes=SPEC.expert_bytes, token_bytes=SPEC.token_bytes)
    return simulator()(trace, policy, cost, budget)


def simulator():
    """``sim.engine.simulate``, imported here and not at module level: the engine needs simpy, which the GPU
    machine lacks, and this module's gpu tests must still be collected there (tests/test_imports.py)."""
    pytest.importorskip("simpy", reason="replaying through the simulator needs simpy", exc_type=ImportError)
    from sim.engine import simulate

    return simulate


# ---- (a) lossless ---------------------------------------------------------------------------------------
def test_cases_cover_every_policy():
    # every policy the runtime can execute; non-causal ones (oracle) are refused by a test of their own
    assert {n for n, _ in POLICY_CASES} == {n for n, cls in POLICIES.items() if cls.causal}


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name,params", all_cases(), ids=lambda v: str(v))
def test_lossless(reference, name, params, budget):
    store, outs, _ = run_store(build(name, params), budget)
    assert len(outs) == len(reference)
    for got, want in zip(outs, reference):
        assert torch.equal(got, want)
    m = store.counters()
    if budget < E and name != "all-gpu":  # offloading actually happened
        assert m.cpu_assignments > 0 or m.promotions > 0


@pytest.mark.parametrize("staging_slots", [1, 2, 8])
def test_lossless_streaming_chunks(reference, staging_slots):
    store, outs, _ = run_store(make_policy("fetch-lru"), 1, staging_slots=staging_slots)
    m = store.counters()
    # one slot per layer: almost everything is streamed, in chunks of staging_slots // 2 (or 1), all on the GPU
    assert m.cpu_assignments == 0 and m.promotions > 3 * len(SCHEDULE) * L
    assert all(torch.equal(g, w) for g, w in zip(outs, reference))


def test_reference_matches_dense_moe():
    """The store computes moe_infer: sum_k w_tk * expert_{id_tk}(x_t), nothing else."""
    store, outs, _ = run_store(make_policy("all-gpu"), None)
    info, layers = INPUTS[1]
    for layer, (x, ids, w) in enumerate(layers):
        want = torch.zeros(x.shape[0], H)
        for t in range(x.shape[0]):
            for j in range(K):
                e = int(ids[t, j])
                ex = EXPERTS[layer]
                want[t] += w[t, j] * expert_mlp(x[t:t + 1], ex["gate"][e], ex["up"][e], ex["down"][e])[0]
        torch.testing.assert_close(outs[L + layer], want, rtol=1e-5, atol=1e-5)


# ---- (b) counters equal the simulator's -----------------------------------------------------------------
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("name,params", all_cases(), ids=lambda v: str(v))
def test_counters_match_simulator(name, params, budget):
    store, _, counts = run_store(build(name, params), budget)
    sim = replay(counts, build(name, params), budget)
    assert store.counters() == sim.counters  # every counter, the same record type on both sides
    assert store.counters().hit_ratio == sim.counters.hit_ratio
    assert np.array_equal(store.max_resident, sim.max_resident)
    assert np.array_equal(store.budget, sim.layer_budget)


def test_rebudget_moves_slots_between_layers():
    store, _, counts = run_store(RebudgetPolicy(), 8)
    assert store.residency.budget.tolist() == [4, 8, 12] and store.max_resident.tolist() == [8, 8, 12]
    assert [s.size for s in store.slots] == [4, 8, 12] and store.free_slots.size == 0
    assert sorted(store.slots[2].tolist()) == [0, 1, 2, 3] + list(range(16, 24))  # layer 0's upper half moved
    for layer in range(L):  # each local slot holds its expert's weights, wherever in the pool it now lies
        for e in np.flatnonzero(store.residency.resident[layer]):
            assert torch.equal(store.pool[layer]["up"][store.e2s[layer, e]], EXPERTS[layer]["up"][e])


def test_riptide_repartitions_by_marginal_benefit_losslessly():
    """Layers routing very differently (Zipf exponents 4, 1.5, 0.3): riptide moves slots to the spread-out
    layer; outputs stay bit-identical and counters equal to the simulator's."""
    inputs = make_inputs(seed=1, skew=(4.0, 1.5, 0.3))
    ref = run_store(make_policy("all-gpu"), None, inputs=inputs)[1]
    store, outs, counts = run_store(make_policy("riptide"), 8, inputs=inputs)
    budgets = store.residency.budget
    assert budgets.sum() == 3 * 8 and budgets[2] > 8 > budgets[0]
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))
    sim = replay(counts, make_policy("riptide"), 8)
    assert store.counters() == sim.counters
    assert np.array_equal(store.max_resident, sim.max_resident)


def test_riptide_without_a_cost_model_uses_the_proxy(reference):
    """A runtime given no calibrated cost model: riptide prices work with its byte proxy, still lossless."""
    store = ExpertStore(SPEC, EXPERTS, make_policy("riptide"), 8, torch.device("cpu"), torch.float32,
                        executor=staged(3), block_length=BLOCK_LENGTH, mode="block-cache")
    assert type(store.policy.tab.cost).__name__ == "ProxyCost"
    outs = []
    for info, layers in INPUTS:
        store.begin_step(info)
        outs += [store.forward(layer, x, ids, w) for layer, (x, ids, w) in enumerate(layers)]
    assert all(torch.equal(a, b) for a, b in zip(outs, reference))


def test_step_counts_are_fresh_per_step():
    _, _, counts = run_store(make_policy("all-gpu"), None)
    assert counts.shape == (len(SCHEDULE), L, E)
    for s, (_, layers) in enumerate(INPUTS):
        for layer, (_, ids, _) in enumerate(layers):
            assert np.array_equal(counts[s, layer], np.bincount(ids.reshape(-1).numpy(), minlength=E))


def test_reset_counters():
    store, _, _ = run_store(make_policy("tide", tau=1), 8)
    assert store.counters().promotions > 0  # so that the reset below has something to zero
    store.reset_counters()
    assert store.counters() == Counters(0, 0, 0, 0, 0, 0, 0)


# ---- (c) slot maps ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,params", [("tide", {"tau": 1}), ("fetch-lru", {}), (PrefetchStreamPolicy.name, {})],
                         ids=lambda v: str(v))
def test_slot_maps_and_contents(name, params):
    store, _, _ = run_store(build(name, params), 8)
    for layer in range(L):
        res = store.residency.resident[layer]
        e2s, s2e = store.e2s[layer], store.s2e[layer]
        assert s2e.size == 8 and int(res.sum()) <= 8
        assert np.array_equal(e2s >= 0, res)
        for e in np.flatnonzero(res):  # the slot holds exactly that expert's weights
            for n in ("gate", "up", "down"):
                assert torch.equal(store.pool[layer][n][e2s[e]], EXPERTS[layer][n][e])
        free = np.flatnonzero(s2e < 0)
        assert np.all(np.isin(np.arange(8), np.concatenate([e2s[res], free])))


def test_slot_check_detects_corruption():
    store = ExpertStore(SPEC, EXPERTS, make_policy("tide", tau=1), 4, torch.device("cpu"), torch.float32)
    store.check_slots()
    store.e2s[0, 0], store.e2s[0, 1] = store.e2s[0, 1], store.e2s[0, 0]
    with pytest.raises(AssertionError):
        store.check_slots()


def test_initial_placement_not_counted():
    store = ExpertStore(SPEC, EXPERTS, make_policy("cpu-route"), 8, torch.device("cpu"), torch.float32, threads=1)
    assert torch.get_num_threads() == 1
    m = store.counters()
    assert m.promotions == 0 and m.h2d_bytes == 0
    assert np.array_equal(store.e2s[:, :8], np.tile(np.arange(8), (L, 1)))


# ---- (d) refusals -----------------------------------------------------------------------------------------
class Oracle(Policy):
    name = "oracle"
    causal = False

    def decide(self, view: LayerView) -> LayerDecision:
        return LayerDecision()


def test_non_causal_policy_refused():
    with pytest.raises(TideError, match="simulator only"):
        ExpertStore(SPEC, EXPERTS, Oracle(), 8, torch.device("cpu"), torch.float32)


def test_bad_inputs_refused():
    with pytest.raises(TideError, match="MoE layers"):
        ExpertStore(SPEC, EXPERTS[:1], make_policy("tide"), 8, torch.device("cpu"), torch.float32)
    bad = [dict(d) for d in EXPERTS]
    bad[1]["down"] = bad[1]["down"].transpose(1, 2)
    with pytest.raises(TideError, match="layer 1 expert down"):
        ExpertStore(SPEC, bad, make_policy("tide"), 8, torch.device("cpu"), torch.float32)
    with pytest.raises(TideError, match="budget"):
        ExpertStore(SPEC, EXPERTS, make_policy("tide"), 0, torch.device("cpu"), torch.float32)
    with pytest.raises(TideError, match="^executor staging-0: the store streams experts through staging slots"):
        ExpertStore(SPEC, EXPERTS, make_policy("tide"), 8, torch.device("cpu"), torch.float32, executor=staged(0))
    store = ExpertStore(SPEC, EXPERTS, make_policy("tide"), 8, torch.device("cpu"), torch.float32)
    x, ids, w = INPUTS[1][1][0]
    with pytest.raises(TideError, match="begin_step"):
        store.forward(0, x, ids, w)


def test_budget_check_cpu_returns_bytes():
    assert check_budget_fits(np.full(L, 8), SPEC.expert_bytes, "cpu", 8) == (8 * L + 8) * SPEC.expert_bytes


# ---- (e) kernels -----------------------------------------------------------------------------------------
def test_grouped_fallback_equals_per_expert(monkeypatch):
    g = torch.Generator().manual_seed(3)
    G = 10
    counts = np.array([3, 0, 1, 0, 0, 7, 2, 0, 1, 5])
    x = torch.randn(int(counts.sum()), H, generator=g)
    gate, up = torch.randn(G, I, H, generator=g), torch.randn(G, I, H, generator=g)
    down = torch.randn(G, H, I, generator=g)
    calls = []
    real = kernels.expert_mlp
    monkeypatch.setattr(kernels, "expert_mlp", lambda *a: calls.append(1) or real(*a))
    y = grouped_experts(x, counts, gate, up, down)
    assert len(calls) == int((counts > 0).sum())  # active experts only
    start = 0
    for e, n in enumerate(counts):
        want = real(x[start:start + n], gate[e], up[e], down[e])
        assert torch.equal(y[start:start + n], want)
        start += n
    out = torch.empty_like(y)
    assert grouped_experts(x, counts, gate, up, down, out=out) is out and torch.equal(out, y)
    assert grouped_experts(x[:0], np.zeros(G, dtype=np.int64), gate, up, down).shape == (0, H)
    with pytest.raises(ValueError):
        grouped_experts(x, counts[:-1], gate[:-1], up[:-1], down[:-1])


# ---- CUDA ---------------------------------------------------------------------------------------------------
@gpu
@needs_cuda
def test_cuda_grouped_mm_matches_fallback(monkeypatch):
    g = torch.Generator().manual_seed(4)
    G, h, i = 16, 256, 128
    counts = np.array([5, 0, 17, 1, 0, 0, 33, 2, 0, 8, 0, 0, 4, 0, 0, 9])
    x = torch.randn(int(counts.sum()), h, generator=g).cuda().bfloat16()
    gate, up = (torch.randn(G, i, h, generator=g) / h**0.5).cuda().bfloat16(), (torch.randn(G, i, h, generator=g) / h**0.5).cuda().bfloat16()
    down = (torch.randn(G, h, i, generator=g) / i**0.5).cuda().bfloat16()
    y = grouped_experts(x, counts, gate, up, down)
    monkeypatch.setattr(kernels, "USE_GROUPED_MM", False)
    ref = grouped_experts(x, counts, gate, up, down)
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-2, atol=2e-2)


@gpu
@needs_cuda
@pytest.mark.parametrize("name,params", all_cases(), ids=lambda v: str(v))
def test_cuda_store_close_to_all_gpu(name, params):
    experts = make_experts(dtype=torch.bfloat16)
    ref = run_store(make_policy("all-gpu"), None, device="cuda", dtype=torch.bfloat16, experts=experts)[1]
    store, outs, counts = run_store(build(name, params), 8, device="cuda", dtype=torch.bfloat16, experts=experts)
    torch.cuda.synchronize()
    for got, want in zip(outs, ref):
        torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)
    sim = replay(counts, build(name, params), 8)
    m = store.counters()
    assert m.promotions == sim.counters.promotions and m.cpu_assignments == sim.counters.cpu_assignments
    for layer in range(L):  # slot contents landed
        res = store.residency.resident[layer]
        for e in np.flatnonzero(res):
            assert torch.equal(store.pool[layer]["down"][store.e2s[layer, e]].cpu(), experts[layer]["down"][e])


@gpu
@needs_cuda
def test_cuda_budget_check_raises():
    with pytest.raises(TideError, match="GiB free on cuda"):
        check_budget_fits(np.full(L, 10**9), SPEC.expert_bytes, "cuda")
