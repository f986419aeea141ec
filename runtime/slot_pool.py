"""Slot bookkeeping of the expert store: which expert of which MoE layer sits in which slot of the shared pool.

Host-side numpy only; no tensor moves here (the store copies weights, ``runtime.expert_store``).

The pool has S = sum(budget) slots. MoE layer l owns budget[l] of them, listed in ``slots[l]`` (local slot j
-> global slot ``slots[l][j]``); initially the contiguous range after layer l-1's. Per layer:

  e2s[l, e] = local slot of expert e, -1 if not resident        ([L, E])
  s2e[l][j] = expert in local slot j, -1 if free                ([budget[l]])

Invariant (``check``): e2s and s2e are inverse bijections between the resident experts and the used local
slots, and the layers' slots plus ``free_slots`` partition 0..S-1.

A re-partition (a policy's ``LayerDecision.budget``) moves *free* slots between layers: a shrinking layer hands
back free local slots (the highest-numbered ones), a growing one takes the lowest free global ones. No weight
moves for it; a slot a layer gave up is refilled only by a later copy.
"""
from __future__ import annotations

import numpy as np


class SlotMap:
    """Expert <-> slot maps of every MoE layer over one pool of ``sum(budget)`` slots."""

    def __init__(self, budget: np.ndarray, num_experts: int) -> None:
        budget = np.asarray(budget, dtype=np.int64)
        L = budget.size
        starts = np.concatenate([[0], np.cumsum(budget)])
        self.size = int(starts[-1])
        self.e2s = np.full((L, num_experts), -1, dtype=np.int64)
        self.s2e = [np.full(int(b), -1, dtype=np.int64) for b in budget]
        self.slots = [np.arange(starts[l], starts[l + 1], dtype=np.int64) for l in range(L)]
        self.free_slots = np.zeros(0, dtype=np.int64)
        self.span = [(int(starts[l]), int(starts[l + 1])) for l in range(L)]  # [lo, hi) of each layer's slots

    def place(self, layer: int, experts: np.ndarray) -> np.ndarray:
        """Put ``experts`` into the layer's lowest free local slots; returns those local slots."""
        s2e = self.s2e[layer]
        free = np.flatnonzero(s2e < 0)[: experts.size]
        if free.size < experts.size:  # Residency enforces the budget, so only a pool bug gets here
            raise AssertionError(f"no free slot for {experts.size} experts at MoE layer {layer}")
        self.e2s[layer, experts] = free
        s2e[free] = experts
        return free

    def remove(self, layer: int, experts: np.ndarray) -> None:
        if experts.size:
            self.s2e[layer][self.e2s[layer, experts]] = -1
            self.e2s[layer, experts] = -1

    def resize(self, layer: int, new: int) -> None:
        """Give layer ``layer`` ``new`` slots: hand back free ones, or take the lowest free global ones."""
        s2e, slots = self.s2e[layer], self.slots[layer]
        if new < s2e.size:
            free = np.flatnonzero(s2e < 0)
            if free.size < s2e.size - new:  # Residency checked resident <= new, so only a pool bug gets here
                raise AssertionError(f"layer {layer} cannot shrink to {new} slots")
            drop = free[free.size - (s2e.size - new):]
            keep = np.setdiff1d(np.arange(s2e.size), drop, assume_unique=True)
            self.free_slots = np.sort(np.concatenate([self.free_slots, slots[drop]]))
            s2e, slots = s2e[keep], slots[keep]
            used = s2e >= 0
            self.e2s[layer, s2e[used]] = np.flatnonzero(used)  # local ids of kept slots shift down
        elif new > s2e.size:
            take, self.free_slots = self.free_slots[: new - s2e.size], self.free_slots[new - s2e.size:]
            if take.size < new - s2e.size:
                raise AssertionError(f"no free slot in the pool for layer {layer}")
            s2e = np.concatenate([s2e, np.full(take.size, -1, dtype=np.int64)])
            slots = np.concatenate([slots, take])
        else:
            return
        self.s2e[layer], self.slots[layer] = s2e, slots
        self.span[layer] = (int(slots.min(initial=0)), int(slots.max(initial=-1)) + 1)

    def global_slots(self, layer: int, local: np.ndarray) -> np.ndarray:
        return self.slots[layer][local]

    def check(self, layer: int, resident: np.ndarray, budget: int) -> None:
        """e2s and s2e are inverse bijections between the resident experts and the used slots."""
        e2s, s2e = self.e2s[layer], self.s2e[layer]
        ok = (np.array_equal(e2s >= 0, resident) and int((s2e >= 0).sum()) == int(resident.sum())
              and np.array_equal(s2e[e2s[resident]], np.flatnonzero(resident))
              and s2e.size == self.slots[layer].size == int(budget))
        if not ok:
            raise AssertionError(f"slot maps disagree with the residency at MoE layer {layer}")

    def check_partition(self) -> None:
        owned = np.sort(np.concatenate(self.slots + [self.free_slots]))
        if not np.array_equal(owned, np.arange(self.size)):
            raise AssertionError("the layers' slots and the free slots do not partition the pool")
