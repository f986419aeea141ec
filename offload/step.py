"""The per-layer protocol, one copy for the engine, the store and the decide() timer (numpy only): ``sim.engine``
times what a :class:`Stepper` gives, ``runtime.expert_store`` carries it out, ``validate.bench_decide`` times only
its decide() calls.

Once per run (:class:`Stepper`):

  budget [L]   E per layer for a policy that needs none (or no budget given), else the given one, each in 1..E
  ctx          PolicyContext of the run; its expert bytes the cost model's where there is one (the policy prices
               with it); the whole trace only for a non-causal policy
  policy.bind(ctx), then residency = Residency(policy, policy.initial_placement(ctx), budget), checked [L, E]

Per (step s, MoE layer l), in order (:meth:`Stepper.step`):

  dec    = policy.decide(LayerView(s, l, counts, residency.view(l)))    timed (perf_counter_ns) when asked
  moved  = residency.apply(l, dec)                                       checked and counted
  plan   = plan_layer(residency.resident[l], *moved, counts, dec, ...)    totals += plan
  chunks = plan.stream in order, the executor profile's stage_chunk at a time (none without staging slots)

Once the layer's experts are issued (:meth:`Stepper.prefetch`): each of dec.prefetch goes through the residency
and the engine's or store's ``issue`` copies it, returning a handle (a SimPy event, a stream event) or None; a
handle that brings experts in joins its target layer's in-flight list. Before layer l's GPU experts run
(:meth:`Stepper.arrivals`): the in-flight handles into l not yet ``done`` whose experts the plan runs on the GPU
must be waited for; done and returned handles leave the list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np

from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.plan import LayerPlan, PlanTotals, plan_layer
from offload.policies import POLICIES
from offload.policies.base import LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo
from offload.policies.residency import MoveCounters, Residency
from offload.results import Counters

H = TypeVar("H")  # the engine's or the store's handle on an in-flight copy
Issue = Callable[[int, np.ndarray, np.ndarray], Any]  # (layer, demote, promote) -> handle or None


@dataclass(frozen=True)
class RunShape:
    """The model and generation a run steps through, and the units its plans count in."""

    num_moe_layers: int
    num_experts: int
    top_k: int
    expert_bytes: int  # one expert's weights as the engine or store holds them
    token_bytes: int  # one token's hidden vector
    block_length: int = 1
    mode: str = "prefix-recompute"


@dataclass(frozen=True, eq=False)
class LayerStep:
    decision: LayerDecision
    plan: LayerPlan
    chunks: tuple[np.ndarray, ...]  # the streamed experts per staging chunk (empty: none staged)


PlanLog = list[tuple[int, int, LayerStep]]  # (step, layer, its LayerStep) of every layer stepped


def trace_steps(trace: Any) -> list[StepInfo]:
    """Every forward pass of an ``offload.trace.Trace`` as its policy is shown it."""
    kinds, blocks, sib, tf = trace.kind, trace.block, trace.step_in_block, trace.tokens_forwarded
    return [StepInfo(s, int(blocks[s]), int(sib[s]), int(kinds[s]), int(tf[s])) for s in range(trace.num_steps)]


def layer_budget(policy: Policy, budget: Any, layers: int, experts: int) -> np.ndarray:
    """Experts per MoE layer [L]: all of them for a policy that needs no budget or without one, else ``budget``
    (int or [L]), each in 1..E."""
    if budget is None or not policy.needs_budget:
        return np.full(layers, experts, dtype=np.int64)
    out = np.broadcast_to(np.asarray(budget, dtype=np.int64), (layers,)).copy()
    if out.min() < 1 or out.max() > experts:
        raise TideError(f"budget must be between 1 and {experts} experts per layer")
    return out


class Stepper(Generic[H]):
    """One run's policy, residency and plan totals, stepped layer by layer (module docstring). ``timed``: keep
    every decide() call's wall time; ``log``: a list to append (step, layer, LayerStep) of every layer to."""

    def __init__(
        self,
        policy: Policy,
        budget: Any,
        shape: RunShape,
        *,
        cost: Any = None,
        trace: Any = None,
        executor: ExecutorProfile | None = None,
        timed: bool = False,
        log: PlanLog | None = None,
    ) -> None:
        L, E = shape.num_moe_layers, shape.num_experts
        # a name neither registered nor this run's policy: misspelt, it would leave its policy at the default
        unknown = sorted(set(executor.decide_us) - set(POLICIES) - {policy.name}) if executor is not None else []
        if unknown:
            raise TideError(f"executor {executor.name}: decide_us names unknown policy {', '.join(unknown)}")
        self.policy, self.shape, self.log = policy, shape, log
        self.budget = layer_budget(policy, budget, L, E)  # as given: the residency's copy follows re-partitions
        ctx = PolicyContext(
            num_moe_layers=L,
            num_experts=E,
            top_k=shape.top_k,
            budget=self.budget.copy(),
            expert_bytes=int(cost.expert_bytes) if cost is not None else shape.expert_bytes,
            block_length=int(shape.block_length),
            mode=shape.mode,
            cost=cost,
            trace=None if policy.causal else trace,
        )
        policy.bind(ctx)
        self.residency = Residency(policy, policy.initial_placement(ctx), self.budget)
        if self.residency.resident.shape != (L, E):
            raise TideError(
                f"policy {policy.name}: initial placement has shape {self.residency.resident.shape}, expected {(L, E)}"
            )
        self.totals = PlanTotals()
        self.chunk = executor.stage_chunk if executor is not None else 0
        self.decide_ns: list[int] | None = [] if timed else None
        self.pending: list[list[tuple[H, np.ndarray]]] = [[] for _ in range(L)]

    def step(self, info: StepInfo, layer: int, counts: np.ndarray) -> LayerStep:
        """Decide, apply and plan layer ``layer`` of step ``info`` on its read-only ``counts`` [E]."""
        dec = self._decide(LayerView(step=info, layer=layer, counts=counts, resident=self.residency.view(layer)))
        moved = self.residency.apply(layer, dec)
        p = plan_layer(
            self.residency.resident[layer], *moved, counts, dec, self.shape.expert_bytes, self.shape.token_bytes
        )
        self.totals.add(p)
        c = self.chunk
        out = LayerStep(dec, p, tuple(p.stream[i : i + c] for i in range(0, p.stream.size, c)) if c else ())
        if self.log is not None:
            self.log.append((info.index, layer, out))
        return out

    def _decide(self, view: LayerView) -> LayerDecision:
        if self.decide_ns is None:
            return self.policy.decide(view)
        t0 = time.perf_counter_ns()
        dec = self.policy.decide(view)
        self.decide_ns.append(time.perf_counter_ns() - t0)
        return dec

    def prefetch(self, prefetch: Sequence[Prefetch], issue: Issue) -> list[H]:
        """Apply each prefetch through the residency and ``issue`` its copies; returns the handles issued."""
        out = []
        for pf in prefetch:
            layer, demote, promote = self.residency.prefetch(pf)
            h = issue(layer, demote, promote)
            if h is None:
                continue
            out.append(h)
            if promote.size:
                mask = np.zeros(self.shape.num_experts, dtype=bool)
                mask[promote] = True
                self.pending[layer].append((h, mask))
        return out

    def arrivals(self, layer: int, plan: LayerPlan, done: Callable[[H], bool]) -> list[H]:
        """The in-flight prefetches into ``layer`` that the plan's GPU experts must wait for; they, and those
        already ``done``, leave the in-flight list."""
        waits, keep = [], []
        for h, mask in self.pending[layer]:
            if done(h):
                continue
            (waits if (mask & plan.gpu_mask).any() else keep).append((h, mask))
        self.pending[layer] = keep
        return [h for h, _ in waits]

    def run(self, counts: np.ndarray, steps: Sequence[StepInfo]) -> None:
        """Step every (step, layer) of ``counts`` [S, L, E] in order, issuing no copies (prefetches only move the
        residency): what the decide() timer drives."""
        counts, want = np.asarray(counts), (self.shape.num_moe_layers, self.shape.num_experts)
        if counts.ndim != 3 or counts.shape[1:] != want:
            raise TideError(f"counts must be [steps, {want[0]} layers, {want[1]} experts], got shape {counts.shape}")
        if len(steps) != counts.shape[0]:
            raise TideError(f"{len(steps)} StepInfo for {counts.shape[0]} steps of counts")
        counts = counts.view()
        counts.setflags(write=False)  # the policy gets views of it: it must not change them
        for s, info in enumerate(steps):
            for layer in range(counts.shape[1]):
                self.prefetch(self.step(info, layer, counts[s, layer]).decision.prefetch, _no_copy)

    @property
    def decide_us(self) -> np.ndarray:
        """Microseconds of every timed decide() call, in call order (step-major)."""
        return np.asarray(self.decide_ns if self.decide_ns is not None else [], dtype=np.int64) / 1e3

    def counters(self) -> Counters:
        """The work stepped so far (``offload.results.Counters``)."""
        return Counters.of(self.residency.moves, self.totals, self.shape.expert_bytes)

    def reset_counters(self) -> None:
        """Zero the counters (after a warm-up); the residency is kept."""
        self.residency.moves = MoveCounters()
        self.totals = PlanTotals()


def _no_copy(layer: int, demote: np.ndarray, promote: np.ndarray) -> None:
    return None
