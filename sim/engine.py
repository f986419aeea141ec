"""The discrete-event engine (SimPy): replay a trace under a policy on a GPU + CPU + host-link model, priced as
an executor carries the plan out (``offload.executor``; default ``tide-moe``, this project's runtime).

Resources, each serialising its work FIFO: the GPU compute stream, the CPU expert workers (one pool that
runs a layer's CPU batch with all its threads), the H2D and D2H copy engines (one shared engine when the
profile's link is ``shared_duplex``), and the host thread (it syncs with the GPU and runs decide(); only the
main process uses it, like the GPU stream). Work is modelled at the granularity the hardware serialises at:
one event per layer's batch of copies or experts (per staging chunk for streamed experts, whose copies wait
for the chunk before), never one per expert; per-expert blocking copies are priced in closed form.

One forward pass s (times from the cost model, see ``offload.cost``; X the executor, us -> s):

  GPU: step_fixed(s, m)                                overhead, dense layers, lm_head over m rows
       m = the step's lm_tokens (X.lm_head_rows "block") or its tokens forwarded ("prefix", where logits are
       made); + logits_cast(m) = m V (b + 4) / BW_hbm + launch when X.lm_head_fp32
  for each MoE layer l:
    GPU: moe_pre(s)                                    attention, router, shared expert
    host: X.host_sync_us + decide(policy)               the GPU waits (the decision needs the layer's counts)
      decide(policy) = X.decide_us[policy], else X.decide_default_us (X.decide_s). The tide-moe preset names
      none: 0; the tide-moe that validate.calibrate writes beside a profile holds that host's measured figures (its
      moe_overhead table holds all-gpu's decision, KEEP, ~0 us, so nothing is counted twice).
    policy.decide(view)  -> demote, (budget), promote, stream, prefetch, overlap_cpu
    D2H: demoted experts' weights, blocking            only with X.demote_d2h
    CPU path (if any active expert is not on the GPU): D2H activations -> CPU experts -> H2D results
      overlap_cpu: starts now, concurrent with the copies and the GPU experts below
    H2D: promoted (+ streamed when X.staging_slots = 0) weights, blocking: the GPU waits for it
    GPU: gpu_experts(counts on resident experts [+ streamed ones when unstaged]) + n_active x X.gpu_expert_overhead
         after the prefetches it uses have landed
    staged streams (X.staging_slots = S >= 1; chunk C = S // 2, or S with S = 1; H = 2 halves, 1 with S = 1):
      chunk j: H2D copy of its C experts (queued behind the promotions; from j >= H after the GPU finished chunk
      j - H, whose staging half it reuses), then GPU gpu_experts(chunk j) once it landed: the copy of chunk j + 1
      overlaps the compute of chunk j, as runtime/expert_store.py does it. With no other copy or CPU job in flight
      (and no timeline asked for) this recurrence is computed in one go, each instant as the events would give it
    CPU path, without overlap_cpu: only now, after the GPU experts. The layer ends when both are done.
    H2D: each prefetch batch                           asynchronous: later GPU use waits for its arrival

Copies share the H2D engine in request order (FIFO): with overlap_cpu the CPU path's results queue behind this
layer's weight copies, and every prefetch queues behind the work requested before it. What a layer moves and
computes, and every counter, come from its step (``offload.step``: decision, plan, staging chunks), the runtime's;
demotions copied back (X.demote_d2h) occupy the D2H engine but are no counter (the runtime copies none).

Prices (``offload.cost.ExecutorCost``; b = expert bytes; n_p experts of the batch pinned, n_q pageable; T(B) the
profile's copy time of B bytes, T_q the pageable one: latency + B / (pageable_fraction x BW), or its table):
  weights, batched        T(n_p b) + T_q(n_q b)
  weights, per expert     n_p T(b) + n_q T_q(b)                    n blocking copies: n x (latency + b / BW)
  weights, per projection 3 [n_p T(b/3) + n_q T_q(b/3)]
  activations             T(A x tok) as one batch, or sum_e T(c_e x tok) per CPU expert (T_q if X is pageable)
  CPU experts             cpu_experts(counts) + n_active x X.cpu_expert_overhead
An expert is pinned unless X is pageable or it lies beyond the profile's host.pinned_gib (experts pinned in
(layer, expert) order, as the store page-locks its stacks layer by layer).

Host DRAM (X.shared_dram and the profile's host.dram_gbps): every copy and every CPU batch is a job of
``sim.host_dram``, which shares the bandwidth max-min fairly among the jobs running at once. DRAM bytes per job:
a copy of B bytes moves B pinned, 3 B pageable (it bounces through a driver buffer); a CPU batch reads each
active expert's weights once and 2 x rows x token bytes of activations, at the profile's cpu.dram_gbps peak.
Without the figure, or with shared_dram false, nothing is shared.

Serial mode (``serial=True``; by default ``cost.serial``, a ``single_device`` profile: runtime --device cpu):
one device does everything, so nothing overlaps: the CPU path runs after the GPU experts whatever overlap_cpu
says, each prefetch is waited for where it is issued, and activation copies take 0 s (they never leave the
device). An executor with overlap false (the released code) runs the same way but pays its activation copies.
Every work item then starts when the previous one ends:
  step time[s] = sum of the durations of step s's work items,   sim_time = sum over steps.

The simulated time is the completion time of the last work item; per-step times are the differences of the
step end times. Everything is deterministic: no randomness, FIFO resources.
"""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Iterator

