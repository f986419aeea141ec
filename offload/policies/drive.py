"""Drive a policy over routing counts, as both executors call it, and time each ``decide()`` (numpy only).

The decision bookkeeping of ``sim.engine`` and ``runtime.expert_store``, without any timing model: for each step s
and MoE layer l, in order,

  dec = policy.decide(LayerView(step_s, l, counts[s, l], residency.view(l)))     <- timed, nothing else
  residency.apply(l, dec)                       the decision's demote, budget, promote (checked, counted)
  residency.prefetch(pf) for pf in dec.prefetch  after the layer's experts, as both executors issue them

so the policy sees the same views, in the same order, with the same residency as in a simulated or runtime run
of the same counts. The residency it leaves (its ``moves`` and ``max_resident``) is the engine's.

  decide_times(...)[i] = perf_counter_ns after - before the i-th decide() call, in microseconds,
  i = s L + l over every (step, layer) call.

Used by ``validate.bench_decide`` (the profile's ``decide_us`` table) on the GPU machine, which has no simpy:
``sim.decide_time`` measures the same through the engine where simpy is available.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from offload.errors import TideError
from offload.policies.base import LayerView, Policy, PolicyContext, StepInfo
from offload.policies.residency import Residency


def drive(policy: Policy, counts: np.ndarray, steps: Sequence[StepInfo], budget: Any,
          ctx: PolicyContext) -> tuple[Residency, np.ndarray]:
    """Run ``policy`` over ``counts`` [S, L, E] (token-assignments) and ``steps`` (one StepInfo per s); returns
    the final residency and the wall time of every decide() call in microseconds ([S L], step-major).

    ``budget``: experts per MoE layer (int or [L]), as ``sim.engine.simulate`` takes it (a policy that needs no
    budget gets E per layer, as there). ``ctx`` is handed to ``initial_placement``; build it as the engine does."""
    counts = np.asarray(counts)
    if counts.ndim != 3:
        raise TideError(f"drive: counts must be [steps, layers, experts], got shape {counts.shape}")
    S, L, E = counts.shape
    if len(steps) != S:
        raise TideError(f"drive: {len(steps)} StepInfo for {S} steps of counts")
    if policy.needs_budget:
        budget_arr = np.broadcast_to(np.asarray(budget, dtype=np.int64), (L,)).copy()
    else:
        budget_arr = np.full(L, E, dtype=np.int64)
    counts = counts.view()
    counts.setflags(write=False)  # the policy gets views of it, as in the engine: it must not change them
    residency = Residency(policy, policy.initial_placement(ctx), budget_arr)
    if residency.resident.shape != (L, E):
        raise TideError(f"policy {policy.name}: initial placement has shape {residency.resident.shape}, expected {(L, E)}")
    ns = np.zeros(S * L, dtype=np.int64)
    clock = time.perf_counter_ns
    i = 0
    for s, info in enumerate(steps):
        for layer in range(L):
            view = LayerView(step=info, layer=layer, counts=counts[s, layer], resident=residency.view(layer))
            t0 = clock()
            dec = policy.decide(view)
            ns[i] = clock() - t0
            i += 1
            residency.apply(layer, dec)
            for pf in dec.prefetch:  # issued once this layer's experts ran: before the next layer's decision
                residency.prefetch(pf)
    return residency, ns / 1e3


def decide_times(policy: Policy, counts: np.ndarray, steps: Sequence[StepInfo], budget: Any,
                 ctx: PolicyContext) -> np.ndarray:
    """Microseconds of every decide() call of ``policy`` driven over ``counts`` (see :func:`drive`)."""
    return drive(policy, counts, steps, budget, ctx)[1]
