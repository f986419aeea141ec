"""Baseline policies: all-gpu (the ceiling), cpu-route and static (fixed placements), fetch-lru (on-demand swap).

- all-gpu: every expert resident; nothing moves; nothing runs on the CPU.
- cpu-route: a fixed resident set, experts 0..B-1 as TIDE's code loads them; non-resident experts always run on
  the CPU (Fiddler, llama.cpp ``--n-cpu-moe``; TIDE's "CPU routing").
- static: the same, but each layer's resident set is the top-B of its summed counts over the first
  ``profile_steps`` forwards (default 1), placed once then and never refreshed: what a user would try first,
  and the baseline that shows what refreshing (TIDE) adds over a good fixed placement.
- fetch-lru: every active non-resident expert is copied to the GPU before use; least-recently-used eviction
  within the budget (mixtral-offloading, MoE-Infinity on demand; TIDE's "full swap"). When a layer needs more
  experts than its free slots, the busiest missing experts take the slots and the rest are streamed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from offload.policies.base import KEEP, LayerDecision, LayerView, Policy, PolicyContext, ids
from offload.policies.params import PolicyParams, check_int, knob


class AllGpu(Policy):
    name = "all-gpu"
    role = "ceiling"
    needs_budget = False

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        return np.ones((ctx.num_moe_layers, ctx.num_experts), dtype=bool)

    def decide(self, view: LayerView) -> LayerDecision:
        return KEEP


def top_b(counts: np.ndarray, b: int) -> np.ndarray:
    """The (at most) b experts with the most assignments, count > 0; ties by lower id (stable)."""
    order = np.argsort(-counts, kind="stable")[:b]
    return order[counts[order] > 0]


class CpuRoute(Policy):
    """Experts 0..B-1 of every layer, never moved (TIDE's released initial placement)."""

    name = "cpu-route"
    role = "baseline"

    def decide(self, view: LayerView) -> LayerDecision:
        return KEEP


@dataclass(frozen=True)
class StaticParams(PolicyParams):
    policy: ClassVar[str] = "static"
    profile_steps: int = knob(1, "the first forwards whose summed counts choose each layer's placement (top-B), "
                              "which then never changes; misses run on the CPU meanwhile")

    def check(self) -> None:
        check_int("profile_steps", self.profile_steps)


class Static(Policy):
    """The baseline a user tries first: place each layer's busiest experts of a short profiling prefix once."""

    name = "static"
    role = "fixed"
    Params = StaticParams

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        self._seen = np.zeros(ctx.num_moe_layers, dtype=np.int64)
        self._sum = np.zeros((ctx.num_moe_layers, ctx.num_experts), dtype=np.int64)
        return super().initial_placement(ctx)

    def decide(self, view: LayerView) -> LayerDecision:
        layer = view.layer
        if self._seen[layer] >= self.p.profile_steps:
            return KEEP
        self._sum[layer] += view.counts
        self._seen[layer] += 1
        if self._seen[layer] < self.p.profile_steps:
            return KEEP
        target = np.zeros_like(view.resident)
        target[top_b(self._sum[layer], int(self.ctx.budget[layer]))] = True
        promote = np.flatnonzero(target & ~view.resident)
        demote = np.flatnonzero(view.resident & ~target)[: len(promote)]  # only what the promotions need
        return LayerDecision(promote=promote, demote=demote)


class FetchLru(Policy):
    name = "fetch-lru"
    role = "baseline"

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        placement = super().initial_placement(ctx)
        # last use per (layer, expert); the initial set counts as used at "time" -1, by id order
        self._last_use = np.full((ctx.num_moe_layers, ctx.num_experts), -np.inf)
        self._last_use[placement] = -1.0
        self._clock = 0
        return placement

    def decide(self, view: LayerView) -> LayerDecision:
        layer, counts, resident = view.layer, view.counts, view.resident
        budget = int(self.ctx.budget[layer])
        self._clock += 1
        active = counts > 0
        missing = np.flatnonzero(active & ~resident)
        if len(missing) == 0:
            self._last_use[layer, active] = self._clock
            return KEEP
        free = budget - int(resident.sum())
        idle = np.flatnonzero(resident & ~active)  # evictable: resident but unused this step
        idle = idle[np.argsort(self._last_use[layer, idle], kind="stable")]  # least recently used first
        room = free + len(idle)
        # busiest missing experts get slots; any overflow is streamed through slots already used this layer
        missing = missing[np.argsort(-counts[missing], kind="stable")]
        keep, stream = missing[:room], missing[room:]
        demote = idle[: max(0, len(keep) - free)]
        self._last_use[layer, active] = self._clock
        self._last_use[layer, demote] = -np.inf
        self._last_use[layer, stream] = -np.inf
        return LayerDecision(promote=ids(keep), demote=ids(demote), stream=ids(stream))
