"""The cost arithmetic of ``riptide`` (:mod:`offload.policies.riptide`): per-expert times tabulated from a
:class:`offload.cost.CostModel`, and the time of one MoE layer as the engine schedules it.

All times are in seconds, counts are token-assignments, bytes are bytes.

Per-expert tables, built lazily from the cost model's own batch functions (so they hold for any model that
prices a batch as a sum over its active experts, as both of ``offload.cost``'s models do):

  cpu(n)  = cost.cpu_experts([n])                       one expert with n assignments on the CPU
  gpu(n)  = cost.gpu_experts([n]) - launch              the same on the GPU, without the per-batch launch
  launch  = 2 gpu_experts([1]) - gpu_experts([1, 1])    the GPU batch's fixed overhead (0 when it has none)
  copy(k) = cost.h2d(k expert_bytes)                    k experts' weights in one H2D batch

Layer time (:meth:`CostTables.layer_time`), for F experts fetched synchronously (promoted or streamed), GPU
work G, CPU work C over a token-assignments, a = a * token_bytes:

  overlap_cpu:  T = max(copy(F) + G,  max(d2h(a) + C, copy(F)) + h2d(a))
  serial:       T = copy(F) + G + [d2h(a) + C + h2d(a)]

The CPU path starts at the decision with overlap (sim.engine), and its results queue behind the weights on
the one H2D engine (FIFO): hence the inner max. Terms of an empty CPU share are 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ProxyCost:
    """Stand-in cost model for a runtime given none: prices work by the bytes it moves (seconds).

    CPU expert = expert_bytes / 100 GB/s + 25 us; GPU expert = expert_bytes / 2 TB/s; copies 10 us + bytes /
    25 GB/s; dense work 0. Only the ratios matter to riptide's choices; pass a calibrated model instead."""

    expert_bytes: int
    token_bytes: int = 4096
    serial: bool = False
    shared_duplex: bool = False

    def step_fixed(self, n: Any, c: Any, m: Any, seqs: Any = 1) -> np.ndarray:
        return np.zeros(np.shape(n))

    def moe_pre(self, n: Any, c: Any, seqs: Any = 1) -> np.ndarray:
        return np.zeros(np.shape(n))

    def gpu_experts(self, counts: np.ndarray) -> np.ndarray:
        return (np.asarray(counts) > 0).sum(axis=-1) * (self.expert_bytes / 2e12)

    def cpu_experts(self, counts: np.ndarray) -> np.ndarray:
        return (np.asarray(counts) > 0).sum(axis=-1) * (self.expert_bytes / 100e9 + 25e-6)

    def h2d(self, nbytes: Any) -> np.ndarray:
        nbytes = np.asarray(nbytes, dtype=np.float64)
        return np.where(nbytes > 0, 10e-6 + nbytes / 25e9, 0.0)

    def d2h(self, nbytes: Any) -> np.ndarray:
        return self.h2d(nbytes)


class CostTables:
    """Per-expert CPU/GPU times by token count and H2D times by experts copied, from ``cost``."""

    def __init__(self, cost: Any, num_experts: int) -> None:
        self.cost = cost
        self.E = int(num_experts)
        self.expert_bytes = int(cost.expert_bytes)
        self.token_bytes = int(cost.token_bytes)
        g1 = float(cost.gpu_experts(np.array([1])))
        g2 = float(cost.gpu_experts(np.array([1, 1])))
        self.launch = max(0.0, 2 * g1 - g2)
        # k experts in one batch, k = 0..E (a fetch never moves more than a layer's experts)
        self.copy = np.asarray(cost.h2d(np.arange(self.E + 1) * self.expert_bytes), dtype=np.float64)
        self.copy_each = float(self.copy[2] - self.copy[1]) if self.E >= 2 else float(self.copy[1])
        self._cpu = np.zeros(0)
        self._gpu = np.zeros(0)
        self._act_d2h = np.zeros(0)  # activation copies by token-assignments (tabulated: decide() is hot)
        self._act_h2d = np.zeros(0)

    def act_copies(self, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(D2H, H2D) seconds for the activations of ``assign`` token-assignments (integers >= 0)."""
        assign = np.asarray(assign, dtype=np.int64)
        top = int(assign.max(initial=0))
        if top >= self._act_d2h.size:
            nbytes = np.arange(max(4096, 2 * top + 1), dtype=np.float64) * self.token_bytes
            self._act_d2h = np.asarray(self.cost.d2h(nbytes), dtype=np.float64)
            self._act_h2d = np.asarray(self.cost.h2d(nbytes), dtype=np.float64)
        return self._act_d2h[assign], self._act_h2d[assign]

    def _grow(self, top: int) -> None:
        n = np.arange(max(1024, 2 * top + 1))[:, None]  # [N, 1]: one expert with n assignments per row
        self._cpu = np.asarray(self.cost.cpu_experts(n), dtype=np.float64).reshape(-1)
        gpu = np.asarray(self.cost.gpu_experts(n), dtype=np.float64).reshape(-1)
        self._gpu = np.where(n[:, 0] > 0, np.maximum(gpu - self.launch, 0.0), 0.0)
        self._cpu[0] = 0.0

    def times(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(CPU, GPU) seconds of each expert with ``counts`` assignments (0 for 0; GPU without the launch)."""
        counts = np.asarray(counts, dtype=np.int64)
        top = int(counts.max(initial=0))
        if top >= self._cpu.size:
            self._grow(top)
        return self._cpu[counts], self._gpu[counts]

    def cpu(self, counts: np.ndarray) -> np.ndarray:
        """Seconds each expert takes on the CPU with ``counts`` assignments (0 for 0)."""
        return self.times(counts)[0]

    def gpu(self, counts: np.ndarray) -> np.ndarray:
        """Seconds each expert takes on the GPU with ``counts`` assignments, without the batch launch."""
        return self.times(counts)[1]

    def layer_time(self, n_fetch: Any, gpu_s: Any, cpu_s: Any, cpu_assign: Any, overlap: bool) -> np.ndarray:
        """Layer time (s) for arrays (broadcast together) of: experts fetched synchronously (0..E: distinct
        experts of the layer), GPU expert seconds (without launch; a launch is added where > 0), CPU expert
        seconds and CPU token-assignments (integers). An empty CPU share costs 0: copies of 0 bytes take 0 s,
        so max(d2h + C, F) + h2d = F there, under F + G."""
        f = self.copy[n_fetch]
        g = gpu_s + (np.asarray(gpu_s) > 0) * self.launch if self.launch else gpu_s
        d2h, h2d = self.act_copies(cpu_assign)
        if overlap:
            return np.maximum(f + g, np.maximum(d2h + cpu_s, f) + h2d)
        return f + g + d2h + cpu_s + h2d
