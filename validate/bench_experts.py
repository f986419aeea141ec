"""Routed-expert tables: the runtime's expert kernel (runtime.kernels.grouped_experts) on the stacks the store
reads, on the device ("gpu_expert": the store's slot pool side) and in host memory ("cpu_expert").

A layer's batch of G active experts with n_e rows each is priced additively by the simulator:

  T(batch) = call + sum_e t(n_e)

so the table holds t(n), the marginal time of one more expert with n rows, and ``call_seconds`` the fixed time
of one grouped call. Both come from two measurements per n, G_lo and G_hi experts with n rows each:

  t(n) = (T(G_hi, n) - T(G_lo, n)) / (G_hi - G_lo),   call_n = T(G_lo, n) - G_lo t(n)

with G_hi = min(E, rows_cap // n) (at least 2) and G_lo = G_hi / 4; call_seconds is the median of call_n
over the smallest n (where T is not dominated by the per-expert work); t(n) is then made non-decreasing
(``validate.tables.isotonic``). Each call reads a different set of
experts (rotating through the stack), so the weights come from memory as in the runtime, not from a cache
warmed by the previous repeat.

Held-out check: whole routed batches (T tokens routed to k distinct uniform experts; on the CPU side a random
half of the experts, as misses), timed in one call and predicted by call + sum_e t(n_e).

"cpu_expert_threads" (informational): seconds per expert at n rows against torch's thread count.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from runtime.kernels import grouped_experts
from validate.rig import Rig
from validate.tables import Measured, holdout_record, isotonic
from validate.timing import Clock

_ROTATIONS = 8  # distinct expert sets cycled through


class _Batch:
    """A callable running one grouped call over G experts with n rows each, on a rotating expert set."""

    def __init__(self, rig: Rig, stacks: dict[str, torch.Tensor], counts_list: Sequence[np.ndarray], on_host: bool):
        self.stacks, self.counts_list = stacks, list(counts_list)
        rows = int(self.counts_list[0].sum())
        dev = torch.device("cpu") if on_host else rig.device
        self.x = torch.randn(rows, rig.spec.hidden_size, dtype=rig.dtype, device=dev,
                             pin_memory=on_host and rig.device.type == "cuda")
        # the store's CUDA host path writes into a pinned buffer (out=); on device=cpu it returns a new tensor
        self.out = torch.empty_like(self.x, pin_memory=True) if on_host and rig.device.type == "cuda" else None
        self.i = 0

    def __call__(self) -> torch.Tensor:
        c = self.counts_list[self.i % len(self.counts_list)]
        self.i += 1
        s = self.stacks
        return grouped_experts(self.x, c, s["gate"], s["up"], s["down"], out=self.out)


def _uniform_counts(E: int, G: int, n: int) -> list[np.ndarray]:
    out = []
    for r in range(min(_ROTATIONS, max(1, E // G))):
        c = np.zeros(E, dtype=np.int64)
        c[(r * G + np.arange(G)) % E] = n
        out.append(c)
    return out


def routed_counts(E: int, k: int, tokens: int, rng: np.random.Generator, keep: float = 1.0) -> np.ndarray:
    """Counts [E] of ``tokens`` tokens routed to k distinct uniform experts; a random share ``keep`` of the
    experts kept (the rest zeroed, as the misses of a CPU batch)."""
    ids = np.argsort(rng.random((tokens, E)), axis=1)[:, :k]
    counts = np.bincount(ids.reshape(-1), minlength=E).astype(np.int64)
    if keep < 1.0:
        counts[rng.random(E) >= keep] = 0
    return counts


def expert_table(name: str, clock: Clock, rig: Rig, grid: Sequence[int], rows_cap: int, held_tokens: Sequence[int],
                 on_host: bool, seed: int = 0) -> Measured:
    """The ``gpu_expert`` (on_host False) or ``cpu_expert`` (True) table; see the module docstring."""
    stacks = rig.host if on_host else rig.resident
    E = rig.spec.num_experts
    per, calls = [], []
    for n in grid:
        g_hi = int(min(E, max(2, rows_cap // n)))
        g_lo = max(1, g_hi // 4)
        t_hi = clock.measure(_Batch(rig, stacks, _uniform_counts(E, g_hi, n), on_host))
        if g_hi == g_lo:
            per.append(t_hi / g_hi)
            calls.append((n, 0.0))
            continue
        t_lo = clock.measure(_Batch(rig, stacks, _uniform_counts(E, g_lo, n), on_host))
        slope = (t_hi - t_lo) / (g_hi - g_lo)
        if slope <= 0:  # noise swamped the difference: fall back to the average (call overhead folded in)
            slope = t_hi / g_hi
        per.append(slope)
        calls.append((n, t_lo - g_lo * slope))
    small = [c for n, c in sorted(calls)[:3]]
    call = max(0.0, float(np.median(small))) if small else 0.0
    t = Measured(name, [float(n) for n in grid], isotonic(per), call=call,
                 note=f"marginal seconds per expert by rows; call_seconds per grouped call; rows cap {rows_cap}")
    t.extra["raw_seconds"] = per
    t.extra["call_estimates"] = [[float(n), float(c)] for n, c in calls]
    if held_tokens:
        rng = np.random.default_rng(seed)
        keep = 0.5 if on_host else 1.0
        batches = [routed_counts(E, rig.spec.top_k, int(T), rng, keep) for T in held_tokens]
        batches = [c for c in batches if c.sum() > 0]
        meas = [clock.measure(_Batch(rig, stacks, [c], on_host)) for c in batches]
        table = t.table()
        pred = [call + float(table(c[c > 0]).sum()) for c in batches]
        t.holdout = holdout_record([int(c.sum()) for c in batches], meas, pred)
        t.holdout["what"] = (f"routed batches of {list(held_tokens)} tokens x top-{rig.spec.top_k}"
                             + (" (a random half of the experts, as CPU misses)" if on_host else "")
                             + "; points are the batches' token-assignments")
    return t


def threads_table(clock: Clock, rig: Rig, threads: Sequence[int], tokens: Sequence[int]) -> Measured:
    """``cpu_expert_threads``: seconds per CPU expert (G = min(E, 8) experts per call) by threads and rows."""
    E = rig.spec.num_experts
    G = min(E, 8)
    before = torch.get_num_threads()
    rows = []
    try:
        for th in threads:
            torch.set_num_threads(int(th))
            rows.append([clock.measure(_Batch(rig, rig.host, _uniform_counts(E, G, n), True)) / G for n in tokens])
    finally:
        torch.set_num_threads(before)
    return Measured("cpu_expert_threads", [float(t) for t in threads], rows, y=[float(n) for n in tokens],
                    note=f"seconds per expert, {G} experts per call")
