"""``tide``: the released TIDE behaviour (Chen et al., arXiv 2605.20179; github.com/ims-kdks/TIDE).

Per MoE layer, budget B experts, initial placement experts 0..B-1. A step refreshes the placement when it is a
denoising step whose in-block index is a multiple of tau (0, tau, 2 tau, ...), and on every step of the first
generated block. On a refresh, just after the layer's router ran: target = the B experts with the most
token-assignments this step, keeping only counts > 0; promote the targets that are not resident; demote
resident non-targets, but at most as many as were promoted (the rest stay). Demotions are taken in ascending
expert id (the released code's order is arbitrary). Transfers are synchronous, before the layer's expert
compute; between refreshes the placement is frozen and misses run on the CPU, with no CPU/GPU overlap.
Commit and prefill forwards never refresh.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from offload.policies.base import KEEP, LayerDecision, LayerView, Policy
from offload.policies.params import DEFAULT_TAU, PolicyParams, check_int, knob
from offload.policies.baselines import top_b
from offload.trace import KIND_DECODE, KIND_DENOISE


@dataclass(frozen=True)
class TideParams(PolicyParams):
    policy: ClassVar[str] = "tide"
    tau: int = knob(DEFAULT_TAU, "refresh at in-block steps 0, tau, 2 tau, ... (every step of the first block)",
                    sweep=True)

    def check(self) -> None:
        check_int("tau", self.tau)


class Tide(Policy):
    name = "tide"
    role = "refresh"
    Params = TideParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.tau = self.p.tau  # tide-opt replaces it with the tau it solves for

    @property
    def refresh_interval(self) -> int | None:
        return int(self.p.tau)

    def is_refresh(self, view: LayerView) -> bool:
        step = view.step
        if step.kind not in (KIND_DENOISE, KIND_DECODE):
            return False
        return step.first_block or step.phase % self.tau == 0

    def decide(self, view: LayerView) -> LayerDecision:
        if not self.is_refresh(view):
            return KEEP
        target = np.zeros_like(view.resident)
        target[top_b(view.counts, int(self.ctx.budget[view.layer]))] = True
        promote = np.flatnonzero(target & ~view.resident)
        if len(promote) == 0:
            return KEEP
        # capped at promotions; resident - min(P, NT) + P <= max(resident, |target|) <= B, so it always fits
        demote = np.flatnonzero(view.resident & ~target)[: len(promote)]
        return LayerDecision(promote=promote, demote=demote)