import numpy as np
import simpy

from offload.cost import CostModel, ExecutorCost
from offload.executor import ExecutorProfile
from offload.plan import LayerPlan
from offload.policies.base import Policy, StepInfo
from offload.results import RESOURCES, WHAT, Counters, EventLog, SimResult
from offload.step import PlanLog, RunShape, Stepper, trace_steps
from offload.trace import Trace
from sim.host_dram import HostDram

_R = {name: i for i, name in enumerate(RESOURCES)}
_W = {name: i for i, name in enumerate(WHAT)}


def mandatory_gpu_time(trace: Trace, cost: CostModel, executor: ExecutorProfile | None = None) -> float:
    """GPU work every policy must do (dense path of every forward): a floor under any makespan."""
    fixed = _step_fixed(trace, cost) if executor is None else _exec_step_fixed(trace, cost, executor)
    return float(fixed.sum() + trace.num_moe_layers * _moe_pre(trace, cost).sum())


def _step_fixed(trace: Trace, cost: CostModel) -> np.ndarray:
    return np.asarray(cost.step_fixed(trace.tokens_forwarded, trace.context_tokens, trace.lm_tokens, trace.sequences),
                      dtype=np.float64)


def _exec_step_fixed(trace: Trace, cost: CostModel, executor: ExecutorProfile) -> np.ndarray:
    xc = ExecutorCost(cost, executor, np.zeros((0, 0), dtype=bool))
    return xc.step_fixed(trace.tokens_forwarded, trace.context_tokens, trace.lm_tokens, trace.sequences)


def _processed(ev: simpy.Event) -> bool:
    return ev.processed


def _moe_pre(trace: Trace, cost: CostModel) -> np.ndarray:
    return np.asarray(cost.moe_pre(trace.tokens_forwarded, trace.context_tokens, trace.sequences), dtype=np.float64)


