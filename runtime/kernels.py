"""Routed-expert compute: one expert, and a group of experts over token rows sorted by expert.

An expert (LLaDA2-MoE, SwiGLU) in nn.Linear layout [out, in]:

  expert_mlp(x [n, h], gate [i, h], up [i, h], down [h, i]) = (silu(x gate^T) * (x up^T)) down^T

:func:`grouped_experts` runs G experts held in stacks ``gate [G, i, h], up [G, i, h], down [G, h, i]`` over
rows ``x_sorted [n, h]`` already sorted by stack row: the first ``counts[0]`` rows go to expert 0, and so on
(counts may be 0; rows of one expert stay in their original relative order). Two implementations:

- ``torch._grouped_mm`` (one CUTLASS grouped GEMM per projection, no host sync, groups with 0 rows cost
  nothing) when it exists, the tensors are CUDA bfloat16 on an sm90/sm100 GPU and the shapes meet its
  alignment rules (h and i multiples of 8, i.e. 16-byte strides; 16-byte aligned data pointers). Signature
  (torch >= 2.8): ``_grouped_mm(mat_a [n, K], mat_b [G, K, N], offs int32 [G] = cumulative row ends)``;
  nn.Linear weights [G, N, K] are passed transposed (a view, no copy), the layout the kernel expects. At most
  ``MAX_GROUPS`` groups per call: larger groups are cut into consecutive runs.
- the fallback: a loop over the *active* experts only (counts > 0, found with one vectorised numpy call),
  each calling :func:`expert_mlp` on its contiguous slice. Why a loop: there is no grouped GEMM on the CPU,
  and a padded ``bmm`` over the group would need the weights of the active experts gathered into a new
  [G, i, h] tensor (a copy of every weight it reads) plus padding every expert to the largest row count.
  Looping keeps each expert's weights read in place, once. (torch 2.13's CPU build has a ``_grouped_mm`` too,
  itself a per-group loop; it is not used, so host and device=cpu results come from one function.)

The store computes both its host (CPU) experts and, on ``device=cpu``, its "GPU" experts through the fallback,
so a given expert with the same rows yields bit-identical results wherever it runs.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Set to False to force the fallback everywhere (debugging, or comparing the two on a GPU).
USE_GROUPED_MM = True
# Groups per torch._grouped_mm call: PyTorch refuses more than 1023 (a store layer whose slots are spread over
# the pool, e.g. riptide's per-layer budgets on a full-depth model, spans more).
MAX_GROUPS = 1023


def expert_mlp(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert: x [n, h], gate/up [i, h], down [h, i] -> [n, h]."""
    return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)


@lru_cache(maxsize=None)
def _grouped_mm_arch(index: int) -> bool:
    # torch's own fast path covers sm90 and sm100 only; elsewhere it loops per group after copying offs to the
    # host (a sync), which is no better than the fallback below
    major, _ = torch.cuda.get_device_capability(index)
    return major in (9, 10)


def _aligned(t: torch.Tensor) -> bool:
    return t.data_ptr() % 16 == 0


def can_use_grouped_mm(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> bool:
    """Whether ``torch._grouped_mm`` can run this group (CUDA, bfloat16, sm90/sm100, 16-byte alignment)."""
    if not USE_GROUPED_MM or not hasattr(torch, "_grouped_mm") or x.device.type != "cuda":
        return False
    if any(t.dtype != torch.bfloat16 or t.device != x.device for t in (x, gate, up, down)):
        return False
    i, h = gate.shape[-2], gate.shape[-1]
    if h % 8 or i % 8 or not (x.is_contiguous() and gate.is_contiguous() and up.is_contiguous() and down.is_contiguous()):
        return False
    if not all(_aligned(t) for t in (x, gate, up, down)):
        return False
    return _grouped_mm_arch(x.device.index if x.device.index is not None else torch.cuda.current_device())


def _grouped_mm_path(x: torch.Tensor, counts: np.ndarray, gate: torch.Tensor, up: torch.Tensor,
                     down: torch.Tensor) -> torch.Tensor:
    """The grouped GEMMs, at most ``MAX_GROUPS`` groups per call (PyTorch refuses more): the groups are cut
    into consecutive runs, each over its own contiguous rows; runs without a row are skipped."""
    G = counts.size
    if G <= MAX_GROUPS:
        return _grouped_mm_run(x, counts, gate, up, down)
    ends = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for g0 in range(0, G, MAX_GROUPS):
        g1 = min(G, g0 + MAX_GROUPS)
        a, b = int(ends[g0]), int(ends[g1])
        if b > a:
            parts.append(_grouped_mm_run(x[a:b], counts[g0:g1], gate[g0:g1], up[g0:g1], down[g0:g1]))
    return torch.cat(parts)


def _grouped_mm_run(x: torch.Tensor, counts: np.ndarray, gate: torch.Tensor, up: torch.Tensor,
                    down: torch.Tensor) -> torch.Tensor:
    # offsets: cumulative row ends, int32, on the device; copied from a page-locked block without a host sync
    # (a pageable copy would first synchronise the host with the stream, behind any queued copies); the
    # caching host allocator recycles the block only after the copy ran
    offs = torch.from_numpy(np.cumsum(counts, dtype=np.int64).astype(np.int32))
    if x.device.type == "cuda":
        offs = offs.pin_memory().to(x.device, non_blocking=True)
    g = torch._grouped_mm(x, gate.transpose(-2, -1), offs=offs)
    u = torch._grouped_mm(x, up.transpose(-2, -1), offs=offs)
    a = (F.silu(g) * u).contiguous()
    return torch._grouped_mm(a, down.transpose(-2, -1), offs=offs)


def _fallback(x: torch.Tensor, counts: np.ndarray, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
              out: torch.Tensor | None) -> torch.Tensor:
    ends = np.cumsum(counts)
    active = np.flatnonzero(counts)  # loop over active experts only, never over the whole group
    parts = [expert_mlp(x[int(ends[g] - counts[g]):int(ends[g])], gate[g], up[g], down[g]) for g in active.tolist()]
    if out is None:
        return torch.cat(parts) if parts else x.new_empty((0, down.shape[-2]))
    if parts:
        torch.cat(parts, out=out)
    return out


def grouped_experts(x_sorted: torch.Tensor, counts: Sequence[int] | np.ndarray, gate_stack: torch.Tensor,
                    up_stack: torch.Tensor, down_stack: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Experts of a stack over rows sorted by stack index; ``counts[g]`` rows (host ints) for stack row g.

    Returns [n, h] in row order; ``out`` (optional, [n, h]) receives the result (e.g. a pinned host buffer).
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    n = int(counts.sum())
    if counts.size != gate_stack.shape[0]:
        raise ValueError(f"{counts.size} counts for a stack of {gate_stack.shape[0]} experts")
    if n != x_sorted.shape[0]:
        raise ValueError(f"counts sum to {n} rows, x_sorted has {x_sorted.shape[0]}")
    if n and can_use_grouped_mm(x_sorted, gate_stack, up_stack, down_stack):
        y = _grouped_mm_path(x_sorted, counts, gate_stack, up_stack, down_stack)
        if out is None:
            return y
        out.copy_(y)
        return out
    return _fallback(x_sorted, counts, gate_stack, up_stack, down_stack, out)
