"""The expert store's synchronisation, proven on the CPU.

``runtime.streams.ThreadStreams`` runs every CUDA ordering path of the store: compute, copy and activation
streams are worker threads with injected delays, events order them, device buffers start poisoned (NaN). With
delays on every stream each policy's outputs are bit-identical to the host-only all-gpu store's and its
counters equal the host-only store's; dropping any one named wait (``runtime.streams.WAITS``) under the delays
that expose it gives wrong outputs (or an error), and in generation, wrong tokens.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

import runtime.kernels as kernels
import test_expert_store as cases  # the store's shared cases (same directory; collected on its own too)
from runtime.expert_store import ExpertStore
from runtime.streams import WAITS, Delays, HostStreams, ThreadStreams, pin_in_place
from offload.policies import LayerDecision, LayerView, Policy, Prefetch, make_policy
from offload.results import Counters

SPEC, E = cases.SPEC, cases.E


class SelfPrefetchPolicy(Policy):
    """Prefetch into the *same* layer for its next step, demoting experts this forward just computed with: the
    copy may overwrite a slot only after the queued compute read it (riptide's prefetch does the same)."""

    name = "test-self-prefetch"

    def decide(self, view: LayerView) -> LayerDecision:
        res, c = view.resident, view.counts
        used = np.flatnonzero(res & (c > 0))[:2]
        fresh = np.flatnonzero(~res)[: used.size]
        used = used[: fresh.size]
        # overlap_cpu: TIDE's serial CPU path would drain the compute stream before the prefetch is queued
        return LayerDecision(prefetch=(Prefetch(layer=view.layer, promote=fresh, demote=used),), overlap_cpu=True)


def run(policy: Policy, budget: Any, streams: Any, steps: int | None = None, staging_slots: int = 3
        ) -> tuple[ExpertStore, list[torch.Tensor]]:
    store = ExpertStore(SPEC, cases.EXPERTS, policy, budget, "cpu", torch.float32, executor=cases.staged(staging_slots),
                        block_length=cases.BLOCK_LENGTH, mode="block-cache", cost=cases.policy_cost(policy),
                        streams=streams)
    outs = []
    for info, layers in cases.INPUTS[:steps]:
        store.begin_step(info)
        for layer, (x, ids, w) in enumerate(layers):
            outs.append(store.forward(layer, x, ids, w).clone())
        store.check_slots()
    if isinstance(streams, ThreadStreams):
        streams.synchronize()
        streams.close()
    return store, outs


@pytest.fixture(scope="module")
def reference() -> list[torch.Tensor]:
    return run(make_policy("all-gpu"), None, HostStreams())[1]


# ---- the stand-in itself ----------------------------------------------------------------------------------
def test_event_orders_streams_under_delay():
    s = ThreadStreams(Delays(copy=0.02))
    box = torch.zeros(1)
    seen = []
    s.launch("copy", lambda: box.fill_(7))
    s.wait("compute", s.record("copy"), "compute-after-promotion")
    s.launch("compute", lambda: seen.append(float(box)))
    s.synchronize()
    assert seen == [7.0]
    s.close()


def test_dropped_wait_races_and_worker_errors_reach_the_host():
    s = ThreadStreams(Delays(copy=0.05), skip=frozenset({"compute-after-promotion"}))
    box = torch.zeros(1)
    seen = []
    s.launch("copy", lambda: box.fill_(7))
    s.wait("compute", s.record("copy"), "compute-after-promotion")
    s.launch("compute", lambda: seen.append(float(box)))
    s.launch("act", lambda: 1 / 0)
    with pytest.raises(RuntimeError, match="fake act stream: ZeroDivisionError"):
        s.host_wait(s.record("act"), "host-after-d2h")
    s.synchronize()
    assert seen == [0.0]  # read before the delayed copy landed
    s.close()


def test_device_buffers_start_poisoned():
    s = ThreadStreams()
    assert torch.isnan(s.empty((3, 2), torch.float32)).all() and (s.pinned((4,), torch.int64) == -1).all()
    s.close()


# ---- every policy, delays on every stream -------------------------------------------------------------------
@pytest.mark.parametrize("name,params", cases.all_cases() + [(SelfPrefetchPolicy.name, {})], ids=lambda v: str(v))
def test_lossless_with_delays_on_every_stream(reference, name, params):
    policy = SelfPrefetchPolicy() if name == SelfPrefetchPolicy.name else cases.build(name, params)
    host_policy = SelfPrefetchPolicy() if name == SelfPrefetchPolicy.name else cases.build(name, params)
    delays = Delays(compute=0.002, copy=0.002, act=0.002, seed=len(name))
    store, outs = run(policy, 8, ThreadStreams(delays))
    host, _ = run(host_policy, 8, HostStreams())
    assert len(outs) == len(reference)
    assert all(torch.equal(g, w) for g, w in zip(outs, reference))
    assert store.counters() == host.counters()


# ---- each wait is needed: drop it, delay the stream it waits for, and the outputs go wrong ---------------------
SLOW = 0.03
# wait -> (policy, budget, staging_slots, delays that open the race it closes)
SCENARIOS: dict[str, tuple[Any, int | None, int, Delays]] = {
    "host-after-counts": (lambda: make_policy("all-gpu"), None, 3, Delays(compute=SLOW)),
    "copy-after-compute": (SelfPrefetchPolicy, 8, 3, Delays(compute=SLOW)),
    "compute-after-promotion": (lambda: make_policy("fetch-lru"), 8, 3, Delays(copy=SLOW)),
    "compute-after-prefetch": (cases.PrefetchStreamPolicy, 8, 3, Delays(copy=SLOW)),
    "stage-after-compute": (lambda: make_policy("fetch-lru"), 1, 2, Delays(compute=SLOW)),
    "compute-after-stage": (lambda: make_policy("fetch-lru"), 1, 2, Delays(copy=SLOW)),
    # overlap_cpu (TIDE's serial CPU path would hide this race behind its host wait for the compute stream)
    "act-after-gather": (cases.PrefetchStreamPolicy, 8, 3, Delays(compute=SLOW)),
    "host-after-d2h": (lambda: make_policy("cpu-route"), 8, 3, Delays(act=SLOW)),
    "compute-after-h2d": (lambda: make_policy("cpu-route"), 8, 3, Delays(act=SLOW)),
    "host-after-initial": (lambda: make_policy("all-gpu"), None, 3, Delays(copy=SLOW)),
    "host-after-forward": (lambda: make_policy("all-gpu"), None, 3, Delays(compute=SLOW)),
}


def test_every_wait_has_a_scenario():
    assert set(SCENARIOS) == set(WAITS)


@pytest.mark.parametrize("why", sorted(SCENARIOS))
def test_missing_wait_gives_wrong_outputs(reference, why):
    make, budget, slots, delays = SCENARIOS[why]
    steps = 3
    # the same scenario with every wait in place is exact: the race, not the scenario, breaks it
    _, ok = run(make(), budget, ThreadStreams(delays), steps=steps, staging_slots=slots)
    assert all(torch.equal(g, w) for g, w in zip(ok, reference))
    try:
        _, bad = run(make(), budget, ThreadStreams(delays, skip=frozenset({why})), steps=steps, staging_slots=slots)
    except Exception:  # noqa: BLE001 - garbage counts or rows may also fail loudly: detected either way
        return
    assert not all(torch.equal(g, w) for g, w in zip(bad, reference)), f"dropping '{why}' went unnoticed"


# ---- generation: a missing wait shows up as wrong tokens ------------------------------------------------------
def _generate(streams: Any) -> torch.Tensor:
    import test_generate as gen

    from runtime.diffusion import GenerationSettings, generate
    from runtime.model import LLaDA2MoE

    host = [{"gate": l.gate, "up": l.up, "down": l.down} for l in gen.EXPERTS.layers]
    store = ExpertStore(gen.SPEC, host, make_policy("fetch-lru"), 4, "cpu", torch.float32, streams=streams,
                        block_length=16, mode="block-cache")
    model = LLaDA2MoE.from_state(gen.CFG, gen.STATE, store, device="cpu", dtype=torch.float32)
    prompt = torch.arange(3, 19) % gen.SPEC.vocab_size
    settings = GenerationSettings(gen_length=32, block_length=16, steps=8, mode="block-cache", stop_at_eos=False)
    out = generate(model, store, gen.CFG, prompt, settings).sequence
    if isinstance(streams, ThreadStreams):
        streams.close()
    return out


def test_generation_tokens_exact_with_delays_and_wrong_without_a_wait():
    want = _generate(HostStreams())
    delays = Delays(compute=0.001, copy=0.01, act=0.001)
    assert torch.equal(_generate(ThreadStreams(delays)), want)
    assert not torch.equal(_generate(ThreadStreams(delays, skip=frozenset({"compute-after-promotion"}))), want)


# ---- pinning in place, grouped-GEMM group limit ------------------------------------------------------------------
def test_pin_in_place_never_copies():
    t = torch.zeros(1000)
    calls = []
    assert pin_in_place(t, lambda ptr, n, flags: calls.append((ptr, n, flags)) or 0)
    assert calls == [(t.data_ptr(), 4000, 0)]
    assert not pin_in_place(t, lambda *a: 2)  # cudaErrorMemoryAllocation: refused, left pageable

    def raises(*a):
        raise RuntimeError("no driver")

    assert not pin_in_place(t, raises)


class _Unpinnable(HostStreams):
    host_is_device = False  # exercise the device-style CPU path too

    def pin_host(self, t: torch.Tensor) -> bool:
        return False


def test_store_keeps_unpinned_stacks_without_copying_them(reference):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store, outs = run(make_policy("cpu-route"), 8, _Unpinnable())
    assert any("page-lock" in str(w.message) for w in caught)
    assert store.pinned is False
    assert store.host[0]["gate"].data_ptr() == cases.EXPERTS[0]["gate"].data_ptr()  # the caller's memory, not a copy
    assert all(torch.equal(g, w) for g, w in zip(outs, reference))


def test_grouped_mm_calls_stay_within_the_group_limit(monkeypatch):
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    real, groups = torch._grouped_mm, []

    def spy(a, b, offs=None, **kw):
        groups.append(int(offs.numel()))
        return real(a, b, offs=offs, **kw)

    monkeypatch.setattr(torch, "_grouped_mm", spy)
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    G, h, i = 2 * kernels.MAX_GROUPS + 200, 16, 8
    counts = rng.integers(0, 3, G)
    counts[: kernels.MAX_GROUPS] = 0  # a whole run of empty groups is skipped
    x = torch.randn(int(counts.sum()), h, generator=g)
    w = [torch.randn(G, i, h, generator=g), torch.randn(G, i, h, generator=g), torch.randn(G, h, i, generator=g)]
    got = kernels._grouped_mm_path(x, counts, *w)
    want = kernels._fallback(x, counts, *w, None)
    assert max(groups) <= kernels.MAX_GROUPS and len(groups) == 2 * 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- the same on a real GPU: delays are spin kernels queued before each launch --------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda unavailable)")