class _Run:
    def __init__(self, trace: Trace, policy: Policy, cost: CostModel, budget: Any, shared_duplex: bool,
                 timeline: bool, serial: bool, executor: ExecutorProfile, act_free: bool, plans: PlanLog | None) -> None:
        self.trace, self.policy, self.cost = trace, policy, cost
        self.serial = serial      # nothing overlaps (one device, or an executor that overlaps nothing)
        self.act_free = act_free  # one device: activations never cross a link
        self.x = executor
        L, E = trace.num_moe_layers, trace.num_experts
        self.xc = ExecutorCost.of(cost, executor, L, E)
        self.expert_bytes = int(cost.expert_bytes)
        shape = RunShape(L, E, trace.top_k, self.expert_bytes, int(cost.token_bytes),
                         int(trace.header["generation"].get("block_length", 1)), trace.mode)
        self.stepper: Stepper[simpy.Event] = Stepper(policy, budget, shape, cost=cost, trace=trace, executor=executor,
                                                     log=plans)
        self.residency, self.totals = self.stepper.residency, self.stepper.totals  # simulate's record reads them
        self.env = simpy.Environment()
        self.cpu = simpy.Resource(self.env, capacity=1)
        self.h2d = simpy.Resource(self.env, capacity=1)
        self.d2h = self.h2d if shared_duplex else simpy.Resource(self.env, capacity=1)
        bw = self.xc.dram_bytes_per_s
        self.dram = HostDram(self.env, bw) if bw is not None and not serial else None  # serial: never two jobs at once
        self.cpu_peak = cost.cpu_dram_bytes_per_s  # the CPU experts' own read rate
        self.host_s = executor.host_sync_us * 1e-6 + executor.decide_s(policy.name)  # per layer (module docstring)
        self.counts = trace.counts.view()
        self.counts.setflags(write=False)  # policies get views of it: they must not change the trace
        self.step_fixed = self.xc.step_fixed(trace.tokens_forwarded, trace.context_tokens, trace.lm_tokens,
                                             trace.sequences)
        self.pre = _moe_pre(trace, cost)
        self.busy = dict.fromkeys(RESOURCES, 0.0)
        self.log: list[tuple[int, float, float, int, int, int]] | None = [] if timeline else None
        self.step_end = np.zeros(trace.num_steps)
        self.last_completion = 0.0
        self.aux: list[simpy.Process] = []  # prefetch and CPU-path processes not yet known to be over

    # ---- primitives -----------------------------------------------------------------------------------
    def _record(self, res: str, start: float, end: float, step: int, layer: int, what: str) -> None:
        # called per work item (about a million in a long replay): the log only when a timeline is asked for
        self.busy[res] += end - start
        if end > self.last_completion:
            self.last_completion = end
        if self.log is not None:
            self.log.append((_R[res], start, end, step, layer, _W[what]))

    def gpu(self, dt: float, step: int, layer: int, what: str) -> simpy.Timeout:
        # only the main process issues GPU work, so the stream needs no queue: a timeout is exact
        env = self.env
        now = env.now
        self._record("gpu", now, now + dt, step, layer, what)
        return env.timeout(dt)

    def use(self, res: simpy.Resource, name: str, dt: float, step: int, layer: int, what: str,
            dram_bytes: float = 0.0, dram_peak: float | None = None) -> Iterator[Any]:
        env = self.env
        with res.request() as req:
            yield req
            start = env.now
            if dram_bytes > 0 and dt > 0 and self.dram is not None:
                yield from self.dram.run(dt, dram_bytes, dram_peak)  # slower while other jobs read host DRAM
            else:
                yield env.timeout(dt)
            self._record(name, start, env.now, step, layer, what)

    # ---- policy decisions -------------------------------------------------------------------------------
    def _prefetch(self, step: int, layer: int, demote: np.ndarray, promote: np.ndarray) -> simpy.Process | None:
        """Issue one prefetch's copies (asynchronous): the stepper's ``issue``."""
        if promote.size or (self.x.demote_d2h and demote.size):
            proc = self.env.process(self._prefetch_copies(step, layer, demote, promote))
            self.aux.append(proc)
            return proc
        return None

    def _prefetch_copies(self, step: int, layer: int, demote: np.ndarray, promote: np.ndarray) -> Iterator[Any]:
        if self.x.demote_d2h and demote.size:  # the slot's expert goes back before the new one comes in
            dt, vb = self.xc.demote_d2h(layer, demote)
            yield from self.use(self.d2h, "d2h", dt, step, layer, "demote_d2h", vb)
        if promote.size:
            dt, vb = self.xc.weights_h2d(layer, promote)
            yield from self.use(self.h2d, "h2d", dt, step, layer, "prefetch_h2d", vb)

    # ---- the CPU path of one layer ------------------------------------------------------------------------
    def cpu_path(self, p: LayerPlan, step: int, layer: int) -> Iterator[Any]:
        if self.act_free:  # on one device the activations never cross a link: no copy time
            (d2h, vd), (h2d, vh) = (0.0, 0.0), (0.0, 0.0)
        else:
            (d2h, vd), (h2d, vh) = self.xc.activations("d2h", p.cpu_counts), self.xc.activations("h2d", p.cpu_counts)
        yield from self.use(self.d2h, "d2h", d2h, step, layer, "act_d2h", vd)
        yield from self.use(self.cpu, "cpu", self.xc.cpu_experts(p.cpu_counts), step, layer, "experts_cpu",
                            self.xc.cpu_dram_bytes(p.cpu_counts), self.cpu_peak)
        yield from self.use(self.h2d, "h2d", h2d, step, layer, "act_h2d", vh)

    # ---- the forward passes -----------------------------------------------------------------------------
    def main(self) -> Iterator[Any]:
        tr = self.trace
        L = tr.num_moe_layers
        fixed, pre = self.step_fixed.tolist(), self.pre.tolist()  # Python floats: no 0-d array per item
        for s, info in enumerate(trace_steps(tr)):
            yield self.gpu(fixed[s], s, -1, "dense")
            for layer in range(L):
                yield self.gpu(pre[s], s, layer, "dense")
                yield from self.layer(info, layer)
            self.step_end[s] = self.env.now

    def layer(self, info: StepInfo, layer: int) -> Iterator[Any]:
        s = info.index
        counts = self.counts[s, layer]
        if self.host_s > 0:  # the host syncs for the counts and decides while the GPU waits
            t0 = self.env.now
            self._record("host", t0, t0 + self.host_s, s, layer, "decide")
            yield self.env.timeout(self.host_s)
            self._record_wait(t0, s, layer)
        st = self.stepper.step(info, layer, counts)
        p = st.plan
        if self.x.demote_d2h and p.demote.size:  # expert.to("cpu"): blocking, before the promotions
            t0 = self.env.now
            dt, vb = self.xc.demote_d2h(layer, p.demote)
            yield from self.use(self.d2h, "d2h", dt, s, layer, "demote_d2h", vb)
            self._record_wait(t0, s, layer)
        cpu_proc = None
        if p.cpu_assignments and p.overlap_cpu and not self.serial:
            cpu_proc = self.env.process(self.cpu_path(p, s, layer))  # the CPU works while the weights are copied
            self.aux.append(cpu_proc)
        staged = bool(st.chunks)
        # alone: no other process can touch the copy engines or host DRAM before this layer's GPU experts are done
        # (only this process starts others), so its staging is priced in closed form (_staged_closed)
        alone = staged and not self.serial and self.log is None and self._alone()
        blocking = p.promote if staged else np.concatenate([p.promote, p.stream])
        stage = None
        if blocking.size:
            t0 = self.env.now
            dt, vb = self.xc.weights_h2d(layer, blocking)
            weights = self.use(self.h2d, "h2d", dt, s, layer, "weights_h2d", vb)
            if staged and not self.serial and not alone:  # the chunks queue on the copy engine behind the promotions
                stage = self._stage(st.chunks, s, layer)
            yield from weights
            self._record_wait(t0, s, layer)
        elif staged and not self.serial and not alone:
            stage = self._stage(st.chunks, s, layer)
        waits = self.stepper.arrivals(layer, p, _processed)
        if waits:
            t0 = self.env.now
            yield self.env.all_of(waits)
            self._record_wait(t0, s, layer)
        if staged:
            times = self._staged_times(p, st.chunks)
            resident = self.gpu(float(times[0]), s, layer, "experts_gpu")  # recorded first, as before
            end = self._staged_closed(self.env.now + float(times[0]), times[1:].tolist(), s, layer,
                                      st.chunks) if alone else None
            if alone and end is None:  # the clock would miss the end in one step: the chain, from now (alone)
                stage = self._stage(st.chunks, s, layer)
            yield resident
            if end is not None:
                yield self.env.timeout(end - self.env.now)
            else:
                yield from self._staged_compute(times[1:].tolist(), s, layer, st.chunks, stage)
        else:
            yield self.gpu(self.xc.gpu_experts(p.gpu_counts), s, layer, "experts_gpu")
        t0 = self.env.now
        if cpu_proc is not None:
            if not cpu_proc.processed:
                yield cpu_proc
        elif p.cpu_assignments:
            yield from self.cpu_path(p, s, layer)
        self._record_wait(t0, s, layer)
        if st.decision.prefetch:  # issued once this layer's experts have run, so no slot in use is overwritten
            procs = self.stepper.prefetch(st.decision.prefetch, partial(self._prefetch, s))
            if self.serial and procs:  # one device: the copies run now, before anything else
                t0 = self.env.now
                yield self.env.all_of(procs)
                self._record_wait(t0, s, layer)

    # ---- streamed experts through the staging slots ---------------------------------------------------------
    def _stage(self, chunks: tuple[np.ndarray, ...], step: int, layer: int) -> list[list[simpy.Event]]:
        """Start the staged copies (one process for the chain); returns, per chunk, [copied, computed] events:
        the copy of chunk j waits for the compute of chunk j - halves (its half's last user)."""
        ev = [[self.env.event(), self.env.event()] for _ in chunks]
        halves = self.x.stage_buffers

        def chain() -> Iterator[Any]:
            for j, ids in enumerate(chunks):
                if j >= halves and not ev[j - halves][1].processed:
                    yield ev[j - halves][1]
                dt, vb = self.xc.weights_h2d(layer, ids)
                yield from self.use(self.h2d, "h2d", dt, step, layer, "weights_h2d", vb)
                ev[j][0].succeed()

        self.env.process(chain())
        return ev

    def _staged_compute(self, times: list[float], step: int, layer: int, chunks: tuple[np.ndarray, ...],
                        ev: list[list[simpy.Event]] | None) -> Iterator[Any]:
        if ev is None:  # serial: each chunk copied, then computed, one after the other
            for ids, dt_gpu in zip(chunks, times):
                t0 = self.env.now
                dt, vb = self.xc.weights_h2d(layer, ids)
                yield from self.use(self.h2d, "h2d", dt, step, layer, "weights_h2d", vb)
                self._record_wait(t0, step, layer)
                yield self.gpu(dt_gpu, step, layer, "experts_gpu")
            return
        for (copied, computed), dt_gpu in zip(ev, times):
            if not copied.processed:
                t0 = self.env.now
                yield copied
                self._record_wait(t0, step, layer)
            yield self.gpu(dt_gpu, step, layer, "experts_gpu")
            computed.succeed()

    def _alone(self) -> bool:
        self.aux = [proc for proc in self.aux if not proc.processed]
        return not self.aux

    def _staged_closed(self, g_res: float, times: list[float], step: int, layer: int,
                       chunks: tuple[np.ndarray, ...]) -> float | None:
        """The staging of a layer that runs alone, from now (its promotions copied; the resident experts end at
        ``g_res``), timed as _stage and _staged_compute would: copy j starts when copy j - 1 ends and the
        compute of chunk j - halves is over, compute j when copy j and compute j - 1 are; every instant as
        SimPy's clock gets it (start + duration; the DRAM law's loop for a copy). Records the work and returns
        the last compute's end, or None (nothing recorded) where g_res + (end - g_res) would not land on it."""
        halves, dram = self.x.stage_buffers, self.dram
        g = g_res
        c = self.env.now  # the copy engine is free from now: the promotions' copy just ended
        copies, comps = [], []
        for j, ids in enumerate(chunks):  # a few chunks per layer: the recurrence, not experts
            start = c if j < halves else max(c, comps[j - halves][1])
            dt, vb = self.xc.weights_h2d(layer, ids)
            c = dram.alone_end(start, dt, vb) if dram is not None and vb > 0 and dt > 0 else start + dt
            copies.append((start, c))
            g0 = max(g, c)
            g = g0 + times[j]
            comps.append((g0, g))
        if g_res + (g - g_res) != g:
            return None
        for (a, b), (x, y) in zip(copies, comps):
            self._record("h2d", a, b, step, layer, "weights_h2d")
            self._record("gpu", x, y, step, layer, "experts_gpu")
        return g

    def _staged_times(self, p: LayerPlan, chunks: tuple[np.ndarray, ...]) -> np.ndarray:
        """GPU seconds of a staged layer's resident experts, then of each chunk, priced in one vectorised call: row
        0 holds the resident counts, row 1 + j chunk j's (zeros elsewhere, as priced one at a time before)."""
        rows = np.zeros((1 + len(chunks), p.gpu_counts.size), dtype=p.gpu_counts.dtype)
        rows[0] = np.where(p.resident_mask, p.gpu_counts, 0)
        stream = p.stream  # the chunks are its consecutive slices, all of chunks[0]'s size but the last
        rows[1 + np.arange(stream.size) // chunks[0].size, stream] = p.gpu_counts[stream]
        return self.xc.gpu_experts_rows(rows)

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
             timeline: bool = False, trace_name: str = "trace", serial: bool | None = None,
             executor: ExecutorProfile | str | None = None, plans: PlanLog | None = None) -> SimResult:
    """Replay ``trace`` under ``policy``; ``budget`` is experts per MoE layer (int or [L]; None: all experts);
    ``serial``: one device, nothing overlaps (module docstring); ``shared_duplex``: one copy engine (None: cost's);
    ``executor``: how the plan is carried out (a profile, a preset name or file; None: ``tide-moe``); ``plans``: a
    list to append (step, layer, LayerStep) of every layer to (``offload.step``)."""
    wall0 = time.perf_counter()
    x = executor if isinstance(executor, ExecutorProfile) else ExecutorProfile.load(executor)
    one_device = bool(cost.serial if serial is None else serial)
    shared_duplex = bool(cost.shared_duplex if shared_duplex is None else shared_duplex)
    run = _Run(trace, policy, cost, budget, shared_duplex, timeline, one_device or not x.overlap, x, one_device, plans)
    budget_arr = run.stepper.budget
    events = run.run()
    wall = time.perf_counter() - wall0
    # work still in flight after the last forward (a prefetch) belongs to the last step
    run.step_end[-1] = max(run.step_end[-1], run.last_completion)
    step_times = np.diff(np.concatenate([[0.0], run.step_end]))
    params, report = policy.params(), policy.report()
    return SimResult(
        policy=policy.name, params=params, trace=trace_name, mode=trace.mode,
        tau=policy.refresh_interval, budget=int(budget_arr.max()),
        causal=policy.causal, policy_report=report, generated_tokens=trace.generated_tokens,
        sim_time_s=float(run.last_completion), counters=Counters.of(run.residency.moves, run.totals, run.expert_bytes),
        busy_s=dict(run.busy), step_time_mean_s=float(np.mean(step_times)),
        step_time_p50_s=float(np.median(step_times)), steps=int(step_times.size), events=events, wall_s=wall,
        step_times_s=step_times, max_resident=run.residency.max_resident.copy(), layer_budget=budget_arr,
        timeline=run.timeline())
