"""The layer-execution plan: what one MoE layer does in one forward, once its decision has been applied.

The engine and the store run the same plan: ``sim.engine`` times it, ``runtime.expert_store`` carries it out, so their
counters agree by construction. :func:`plan_layer` is pure (numpy only); the decision is validated and applied
beforehand by :meth:`offload.policies.residency.Residency.apply`, the one place that checks decisions.

With counts c [E] (token-assignments of this step at this layer), R [E] the residency *after* the decision
and S the streamed experts:

  active       = c > 0
  resident_mask = active & R                      GPU experts read from their slots
  gpu_mask     = active & (R | S)                 GPU experts (resident or streamed)
  cpu_mask     = active & ~(R | S)                CPU experts; gpu_mask and cpu_mask partition the active ones
  gpu_counts   = c on gpu_mask, 0 elsewhere;  cpu_counts likewise on cpu_mask
  gpu_assignments = sum(gpu_counts),  cpu_assignments = sum(cpu_counts)      (sum = sum(c))
  weight_h2d_bytes = (|promote| + |stream|) x expert_bytes                    blocking copies of this layer
  act_bytes = cpu_assignments x token_bytes              one hidden vector each way: D2H and again H2D

Prefetches (``decision.prefetch``) are no part of the plan: engine and store apply them only after the layer's
experts have been issued, so that no slot still being read is overwritten.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from offload.policies.base import LayerDecision


@dataclass(frozen=True, eq=False)
class LayerPlan:
    demote: np.ndarray           # expert ids dropped before the promotions
    promote: np.ndarray          # expert ids copied in before the GPU experts run, resident afterwards
    stream: np.ndarray           # expert ids copied in for this layer only (staging), run on the GPU
    resident_mask: np.ndarray    # [E] bool: active and resident after the decision
    gpu_mask: np.ndarray         # [E] bool: active and resident or streamed
    cpu_mask: np.ndarray         # [E] bool: active and neither
    gpu_counts: np.ndarray       # [E] token-assignments run on the GPU (0 elsewhere)
    cpu_counts: np.ndarray       # [E] token-assignments run on the CPU (0 elsewhere)
    gpu_assignments: int         # token-assignments run on the GPU
    cpu_assignments: int         # token-assignments run on the CPU
    weight_h2d_bytes: int        # promoted and streamed weights, copied before the GPU experts
    act_bytes: int               # activations of the CPU experts to the host, and their results back
    overlap_cpu: bool            # the CPU path starts at the decision (else after the GPU experts)


def plan_layer(resident: np.ndarray, demote: np.ndarray, promote: np.ndarray, stream: np.ndarray,
               counts: np.ndarray, decision: LayerDecision, expert_bytes: int, token_bytes: int) -> LayerPlan:
    """The plan of one layer: ``resident`` [E] bool after the decision, (demote, promote, stream) as returned by
    ``Residency.apply``, ``counts`` [E] token-assignments; bytes per expert and per token vector."""
    active = counts > 0
    on_gpu = resident.copy()  # resident is the engine's or store's live row: never written here
    on_gpu[stream] = True
    gpu_mask = active & on_gpu
    cpu_mask = active & ~on_gpu
    gpu_counts = np.where(gpu_mask, counts, 0)
    cpu_counts = np.where(cpu_mask, counts, 0)
    n_cpu = int(cpu_counts.sum())
    return LayerPlan(demote=demote, promote=promote, stream=stream, resident_mask=active & resident,
                     gpu_mask=gpu_mask, cpu_mask=cpu_mask, gpu_counts=gpu_counts, cpu_counts=cpu_counts,
                     gpu_assignments=int(gpu_counts.sum()), cpu_assignments=n_cpu,
                     weight_h2d_bytes=(promote.size + stream.size) * int(expert_bytes),
                     act_bytes=n_cpu * int(token_bytes), overlap_cpu=bool(decision.overlap_cpu))


@dataclass
class PlanTotals:
    """Running sums over the plans the engine or the store carried out (the counters of ``offload.results``; the weight
    bytes come from ``Residency.moves``, which also sees prefetches)."""

    gpu_assignments: int = 0
    cpu_assignments: int = 0
    act_bytes: int = 0  # each way

    def add(self, plan: LayerPlan) -> None:
        self.gpu_assignments += plan.gpu_assignments
        self.cpu_assignments += plan.cpu_assignments
        self.act_bytes += plan.act_bytes