@pytest.mark.parametrize("name,params", cases.all_cases(), ids=lambda v: str(v))
def test_cuda_delays_change_nothing(name, params):
    from runtime.streams import CudaStreams

    dev = torch.device("cuda")

    def outputs(streams: Any) -> tuple[list[torch.Tensor], Counters]:
        policy = cases.build(name, params)
        experts = [{n: t.to(torch.bfloat16) for n, t in d.items()} for d in cases.EXPERTS]
        store = ExpertStore(SPEC, experts, policy, 8, dev, torch.bfloat16, executor=cases.staged(3),
                            block_length=cases.BLOCK_LENGTH, mode="block-cache", cost=cases.policy_cost(policy),
                            streams=streams)
        outs = []
        for info, layers in cases.INPUTS:
            store.begin_step(info)
            for layer, (x, ids, w) in enumerate(layers):
                outs.append(store.forward(layer, x.to(dev, torch.bfloat16), ids.to(dev), w.to(dev)).cpu())
        torch.cuda.synchronize()
        return outs, store.counters()

    plain, m_plain = outputs(CudaStreams(dev))
    delayed, m_delayed = outputs(CudaStreams(dev, Delays(compute=2e-4, copy=5e-4, act=5e-4, seed=1)))
    assert all(torch.equal(a, b) for a, b in zip(plain, delayed))
    assert m_plain == m_delayed
