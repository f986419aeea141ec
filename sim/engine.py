"""The discrete-event engine (SimPy): replay a trace under a policy on a GPU + CPU + host-link model.

Resources, each serialising its work FIFO: the GPU compute stream, the CPU expert workers (one pool that
runs a layer's CPU batch with all its threads), the H2D and D2H copy engines (one shared engine when the
profile's link is ``shared_duplex``). Work is modelled at the granularity the hardware serialises at: one
event per layer's batch of copies or experts, never one per expert.

One forward pass s (times from the cost model, see ``offload.cost``):

  GPU: step_fixed(s)                                   overhead, dense layers, lm_head
  for each MoE layer l:
    GPU: moe_pre(s)                                    attention, router, shared expert
    policy.decide(view)  -> demote, (budget), promote, stream, prefetch, overlap_cpu
    CPU path (if any active expert is not on the GPU): D2H activations -> CPU experts -> H2D results
      overlap_cpu: starts now, concurrent with the copies and the GPU experts below
    H2D: (|promote| + |stream|) x expert_bytes         blocking: the GPU waits for it
    GPU: gpu_experts(counts on resident or streamed experts), after the prefetches it uses have landed
    CPU path, without overlap_cpu: only now, after the GPU experts. The layer ends when both are done.
    H2D: each prefetch batch                           asynchronous: later GPU use waits for its arrival

Copies share the H2D engine in request order (FIFO): with overlap_cpu the CPU path's results queue behind this
layer's weight copies, and every prefetch queues behind the work requested before it. What a layer moves and
computes, and every counter, come from its plan (``offload.plan.plan_layer``), the one the runtime carries out.

Serial mode (``serial=True``; by default ``cost.serial``, a ``single_device`` profile: runtime --device cpu):
one device does everything, so nothing overlaps: the CPU path runs after the GPU experts whatever overlap_cpu
says, each prefetch is waited for where it is issued, and activation copies take 0 s (they never leave the
device). Every work item then starts when the previous one ends:
  step time[s] = sum of the durations of step s's work items,   sim_time = sum over steps.

The simulated time is the completion time of the last work item; per-step times are the differences of the
step end times. Everything is deterministic: no randomness, FIFO resources.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

import numpy as np
import simpy

from offload.cost import CostModel
from offload.errors import TideError
from offload.plan import LayerPlan, PlanTotals, plan_layer
from offload.policies.base import LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo
from offload.policies.residency import Residency
from offload.results import RESOURCES, WHAT, Counters, EventLog, SimResult
from offload.trace import Trace

_R = {name: i for i, name in enumerate(RESOURCES)}
_W = {name: i for i, name in enumerate(WHAT)}


def mandatory_gpu_time(trace: Trace, cost: CostModel) -> float:
    """GPU work every policy must do (dense path of every forward): a floor under any makespan."""
    return float(_step_fixed(trace, cost).sum() + trace.num_moe_layers * _moe_pre(trace, cost).sum())


def _step_fixed(trace: Trace, cost: CostModel) -> np.ndarray:
    return np.asarray(cost.step_fixed(trace.tokens_forwarded, trace.context_tokens, trace.lm_tokens), dtype=np.float64)


def _moe_pre(trace: Trace, cost: CostModel) -> np.ndarray:
    return np.asarray(cost.moe_pre(trace.tokens_forwarded, trace.context_tokens), dtype=np.float64)


class _Run:
    def __init__(self, trace: Trace, policy: Policy, cost: CostModel, budget: np.ndarray, shared_duplex: bool,
                 timeline: bool, serial: bool) -> None:
        self.trace, self.policy, self.cost, self.serial = trace, policy, cost, serial
        self.expert_bytes, self.token_bytes = int(cost.expert_bytes), int(cost.token_bytes)
        self.budget = np.asarray(budget, dtype=np.int64)
        self.env = simpy.Environment()
        self.cpu = simpy.Resource(self.env, capacity=1)
        self.h2d = simpy.Resource(self.env, capacity=1)
        self.d2h = self.h2d if shared_duplex else simpy.Resource(self.env, capacity=1)
        self.counts = trace.counts.view()
        self.counts.setflags(write=False)  # policies get views of it: they must not change the trace
        self.step_fixed = _step_fixed(trace, cost)
        self.pre = _moe_pre(trace, cost)
        self.busy = dict.fromkeys(RESOURCES, 0.0)
        self.totals = PlanTotals()
        self.log: list[tuple[int, float, float, int, int, int]] | None = [] if timeline else None
        self.step_end = np.zeros(trace.num_steps)
        self.last_completion = 0.0
        L, E = trace.num_moe_layers, trace.num_experts
        ctx = PolicyContext(num_moe_layers=L, num_experts=E, top_k=trace.top_k, budget=self.budget.copy(),
                            expert_bytes=self.expert_bytes,
                            block_length=int(trace.header["generation"].get("block_length", 1)), mode=trace.mode,
                            cost=cost, trace=None if policy.causal else trace)
        self.residency = Residency(policy, policy.initial_placement(ctx), self.budget)
        if self.residency.resident.shape != (L, E):
            raise TideError(f"policy {policy.name}: initial placement has shape {self.residency.resident.shape}, expected {(L, E)}")
        # in-flight prefetches per layer: (arrival event, bool mask of experts)
        self.pending: list[list[tuple[simpy.Event, np.ndarray]]] = [[] for _ in range(L)]

    # ---- primitives -----------------------------------------------------------------------------------
    def _record(self, res: str, start: float, end: float, step: int, layer: int, what: str) -> None:
        self.busy[res] += end - start
        if end > self.last_completion:
            self.last_completion = end
        if self.log is not None:
            self.log.append((_R[res], start, end, step, layer, _W[what]))

    def gpu(self, dt: float, step: int, layer: int, what: str) -> simpy.Timeout:
        # only the main process issues GPU work, so the stream needs no queue: a timeout is exact
        now = self.env.now
        self._record("gpu", now, now + dt, step, layer, what)
        return self.env.timeout(dt)

    def use(self, res: simpy.Resource, name: str, dt: float, step: int, layer: int, what: str) -> Iterator[Any]:
        with res.request() as req:
            yield req
            start = self.env.now
            yield self.env.timeout(dt)
            self._record(name, start, self.env.now, step, layer, what)

    # ---- policy decisions -------------------------------------------------------------------------------
    def _prefetch(self, step: int, prefetch: tuple[Prefetch, ...]) -> list[simpy.Process]:
        """Issue the prefetch copies (asynchronous); returns their processes."""
        procs = []
        for pf in prefetch:
            _, promote, _ = self.residency.apply(int(pf.layer), LayerDecision(promote=pf.promote, demote=pf.demote))
            if promote.size:
                mask = np.zeros(self.trace.num_experts, dtype=bool)
                mask[promote] = True
                dt = float(self.cost.h2d(promote.size * self.expert_bytes))
                proc = self.env.process(self.use(self.h2d, "h2d", dt, step, int(pf.layer), "prefetch_h2d"))
                self.pending[int(pf.layer)].append((proc, mask))
                procs.append(proc)
        return procs

    def _arrivals(self, layer: int, gpu_mask: np.ndarray) -> list[simpy.Event]:
        waits, keep = [], []
        for ev, mask in self.pending[layer]:
            if ev.processed:
                continue
            keep.append((ev, mask))
            if (mask & gpu_mask).any():
                waits.append(ev)
        self.pending[layer] = keep
        return waits

    # ---- the CPU path of one layer ------------------------------------------------------------------------
    def cpu_path(self, p: LayerPlan, step: int, layer: int) -> Iterator[Any]:
        act = 0 if self.serial else p.act_bytes  # on one device the activations never cross a link: no copy time
        yield from self.use(self.d2h, "d2h", float(self.cost.d2h(act)), step, layer, "act_d2h")
        yield from self.use(self.cpu, "cpu", float(self.cost.cpu_experts(p.cpu_counts)), step, layer, "experts_cpu")
        yield from self.use(self.h2d, "h2d", float(self.cost.h2d(act)), step, layer, "act_h2d")

    # ---- the forward passes -----------------------------------------------------------------------------
    def main(self) -> Iterator[Any]:
        tr = self.trace
        L = tr.num_moe_layers
        for s in range(tr.num_steps):
            info = StepInfo(index=s, block=int(tr.block[s]), step_in_block=int(tr.step_in_block[s]),
                            kind=int(tr.kind[s]), tokens_forwarded=int(tr.tokens_forwarded[s]))
            yield self.gpu(float(self.step_fixed[s]), s, -1, "dense")
            for layer in range(L):
                yield self.gpu(float(self.pre[s]), s, layer, "dense")
                yield from self.layer(info, layer)
            self.step_end[s] = self.env.now

    def layer(self, info: StepInfo, layer: int) -> Iterator[Any]:
        s = info.index
        counts = self.counts[s, layer]
        dec = self.policy.decide(LayerView(step=info, layer=layer, counts=counts, resident=self.residency.view(layer)))
        moved = self.residency.apply(layer, dec)
        p = plan_layer(self.residency.resident[layer], *moved, counts, dec, self.expert_bytes, self.token_bytes)
        self.totals.add(p)
        cpu_proc = None
        if p.cpu_assignments and p.overlap_cpu and not self.serial:
            cpu_proc = self.env.process(self.cpu_path(p, s, layer))  # the CPU works while the weights are copied
        if p.weight_h2d_bytes:
            t0 = self.env.now
            yield from self.use(self.h2d, "h2d", float(self.cost.h2d(p.weight_h2d_bytes)), s, layer, "weights_h2d")
            self._record_wait(t0, s, layer)
        waits = self._arrivals(layer, p.gpu_mask)
        if waits:
            t0 = self.env.now
            yield self.env.all_of(waits)
            self._record_wait(t0, s, layer)
        yield self.gpu(float(self.cost.gpu_experts(p.gpu_counts)), s, layer, "experts_gpu")
        t0 = self.env.now
        if cpu_proc is not None:
            if not cpu_proc.processed:
                yield cpu_proc
        elif p.cpu_assignments:
            yield from self.cpu_path(p, s, layer)
        self._record_wait(t0, s, layer)
        if dec.prefetch:  # issued once this layer's experts have run, so no slot in use is overwritten
            procs = self._prefetch(s, dec.prefetch)
            if self.serial and procs:  # one device: the copies run now, before anything else
                t0 = self.env.now
                yield self.env.all_of(procs)
                self._record_wait(t0, s, layer)

    def _record_wait(self, t0: float, step: int, layer: int) -> None:
        # the GPU stream idles while waiting: logged for the timeline, not counted as busy
        if self.log is not None and self.env.now > t0:
            self.log.append((_R["gpu"], t0, self.env.now, step, layer, _W["wait"]))

    def run(self) -> int:
        self.env.process(self.main())
        n = 0
        step = self.env.step
        try:
            while True:
                step()
                n += 1
        except simpy.core.EmptySchedule:
            pass
        return n

    def timeline(self) -> EventLog | None:
        if self.log is None:
            return None
        a = np.array(self.log, dtype=np.float64).reshape(-1, 6)
        return EventLog(resource=a[:, 0].astype(np.int8), start=a[:, 1], end=a[:, 2], step=a[:, 3].astype(np.int32),
                        layer=a[:, 4].astype(np.int16), what=a[:, 5].astype(np.int8))


def simulate(trace: Trace, policy: Policy, cost: CostModel, budget: Any = None, *, shared_duplex: bool | None = None,
             timeline: bool = False, trace_name: str = "trace", serial: bool | None = None) -> SimResult:
    """Replay ``trace`` under ``policy``; ``budget`` is experts per MoE layer (int or [L]; None: all experts);
    ``serial``: one device, nothing overlaps (module docstring); ``shared_duplex``: one copy engine (None: cost's)."""
    L, E = trace.num_moe_layers, trace.num_experts
    if budget is None or not policy.needs_budget:
        budget_arr = np.full(L, E, dtype=np.int64)
    else:
        budget_arr = np.broadcast_to(np.asarray(budget, dtype=np.int64), (L,)).copy()
        if budget_arr.min() < 1 or budget_arr.max() > E:
            raise TideError(f"budget must be between 1 and {E} experts per layer")
    wall0 = time.perf_counter()
    serial = bool(cost.serial if serial is None else serial)
    shared_duplex = bool(cost.shared_duplex if shared_duplex is None else shared_duplex)
    run = _Run(trace, policy, cost, budget_arr, shared_duplex, timeline, serial)
    events = run.run()
    wall = time.perf_counter() - wall0
    # work still in flight after the last forward (a prefetch) belongs to the last step
    run.step_end[-1] = max(run.step_end[-1], run.last_completion)
    step_times = np.diff(np.concatenate([[0.0], run.step_end]))
    params, report = policy.params(), policy.report()
    tau = params.get("tau", report.get("chosen_tau"))  # tide-opt reports the tau it chose (a list when per layer)
    return SimResult(
        policy=policy.name, params=params, trace=trace_name, mode=trace.mode,
        tau=int(tau) if isinstance(tau, (int, np.integer)) else None, budget=int(budget_arr.max()),
        causal=policy.causal, policy_report=report, generated_tokens=trace.generated_tokens,
        sim_time_s=float(run.last_completion), counters=Counters.of(run.residency.moves, run.totals, run.expert_bytes),
        busy_s=dict(run.busy), lower_bound_s=mandatory_gpu_time(trace, cost), step_time_mean_s=float(np.mean(step_times)),
        step_time_p50_s=float(np.median(step_times)), steps=int(step_times.size), events=events, wall_s=wall,
        step_times_s=step_times, max_resident=run.residency.max_resident.copy(), layer_budget=budget_arr,
        timeline=run.timeline())
