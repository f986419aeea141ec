"""The policy interface shared by the simulator and the runtime.

A policy decides, for every MoE layer of every forward pass, which routed experts are resident on the GPU.
The engine (``sim.engine``) and the runtime's expert store call it the same way:

1. ``bind(ctx)``, then ``initial_placement(ctx)``, once, before timing starts (``offload.step``): every method
   may read ``self.ctx`` from then on; the placement is a bool array [L, E] of experts loaded up front (at most
   ``ctx.budget[l]`` per layer).
2. ``decide(view)`` once per (step, MoE layer), *after that layer's router ran for this step* and *before its
   routed experts run*. The view holds exactly what a real runtime knows at that moment: the step's metadata,
   this layer's token-assignment counts for this step, and the current residency. Nothing about later steps.
   A policy keeps any history it wants in its own state (it sees every view in order).

The returned :class:`LayerDecision` says:

- ``demote``: resident experts of this layer dropped now (freeing slots), before the promotions;
- ``promote``: non-resident experts of this layer copied to the GPU *before* this layer's experts run (the
  GPU waits for them), resident afterwards;
- ``stream``: non-resident experts fetched for this layer's use only, computed on the GPU and dropped after
  it (they pass through slots already used in this layer, so they never count against the budget);
- ``prefetch``: asynchronous copies for any layer, issued on the copy engine once this layer's experts have
  run (so no slot in use is overwritten), without blocking; a prefetched expert is resident (holds a slot) from
  then on, and a GPU computation that uses it waits until its copy lands;
- ``overlap_cpu``: whether the CPU's share of this layer runs concurrently with the GPU's share: its
  activations leave for the host right after the decision, so the CPU works while this layer's promotions and
  streams are copied and while the GPU computes (False: the GPU fetches and computes its experts, then waits for
  the CPU's);
- ``budget``: a new budget for this layer (experts), applied after the demotions and before the promotions.
  Per-layer budgets may be re-partitioned this way within the same GPU memory: every layer's budget must stay
  at least its resident experts and at most E, and all layers' budgets together at most the total the engine
  or store was given (``ctx.budget.sum()``); :class:`~offload.policies.residency.Residency` checks it. None: unchanged.

Every active expert (count > 0) that is resident or streamed runs on the GPU; every other active expert runs
on the CPU, with its token activations copied to the host and the results back.

Causality: ``ctx.trace`` (the whole future) is given only to policies that declare ``causal = False``; those
run in the simulator only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from offload.policies.params import PolicyParams
from offload.policies.spec import format_policy
from offload.trace import KIND_DECODE

_EMPTY = np.zeros(0, dtype=np.int64)
_EMPTY.setflags(write=False)


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may know before the first step."""

    num_moe_layers: int
    num_experts: int
    top_k: int
    budget: np.ndarray  # [L] experts resident at most, per MoE layer
    expert_bytes: int
    block_length: int
    mode: str
    cost: Any = None    # an offload.cost.CostModel for cost-aware policies (the runtime passes its calibrated one)
    trace: Any = None   # the whole trace: given to non-causal policies only


# autoregressive decode has no blocks: its first AR_WINDOW tokens play the first block's part for the policies that
# learn from it (tide-opt) and AR_WINDOW tokens a block's for per-block work (riptide's budget re-split); a LLaDA2
# block's length, so that both kinds of generation span the same number of steps
AR_WINDOW = 32


@dataclass(frozen=True)
class StepInfo:
    index: int            # forward pass number, from 0
    block: int            # generated block index from 0 (-1: prompt prefill)
    step_in_block: int    # denoising step within the block
    kind: int             # offload.trace KIND_*: 0 denoise, 1 commit, 2 prefill, 3 decode
    tokens_forwarded: int

    @property
    def first_block(self) -> bool:
        """The first generated block of a diffusion generation (TIDE refreshes at every step of it). An
        autoregressive decode step is a block of one token: it has no first block to learn from."""
        return self.block == 0 and self.kind != KIND_DECODE

    @property
    def phase(self) -> int:
        """Position in the refresh cycle: the denoising step within the block, or, for autoregressive decode
        (one step per token, step_in_block always 0), the token's index, so "every tau steps" means every tau
        tokens."""
        return self.block if self.kind == KIND_DECODE else self.step_in_block


@dataclass(frozen=True)
class LayerView:
    step: StepInfo
    layer: int
    counts: np.ndarray    # [E] token-assignments of this step at this layer (read-only)
    resident: np.ndarray  # [E] bool, residency before this decision (read-only)


@dataclass(frozen=True)
class Prefetch:
    layer: int
    promote: np.ndarray
    demote: np.ndarray = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class LayerDecision:
    promote: np.ndarray = field(default_factory=lambda: _EMPTY)
    demote: np.ndarray = field(default_factory=lambda: _EMPTY)
    stream: np.ndarray = field(default_factory=lambda: _EMPTY)
    prefetch: tuple[Prefetch, ...] = ()
    overlap_cpu: bool = False
    budget: int | None = None


KEEP = LayerDecision()


def ids(x: Any) -> np.ndarray:
    """Expert ids as a 1-D int64 array."""
    return np.asarray(x, dtype=np.int64).reshape(-1)


class Policy(ABC):
    """Base class; subclasses set ``name`` and implement :meth:`decide`."""

    name: ClassVar[str] = "policy"
    role: ClassVar[str] = "ours"  # its part in a comparison (offload.policies.ROLES): tables read it, not the name
    causal: ClassVar[bool] = True
    needs_budget: ClassVar[bool] = True
    uses_cost: ClassVar[bool] = False  # decides from the cost model (ctx.cost): a hardware profile matters
    Params: ClassVar[type[PolicyParams]] = PolicyParams  # its knobs (offload.policies.params)

    def __init__(self, **params: Any) -> None:
        self.p = self.Params.build(self.name, **params)

    def bind(self, ctx: PolicyContext) -> None:
        """The run's context, set by ``offload.step`` before ``initial_placement``: a subclass need not keep it."""
        self.ctx = ctx

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        """Default (as TIDE's code): experts 0..B-1 of every layer."""
        placement = np.zeros((ctx.num_moe_layers, ctx.num_experts), dtype=bool)
        for layer, b in enumerate(ctx.budget):
            placement[layer, : int(b)] = True
        return placement

    @abstractmethod
    def decide(self, view: LayerView) -> LayerDecision:
        ...

    def params(self) -> dict[str, Any]:
        """Parameters that reproduce this policy (recorded with results and in recommended-policy files)."""
        return self.p.params()

    def settings(self) -> dict[str, Any]:
        """Every knob, defaults included."""
        return self.p.settings()

    def report(self) -> dict[str, Any]:
        """What the policy decided that a result should show (tide-opt: the chosen tau); none by default."""
        return {}

    @property
    def refresh_interval(self) -> int | None:
        """Steps between refreshes as records show it (``SimRecord.tau``; tide, tide-opt); None: no single one."""
        return None

    def label(self) -> str:
        """``name(k=v, ...)``: the policy syntax every CLI reads back (``offload.policies.spec``)."""
        return format_policy(self.name, self.params())
