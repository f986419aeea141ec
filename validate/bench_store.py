"""``moe_overhead``: the expert store's fixed work per MoE layer, timed on the store itself.

ExpertStore.forward for one MoE layer does, besides computing experts and copying weights: the expert counts
(bincount) and their copy to the host (the layer's one host sync), the policy decision and Residency
bookkeeping, the slot sort key and one stable argsort, the row gathers/scatters into the [T k, h] buffer, and
the float32 weighted sum over k. That is timed by running the real ExpertStore.forward (all experts resident,
policy all-gpu) with its expert kernel replaced by one that returns at once; the kernel is timed separately
(``gpu_expert``), so nothing is counted twice:

  moe_overhead(n) = T(store.forward of n tokens with a free kernel)

If the store no longer calls ``runtime.expert_store.grouped_experts`` (the stub is never reached), the
overhead is taken as T(store.forward) - T(grouped_experts on the same rows) instead and the table says so.
The decision timed is all-gpu's (keep everything, ~0 us); other policies' decisions are measured on their own
(validate.bench_decide, the calibrated executor profile's ``decide_us``) and charged by the engine on top of this table.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

import runtime.expert_store as expert_store
from runtime.kernels import grouped_experts
from validate.rig import Rig
from validate.tables import measure_1d
from validate.timing import Clock


class _FreeKernel:
    """grouped_experts that computes nothing: an output of the right shape, at once."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, counts: Any, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        self.calls += 1
        return out if out is not None else x.new_empty((x.shape[0], down.shape[-2]))


def moe_overhead_table(clock: Clock, rig: Rig, grid: Sequence[int], held: Sequence[int]):
    store = rig.store
    notes = set()

    def at(n: float) -> float:
        n = int(n)
        x = rig.hidden(n)
        ids, w = rig.routing(n, torch.Generator().manual_seed(n))
        rig.begin_step(n)
        free = _FreeKernel()
        real = expert_store.grouped_experts
        expert_store.grouped_experts = free
        try:
            t = clock.measure(lambda: store.forward(0, x, ids, w))
        finally:
            expert_store.grouped_experts = real
        if free.calls:
            notes.add("store.forward with a free expert kernel")
            return t
        # the stub was not reached: subtract the kernel's time on the same rows instead
        notes.add("store.forward minus grouped_experts on the same rows (kernel stub not reached)")
        t_store = clock.measure(lambda: store.forward(0, x, ids, w))
        counts = np.bincount(ids.reshape(-1).cpu().numpy(), minlength=rig.spec.num_experts)
        xs = rig.hidden(int(counts.sum()))
        r = rig.resident
        t_kernel = clock.measure(lambda: grouped_experts(xs, counts, r["gate"], r["up"], r["down"]))
        return max(0.0, t_store - t_kernel)

    t = measure_1d("moe_overhead", grid, held, at)
    t.note = "per MoE layer: " + "; ".join(sorted(notes))
    return t
