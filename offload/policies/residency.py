"""Residency bookkeeping shared by the simulator and the runtime: which experts are on the GPU, and the
counters of what moved.

The engine and the store apply a policy's :class:`~offload.policies.base.LayerDecision` through
:meth:`Residency.apply`, so a policy is checked and counted identically wherever it runs:

  promotions = |promote| + |stream| (+ prefetched promotions), demotions = |demote| + |stream|
  h2d weight bytes = promotions x expert_bytes

Invariants asserted on every apply: demoted experts were resident, promoted and streamed ones were not, and a
layer never holds more experts than its budget (unless the policy declares ``needs_budget = False``).

Per-layer budgets start as the engine's or store's ``budget`` [L]; a decision may set a new budget for its own layer
(``LayerDecision.budget``), applied between its demotions and its promotions, provided
  resident[l] <= new budget <= E   and   sum over layers of the budgets <= total = sum(initial budget),
so a policy can move GPU memory between layers but never use more of it than it was given.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offload.errors import TideError
from offload.policies.base import LayerDecision, Policy, Prefetch, ids


@dataclass
class MoveCounters:
    promotions: int = 0
    demotions: int = 0


class Residency:
    def __init__(self, policy: Policy, placement: np.ndarray, budget: np.ndarray) -> None:
        placement = np.asarray(placement, dtype=bool)
        self.policy = policy
        self.budget = np.array(budget, dtype=np.int64)  # current per-layer budgets (a copy: they may change)
        self.total = int(self.budget.sum())               # the GPU memory given, in experts: never exceeded
        L = self.budget.size
        if placement.ndim != 2 or placement.shape[0] != L:
            raise TideError(f"policy {policy.name}: initial placement has shape {placement.shape}, expected ({L}, E)")
        if policy.needs_budget and np.any(placement.sum(axis=1) > self.budget):
            raise TideError(f"policy {policy.name}: initial placement exceeds the budget")
        self.resident = placement.copy()
        self.max_resident = placement.sum(axis=1)
        self.moves = MoveCounters()

    def view(self, layer: int) -> np.ndarray:
        """A read-only copy of one layer's residency (what the policy is shown)."""
        v = self.resident[layer].copy()
        v.setflags(write=False)
        return v

    def apply(self, layer: int, dec: LayerDecision) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply demote, then promote, and check stream; returns (demote, promote, stream) as id arrays."""
        res = self.resident[layer]
        demote, promote, stream = ids(dec.demote), ids(dec.promote), ids(dec.stream)
        name = self.policy.name
        E = res.size
        for what, arr in (("demoted", demote), ("promoted", promote), ("streamed", stream)):
            if arr.size and (arr.min() < 0 or arr.max() >= E or np.unique(arr).size != arr.size):
                raise TideError(f"policy {name} {what} invalid or repeated expert ids at layer {layer}")
        if demote.size and not res[demote].all():
            raise TideError(f"policy {name} demoted a non-resident expert at layer {layer}")
        res[demote] = False
        if dec.budget is not None and self.policy.needs_budget:
            self._set_budget(layer, int(dec.budget))
        if promote.size and res[promote].any():
            raise TideError(f"policy {name} promoted a resident expert at layer {layer}")
        res[promote] = True
        if stream.size and res[stream].any():
            raise TideError(f"policy {name} streamed a resident expert at layer {layer}")
        n = int(res.sum())
        if self.policy.needs_budget and n > self.budget[layer]:
            raise TideError(f"policy {name} exceeded the budget of {self.budget[layer]} at layer {layer}")
        if n > self.max_resident[layer]:
            self.max_resident[layer] = n
        self.moves.promotions += promote.size + stream.size
        self.moves.demotions += demote.size + stream.size
        return demote, promote, stream

    def prefetch(self, pf: Prefetch) -> tuple[int, np.ndarray, np.ndarray]:
        """Apply one prefetch (its demote, then its promote, into layer ``pf.layer``) as the engine and the store
        do once a layer's experts have run; returns (layer, demote, promote). A layer outside [0, L) is a
        TideError: numpy would otherwise wrap a negative one onto another layer."""
        layer, L = int(pf.layer), self.resident.shape[0]
        if not 0 <= layer < L:
            raise TideError(f"policy {self.policy.name} prefetched into MoE layer {layer} of {L}")
        demote, promote, _ = self.apply(layer, LayerDecision(promote=pf.promote, demote=pf.demote))
        return layer, demote, promote

    def _set_budget(self, layer: int, new: int) -> None:
        """Re-partition: this layer's budget becomes ``new`` (checked against its residents, E and the total)."""
        name = self.policy.name
        if not int(self.resident[layer].sum()) <= new <= self.resident.shape[1]:
            raise TideError(f"policy {name} set the budget of layer {layer} to {new}, below its "
                            f"{int(self.resident[layer].sum())} resident experts or above {self.resident.shape[1]}")
        total = int(self.budget.sum()) - int(self.budget[layer]) + new
        if total > self.total:
            raise TideError(f"policy {name} set the budget of layer {layer} to {new}: the layers' budgets would "
                            f"sum to {total}, more than the {self.total} experts of GPU memory given")
        self.budget[layer] = new
