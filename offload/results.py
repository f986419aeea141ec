"""Results of one simulated run, and its compact event log (no simpy here).

Counters use the names the runtime reports too: ``h2d_bytes, d2h_bytes, hit_ratio, promotions, demotions,
cpu_assignments, gpu_assignments``. Definitions:

  tokens_per_s   = generated tokens / sim_time_s, sim_time_s = completion time of the last work item
  hit_ratio      = gpu_assignments / (gpu_assignments + cpu_assignments)   (token-assignments, routed experts)
  h2d_bytes      = promotions x expert_bytes + activation bytes returned from the CPU
  d2h_bytes      = activation bytes sent to the CPU (one hidden vector per CPU token-assignment)
  busy_s[r]      = total time resource r (gpu, cpu, h2d, d2h) was working; <= sim_time_s
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from offload.policies.spec import format_policy

RESOURCES = ("gpu", "cpu", "h2d", "d2h")
# what an event was, for the timeline
WHAT = ("step", "dense", "experts_gpu", "experts_cpu", "weights_h2d", "prefetch_h2d", "act_d2h", "act_h2d", "wait")
METRIC_KEYS = ("tokens_per_s", "sim_time_s", "h2d_bytes", "d2h_bytes", "hit_ratio", "promotions", "demotions",
               "cpu_assignments", "gpu_assignments")


@dataclass(frozen=True, eq=False)
class EventLog:
    """Columns of the timeline; one row per busy interval of a resource, plus rows with what = "wait" on the gpu
    resource for the intervals the GPU stream stalled (idle, not counted in busy_s). With a shared-duplex link
    the "h2d" and "d2h" rows occupy one engine."""

    resource: np.ndarray  # int8 index into RESOURCES
    start: np.ndarray     # float64 seconds
    end: np.ndarray       # float64 seconds
    step: np.ndarray      # int32
    layer: np.ndarray     # int16 (-1: not a MoE layer)
    what: np.ndarray      # int8 index into WHAT

    def __len__(self) -> int:
        return int(self.start.size)


@dataclass(frozen=True, eq=False)
class SimResult:
    policy: str
    params: dict[str, Any]
    trace_name: str
    generated_tokens: int
    sim_time_s: float
    h2d_bytes: int
    d2h_bytes: int
    h2d_weight_bytes: int
    promotions: int
    demotions: int
    cpu_assignments: int
    gpu_assignments: int
    step_times_s: np.ndarray
    busy_s: dict[str, float]
    lower_bound_s: float
    events: int
    wall_s: float
    max_resident: np.ndarray  # [L] most experts resident at once, per layer
    budget: np.ndarray        # [L]
    timeline: EventLog | None = field(default=None)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.sim_time_s if self.sim_time_s > 0 else 0.0

    @property
    def hit_ratio(self) -> float:
        total = self.gpu_assignments + self.cpu_assignments
        return self.gpu_assignments / total if total else 1.0

    @property
    def events_per_s(self) -> float:
        return self.events / max(self.wall_s, 1e-9)  # finite, so metrics() stays valid JSON

    @property
    def label(self) -> str:
        return format_policy(self.policy, self.params)

    def metrics(self) -> dict[str, Any]:
        """JSON-ready summary: the shared counter names plus timing detail."""
        return {
            "policy": self.policy, "params": dict(self.params), "trace": self.trace_name,
            "tokens_per_s": self.tokens_per_s, "sim_time_s": self.sim_time_s,
            "h2d_bytes": int(self.h2d_bytes), "d2h_bytes": int(self.d2h_bytes), "hit_ratio": self.hit_ratio,
            "promotions": int(self.promotions), "demotions": int(self.demotions),
            "cpu_assignments": int(self.cpu_assignments), "gpu_assignments": int(self.gpu_assignments),
            "generated_tokens": int(self.generated_tokens), "h2d_weight_bytes": int(self.h2d_weight_bytes),
            "busy_s": {k: float(v) for k, v in self.busy_s.items()},
            "utilisation": {k: float(v) / self.sim_time_s if self.sim_time_s else 0.0 for k, v in self.busy_s.items()},
            "lower_bound_s": self.lower_bound_s, "step_time_mean_s": float(np.mean(self.step_times_s)),
            "step_time_p50_s": float(np.median(self.step_times_s)), "steps": int(self.step_times_s.size),
            "events": int(self.events), "wall_s": self.wall_s, "events_per_s": self.events_per_s,
        }
