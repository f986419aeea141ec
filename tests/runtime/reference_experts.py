"""The all-resident reference experts: every routed expert on one device, no offloading.

For MoE layer m, tokens x [T, h], ids [T, k] and weights w [T, k] (float32):

  routed[t] = sum_j w[t, j] * down_e(silu(gate_e x[t]) * up_e x[t]),  e = ids[t, j]

Tokens are grouped by expert (one stable sort of the T*k assignments) and each used expert runs once on all
its tokens; the weighted results are accumulated in float32 with index_add_ and cast to x's dtype. It is the
correctness reference for the expert store and the "everything fits" baseline.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runtime.checkpoint import ExpertWeights, LayerExperts


class LocalExperts:
    """Routed experts from a device copy of ``experts`` (see runtime.model.RoutedExperts)."""

    def __init__(self, experts: ExpertWeights, device=None, dtype: torch.dtype | None = None) -> None:
        dtype = dtype or experts.dtype
        self.layers = tuple(
            LayerExperts(*(t.to(device=device, dtype=dtype) for t in (l.gate, l.up, l.down))) for l in experts.layers
        )

    def forward(
        self, moe_layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        lx = self.layers[moe_layer]
        T, k = topk_ids.shape
        out = torch.zeros(T, x.shape[1], dtype=torch.float32, device=x.device)
        if T == 0:
            return out.to(x.dtype)
        flat = topk_ids.reshape(-1)
        order = torch.argsort(flat, stable=True)  # assignments grouped by expert, token order kept
        counts = torch.bincount(flat, minlength=lx.gate.shape[0]).tolist()  # one host sync per layer
        w = topk_weights.reshape(-1).float()
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            sel = order[start : start + n]
            start += n
            tok = sel // k
            xe = x[tok]
            y = F.linear(F.silu(F.linear(xe, lx.gate[e])) * F.linear(xe, lx.up[e]), lx.down[e])
            out.index_add_(0, tok, y.float() * w[sel, None])
        return out.to(x.dtype)
