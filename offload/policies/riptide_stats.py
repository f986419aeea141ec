"""What ``riptide`` (:mod:`offload.policies.riptide`) learns about the generation, and its budget allocation.

:class:`BlockStats` (causal: updated from the steps already decided, in order)
  n_bar  mean denoising steps per generated block, over the blocks finished so far (before the first one ends:
         block_length / 3, about LLaDA2.0's 2.55-3.19 tokens per forward). The block's remaining steps after
         in-block step j, max(0, n_bar - j - 1), bound how long a promotion can pay.

:func:`allocate_budgets` splits a total of N slots over L layers by marginal benefit: every layer first keeps
``floor`` slots (its ``floor`` most valuable experts), the remaining N - L floor slots go to the most valuable
(layer, expert) pairs of all layers. Since each layer's benefits are sorted, layer l gets the slots whose
benefit is above the global cut: the greedy that maximises the total benefit of a concave per-layer curve.
"""
from __future__ import annotations

import numpy as np


class BlockStats:
    """Mean denoising steps per block, learned from the denoising steps seen (see the module docstring)."""

    def __init__(self, block_length: int) -> None:
        self.n_bar = max(1.0, block_length / 3.0)
        self._blocks_done = 0
        self._block: int | None = None   # block of the denoising steps being counted
        self._steps = 0                  # denoising steps seen in it

    def observe(self, block: int) -> None:
        """One denoising step of ``block`` (call once per step, in order)."""
        if block != self._block:
            if self._block is not None and self._steps:
                self._blocks_done += 1
                self.n_bar += (self._steps - self.n_bar) / self._blocks_done  # running mean over blocks
            self._block, self._steps = block, 0
        self._steps += 1


def allocate_budgets(benefit: np.ndarray, total: int, floor: int) -> np.ndarray:
    """Per-layer budgets [L] summing to ``total`` (when L floor <= total <= L E), by marginal benefit.

    ``benefit`` [L, E]: per-step value of each (layer, expert) being resident, any order within a layer.
    Equal benefits are shared out round-robin (by rank within the layer, then by layer), so a flat benefit
    curve gives the uniform budget back and the result is deterministic."""
    L, E = benefit.shape
    floor = int(min(max(floor, 0), E, total // max(L, 1)))
    ranked = -np.sort(-benefit, axis=1, kind="stable")[:, floor:]   # [L, E - floor] descending per layer
    extra = int(min(total - L * floor, ranked.size))
    budgets = np.full(L, floor, dtype=np.int64)
    if extra > 0:
        layer = np.repeat(np.arange(L), E - floor)
        rank = np.tile(np.arange(E - floor), L)
        top = np.lexsort((layer, rank, -ranked.reshape(-1)))[:extra]  # global cut; ties by rank, then layer
        budgets += np.bincount(layer[top], minlength=L)
    return budgets
