"""The runtime's routed experts: a GPU slot pool shared out among the MoE layers, host copies of every expert,
and a placement policy (``offload.policies``) that decides per (step, layer) what moves, executed with the
simulator's semantics and counted the simulator's way (``sim.engine``, ``offload.results``).

Memory
  host    every expert of every MoE layer, in the store's dtype; for CUDA page-locked *in place*
          (cudaHostRegister, no copy) so copies are asynchronous DMA; if the OS refuses, the stacks stay
          pageable (a warning; ``pinned`` False) and are never duplicated. On ``device=cpu`` the caller's
          tensors are kept as they are.
  device  one pool of S = sum(budget) slots, gate/up [S, i, h], down [S, h, i] (all-gpu: L x E slots). MoE
          layer l owns budget[l] of them, listed in ``slots[l]`` (local slot j -> global slot slots[l][j]);
          initially layer l owns the contiguous range after layer l-1's. A policy that re-partitions the
          budgets (``LayerDecision.budget``) moves *free* slots between layers: a shrinking layer hands back its
          free local slots, a growing one takes the lowest free global slots; no weight moves for it. A slot a
          layer gave up is refilled only by a later copy, which on CUDA waits for the compute queued before it.
          The bookkeeping is ``runtime.slot_pool.SlotMap``.
          the executor profile's ``staging_slots`` (``offload.executor``; tide-moe: 8) staging slots shared by
          all layers for streamed experts; per forward a [T*k, h]
          buffer of expert outputs and the rows gathered for the experts. On ``device=cpu`` the pool is a
          second copy in host memory and every copy below is a memcpy (the same code path).
  :func:`check_budget_fits` compares (sum(budget) + staging_slots) x expert_bytes with the free GPU memory.

What is copied when (one MoE layer, one forward; streams in brackets). All device work is launched on the
streams of ``runtime.streams`` and ordered by named events (``runtime.streams.WAITS``), the same code for
CUDA, the host (device=cpu) and the tests' threaded stand-in for CUDA.
  0. at construction, not counted: the policy's initial placement into slots (before any timing, as TIDE's
     code loads its resident experts at model load).
  1. counts = bincount(topk_ids): one small D2H copy of E ints, the one host sync per layer (the policy needs
     them; TIDE does the same). The sort key goes back through a page-locked block without a host sync.
  2. the layer's step (``offload.step``: policy.decide -> Residency.apply -> offload.plan.plan_layer, the plan
     the simulator times: what is resident, streamed and run on the CPU, with the counters and bytes, and the
     streamed experts' staging chunks); demoted slots are freed, the
     layer's slot list resized to a new budget if the decision set one, promoted experts copied host -> free
     slots [copy stream, after the compute stream's queued work, so no slot still being read is overwritten];
     the layer's GPU experts wait for them (synchronous semantics), but the rows for the CPU experts are
     gathered before that wait, so with overlap_cpu the CPU path runs while the promotions and streams are
     copied (as the simulator models it).
  3. GPU experts wait for earlier prefetches into this layer whose experts they use.
  4. GPU experts = active & (resident | streamed): resident ones as one grouped GEMM over the span of the
     pool the layer's slots cover (rows sorted by slot, one stable device argsort); streamed ones in chunks
     through the staging slots, in the step's chunks (two halves, ping-pong: the copy of chunk c+1 [copy stream]
     overlaps the compute of chunk c).
  5. CPU experts = the other active ones: one hidden row per CPU token-assignment gathered on the device,
     copied to the host [activation stream, pinned], computed on the CPU from the host weights, copied back
     [activation stream] and placed. overlap_cpu=True: the GPU experts are enqueued first and run while the
     CPU works; False (TIDE): the GPU experts are synchronised before the CPU work starts.
  6. prefetches (decision.prefetch) go through the stepper once this layer's experts are enqueued: copies on
     the copy stream after the compute stream's queued work, one event per batch that the target layer's
     next forward waits on before reading those slots.
  7. out = sum_k w[t, k] * y[t, k] in float32, cast to x's dtype.

Losslessness: every assignment's expert output lands at its own row of the [T*k, h] buffer, whatever ran it,
and the weighted sum over k is one fixed reduction (moe_infer's order: expert output in the model dtype,
weight and sum in float32). An expert always gets the same rows in the same order, and the host path and the
device=cpu "GPU" path use the same per-expert function, so on device=cpu in float32 every policy's output is
bit-identical to all-gpu's.

Counters (:meth:`ExpertStore.counters`): the engine's ``offload.results.Counters``, from the same residency moves
(promote + stream + prefetch; demote + stream + prefetch demote) and the sums of the same plans (PlanTotals),
with expert_bytes = 3 h i and token_bytes = h times the store's element size.
"""
from __future__ import annotations

import warnings
from functools import partial
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch

from runtime.kernels import grouped_experts
from runtime.slot_pool import SlotMap
from runtime.streams import ACT, COMPUTE, COPY, SERIAL_CPU, default_streams
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.model_spec import ModelSpec
from offload.policies.base import Policy, StepInfo
from offload.results import Counters
from offload.step import PlanLog, RunShape, Stepper

_GIB = 2**30
_PROJ = ("gate", "up", "down")


def check_budget_fits(budget: Any, expert_bytes: int, device: torch.device | str, staging_slots: int = 0) -> int:
    """Bytes the slot pools (+ staging slots) need; on CUDA raise a one-line TideError if they exceed the free
    memory of ``device`` (torch.cuda.mem_get_info)."""
    budget = np.asarray(budget, dtype=np.int64).reshape(-1)
    device = torch.device(device)
    need = (int(budget.sum()) + int(staging_slots)) * int(expert_bytes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > free:
            per = f"{int(budget[0])} experts per layer x {budget.size} layers" if np.all(budget == budget[0]) \
                else f"{int(budget.sum())} experts over {budget.size} layers"
            raise TideError(f"budget of {per} (+{staging_slots} staging slots) needs {need / _GIB:.2f} GiB, "
                            f"{free / _GIB:.2f} GiB free on {device}")
    return need


class ExpertStore:
    """Routed experts of every MoE layer, placed by ``policy``; see the module docstring.

    ``streams`` executes the device work (``runtime.streams``): by default CUDA streams on a CUDA device and
    the host itself on ``device=cpu``; tests pass a :class:`~runtime.streams.ThreadStreams` to run every CUDA
    ordering path on the CPU with injected delays. ``executor``: the profile (or preset name or file) whose
    ``staging_slots`` stream experts (None: ``tide-moe``); ``plans``: a list to append (step, layer, LayerStep)
    of every layer to (``offload.step``)."""

    def __init__(self, spec: ModelSpec, experts: Sequence[dict[str, torch.Tensor]], policy: Policy,
                 budget: np.ndarray | int | None, device: torch.device | str, dtype: torch.dtype,
                 threads: int | None = None, cost: Any = None, executor: ExecutorProfile | str | None = None, *,
                 block_length: int = 32, mode: str = "prefix-recompute", streams: Any = None,
                 plans: PlanLog | None = None) -> None:
        if not policy.causal:
            raise TideError(f"policy {policy.name} reads the whole trace (non-causal): simulator only")
        self.x = executor if isinstance(executor, ExecutorProfile) else ExecutorProfile.load(executor)
        if self.x.staging_slots < 1:
            raise TideError(f"executor {self.x.name}: the store streams experts through staging slots, it needs "
                            f"staging_slots >= 1, got {self.x.staging_slots}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.spec, self.policy, self.device, self.dtype = spec, policy, device, dtype
        self.s = streams if streams is not None else default_streams(device)
        L, E = spec.num_moe_layers, spec.num_experts
        self.L, self.E, self.k = L, E, spec.top_k
        self.h, self.i = spec.hidden_size, spec.moe_intermediate_size
        elem = torch.empty(0, dtype=dtype).element_size()
        self.expert_bytes = 3 * self.h * self.i * elem
        self.token_bytes = self.h * elem
        if threads:
            torch.set_num_threads(int(threads))
        shape = RunShape(L, E, spec.top_k, self.expert_bytes, self.token_bytes, int(block_length), mode)
        self.stepper: Stepper[Any] = Stepper(policy, budget, shape, cost=cost, executor=self.x, log=plans)
        self.residency, self.budget = self.stepper.residency, self.stepper.budget
        self.host, self.pinned = self._host_experts(experts)
        check_budget_fits(self.budget, self.expert_bytes, device, self.x.staging_slots)

        self.map = SlotMap(self.budget, E)
        with torch.inference_mode(False):  # plain tensors: updated in place inside and outside inference mode
            self.slot_pool = {n: self.s.empty((self.map.size, *self._shape(n)), dtype) for n in _PROJ}
            self.stage = {n: self.s.empty((self.x.staging_slots, *self._shape(n)), dtype) for n in _PROJ}
        self.pool = [{n: _LayerSlots(self, layer, n) for n in _PROJ} for layer in range(L)]
        self._stage_free: list[Any] = [None] * self.x.stage_buffers  # per half: event after its last compute
        self._half = 0
        self._load_initial()

        self._step: StepInfo | None = None
        self.step_counts = np.zeros((L, E), dtype=np.int64)

    # ---- construction ---------------------------------------------------------------------------------
    def _shape(self, name: str) -> tuple[int, int]:
        return (self.h, self.i) if name == "down" else (self.i, self.h)

    def _host_experts(self, experts: Sequence[dict[str, torch.Tensor]]) -> tuple[list[dict[str, torch.Tensor]], bool]:
        """The host stacks in the store's dtype, page-locked in place where copies run asynchronously
        (never re-pinned by copying: that would double host memory); returns (stacks, all pinned)."""
        if len(experts) != self.L:
            raise TideError(f"expert weights for {len(experts)} MoE layers, the model has {self.L}")
        out, pinned = [], True
        for layer, d in enumerate(experts):
            w = {}
            for name in _PROJ:
                t = d.get(name) if isinstance(d, dict) else None
                shape = (self.E, *self._shape(name))
                if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise TideError(f"MoE layer {layer} expert {name}: expected a tensor of shape {shape}, got {got}")
                if t.device.type != "cpu":
                    raise TideError(f"MoE layer {layer} expert {name}: expert weights must be host tensors")
                t = t.detach()
                if t.dtype != self.dtype:
                    t = t.to(self.dtype)
                t = t.contiguous()
                pinned = self.s.pin_host(t) and pinned
                w[name] = t
            out.append(w)
        if not pinned:
            warnings.warn("could not page-lock every routed-expert stack; those copies run from pageable memory "
                          "(synchronous with the host, about half the pinned bandwidth)", RuntimeWarning, stacklevel=3)
        return out, pinned

    def _load_initial(self) -> None:
        """The initial placement into slots 0..n-1 (ascending expert id); not counted (happens before timing)."""
        last = None
        for layer in range(self.L):
            ids = np.flatnonzero(self.residency.resident[layer])
            last = self._copy_in(layer, ids, self.map.place(layer, ids)) or last
            self._check_slots(layer)
        self.s.host_wait(last, "host-after-initial")

    # ---- slots ------------------------------------------------------------------------------------------
    e2s = property(lambda self: self.map.e2s)
    s2e = property(lambda self: self.map.s2e)
    slots = property(lambda self: self.map.slots)
    free_slots = property(lambda self: self.map.free_slots)

    def _check_slots(self, layer: int) -> None:
        self.map.check(layer, self.residency.resident[layer], int(self.residency.budget[layer]))

    def check_slots(self) -> None:
        for layer in range(self.L):
            self._check_slots(layer)
        self.map.check_partition()

    def _copy_in(self, layer: int, experts: np.ndarray, slots: np.ndarray) -> Any:
        """Copy host experts into the layer's local ``slots`` on the copy stream, after the compute queued so far
        (a freed slot may still be read by it); returns the event of their arrival (None if nothing moved)."""
        if experts.size == 0:
            return None
        host, pool = self.host[layer], self.slot_pool
        pairs = list(zip(experts.tolist(), self.map.global_slots(layer, slots).tolist()))  # never all E

        def copy() -> None:
            for e, s in pairs:
                for n in _PROJ:
                    pool[n][s].copy_(host[n][e], non_blocking=True)

        self.s.wait(COPY, self.s.record(COMPUTE), "copy-after-compute")
        self.s.launch(COPY, copy)
        return self.s.record(COPY)

    def _move(self, layer: int, demote: np.ndarray, promote: np.ndarray) -> Any:
        """Free the demoted experts' slots, resize the layer to its budget, give the promoted ones free slots and
        copy them in; returns the copies' event."""
        self.map.remove(layer, demote)
        if self.map.s2e[layer].size != self.residency.budget[layer]:
            self.map.resize(layer, int(self.residency.budget[layer]))
        ev = self._copy_in(layer, promote, self.map.place(layer, promote)) if promote.size else None
        self._check_slots(layer)
        return ev

    # ---- the forward ------------------------------------------------------------------------------------
    def begin_step(self, info: StepInfo) -> None:
        """Start forward pass ``info``: a fresh [L, E] counts array (the caller may keep the previous one)."""
        self._step = info
        self.step_counts = np.zeros((self.L, self.E), dtype=np.int64)

    def forward(self, layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        """Routed experts of MoE layer ``layer`` (from 0): x [T, h], topk_ids [T, k] int64, topk_weights [T, k]
        float32 -> sum_k w * expert(x) [T, h] in x's dtype."""
        if self._step is None:
            raise TideError("ExpertStore.forward called before begin_step")
        if not 0 <= layer < self.L:
            raise TideError(f"MoE layer {layer} out of range (the model has {self.L})")
        with torch.no_grad():
            out = self._forward(layer, x, topk_ids, topk_weights)
        self.s.forward_done()
        return out

    def _counts(self, f: SimpleNamespace, x: torch.Tensor, topk_ids: torch.Tensor, layer: int) -> np.ndarray:
        """Expert counts of this forward on the host: the layer's one host sync (the policy needs them)."""
        E = self.E
        host = self.s.pinned((E,), torch.int64)

        def count() -> None:
            f.x = x.to(self.dtype).contiguous()
            f.flat = topk_ids.reshape(-1)
            c = torch.bincount(f.flat, minlength=E)
            f.ids_seen = int(c.numel())  # > E: an id out of range (bincount sized its output by the largest id)
            host.copy_(c[:E], non_blocking=True)

        self.s.launch(COMPUTE, count)
        self.s.host_wait(self.s.record(COMPUTE), "host-after-counts")
        if getattr(f, "ids_seen", E) != E:
            raise TideError(f"expert id {f.ids_seen - 1} out of range at MoE layer {layer} ({E} experts)")
        counts = host.numpy().copy()
        counts.setflags(write=False)
        return counts

    def _forward(self, layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        S = self.s
        T, k = topk_ids.shape
        E, h = self.E, self.h
        f = SimpleNamespace()  # results of launched work; read only by later launches, never by the host
        counts = self._counts(f, x, topk_ids, layer)
        self.step_counts[layer] = counts
        st = self.stepper.step(self._step, layer, counts)
        dec, p = st.decision, st.plan
        ev = self._move(layer, p.demote, p.promote)  # the GPU experts wait for it below, the CPU rows do not
        res_act, stream, cpu_ids, n_cpu = p.resident_mask, p.stream, np.flatnonzero(p.cpu_mask), p.cpu_assignments

        # one sort key per expert: resident -> its slot (within the span [lo, hi) of the pool that the layer's
        # slots cover), streamed -> after the span, CPU -> last (by expert id); rows of one expert keep their
        # assignment order (stable), so every placement feeds it the same rows
        lo, hi = self.map.span[layer]
        B, ns = hi - lo, stream.size
        slot_ids = self.map.global_slots(layer, self.map.e2s[layer, res_act]) - lo
        key = np.zeros(E, dtype=np.int64)
        key[res_act] = slot_ids
        key[stream] = B + np.arange(ns)
        key[cpu_ids] = B + ns + np.arange(cpu_ids.size)
        slot_counts = np.zeros(B, dtype=np.int64)
        slot_counts[slot_ids] = counts[res_act]
        n_res, n_str = int(slot_counts.sum()), int(counts[stream].sum())
        key_dev = S.to_device(key, COMPUTE)  # page-locked and asynchronous: no host sync behind queued copies
        buf = S.empty((T * k, h), self.dtype)
        out = S.empty((T, h), x.dtype)

        def sort() -> None:
            f.order = torch.argsort(key_dev[f.flat], stable=True)
            f.tok = torch.div(f.order, k, rounding_mode="floor")

        S.launch(COMPUTE, sort)
        rows = y_cpu = gathered = None
        if n_cpu:  # gathered before this layer's copies are waited for, so the CPU path overlaps them
            rows, y_cpu = S.empty((n_cpu, h), self.dtype), S.empty((n_cpu, h), self.dtype)
            S.launch(COMPUTE, lambda: torch.index_select(f.x, 0, f.tok[n_res + n_str:], out=rows))
            gathered = S.record(COMPUTE)
        S.wait(COMPUTE, ev, "compute-after-promotion")  # only the GPU experts wait for this layer's promotions
        for pf in self.stepper.arrivals(layer, p, S.done):  # earlier prefetches of experts it reads
            S.wait(COMPUTE, pf, "compute-after-prefetch")
        if n_res:
            pool = {n: t[lo:hi] for n, t in self.slot_pool.items()}

            def resident() -> None:
                y = grouped_experts(f.x.index_select(0, f.tok[:n_res]), slot_counts, pool["gate"], pool["up"], pool["down"])
                buf.index_copy_(0, f.order[:n_res], y)

            S.launch(COMPUTE, resident)
        if ns:
            self._streamed(layer, f, n_res, st.chunks, counts, buf)
        if n_cpu:
            if not dec.overlap_cpu:  # TIDE: the GPU experts finish before the CPU starts (timing, not order)
                S.host_wait(S.record(COMPUTE), SERIAL_CPU)
            self._cpu_experts(layer, rows, y_cpu, gathered, p.cpu_counts)
            S.launch(COMPUTE, lambda: buf.index_copy_(0, f.order[n_res + n_str:], y_cpu))
        if dec.prefetch:  # after this layer's experts are enqueued: no slot they read is overwritten
            self.stepper.prefetch(dec.prefetch, self._move)

        def combine() -> None:
            w = topk_weights.to(device=buf.device, dtype=torch.float32).reshape(T, k, 1)
            out.copy_((buf.view(T, k, h).float() * w).sum(dim=1))

        S.launch(COMPUTE, combine)
        return out

    def _streamed(self, layer: int, f: SimpleNamespace, a: int, chunks: tuple[np.ndarray, ...], counts: np.ndarray,
                  buf: torch.Tensor) -> None:
        """Streamed experts through the staging slots, the step's chunks in turn over sorted rows from ``a``,
        alternating halves: the copy of one chunk [copy stream] overlaps the compute of the previous one."""
        S, host, c = self.s, self.host[layer], self.x.stage_chunk
        for ids in chunks:
            half = self._half
            self._half = (half + 1) % self.x.stage_buffers
            w = {n: self.stage[n][half * c:half * c + ids.size] for n in _PROJ}
            S.wait(COPY, self._stage_free[half], "stage-after-compute")  # the half's previous chunk was computed
            S.launch(COPY, partial(_copy_rows, w, host, ids.tolist()))
            S.wait(COMPUTE, S.record(COPY), "compute-after-stage")
            b = a + int(counts[ids].sum())
            if b > a:
                S.launch(COMPUTE, partial(_staged_chunk, f, a, b, counts[ids], w, buf))
            self._stage_free[half] = S.record(COMPUTE)
            a = b

    def _cpu_experts(self, layer: int, rows: torch.Tensor, y: torch.Tensor, gathered: Any, counts: np.ndarray) -> None:
        """Rows (sorted by expert id) to the host [act stream], the host experts over them, results back into
        ``y`` [act stream]; the compute stream then waits for them."""
        S, host = self.s, self.host[layer]
        if S.host_is_device:  # rows are already in host memory
            grouped_experts(rows, counts, host["gate"], host["up"], host["down"], out=y)
            return
        xh = S.pinned(tuple(rows.shape), rows.dtype)
        S.wait(ACT, gathered, "act-after-gather")
        S.launch(ACT, lambda: xh.copy_(rows, non_blocking=True))
        S.keep_alive(rows, ACT)  # allocated on the compute stream, read on this one
        S.host_wait(S.record(ACT), "host-after-d2h")  # the rows only, not the GPU experts queued after them
        yh = S.pinned(tuple(rows.shape), rows.dtype)
        grouped_experts(xh, counts, host["gate"], host["up"], host["down"], out=yh)
        # y was allocated before ``gathered`` was recorded, so no queued compute still uses its memory; the pinned
        # block yh is recycled only after this copy ran (caching host allocator event)
        S.launch(ACT, lambda: y.copy_(yh, non_blocking=True))
        S.wait(COMPUTE, S.record(ACT), "compute-after-h2d")

    # ---- counters ---------------------------------------------------------------------------------------
    @property
    def max_resident(self) -> np.ndarray:
        return self.residency.max_resident.copy()

    def reset_counters(self) -> None:
        """Zero the counters (after a warm-up); residency and slots are kept."""
        self.stepper.reset_counters()

    def counters(self) -> Counters:
        """The work done so far, counted as the engine counts it (the same record as ``SimResult.counters``)."""
        return self.stepper.counters()


def _copy_rows(w: dict[str, torch.Tensor], host: dict[str, torch.Tensor], ids: list[int]) -> None:
    """Experts ``ids`` from the host stacks into the staging rows ``w`` (launched on the copy stream)."""
    for j, e in enumerate(ids):
        for n in _PROJ:
            w[n][j].copy_(host[n][e], non_blocking=True)


def _staged_chunk(f: SimpleNamespace, a: int, b: int, counts: np.ndarray, w: dict[str, torch.Tensor],
                  buf: torch.Tensor) -> None:
    """One staged chunk's experts over sorted rows a..b, placed into ``buf`` (launched on the compute stream)."""
    y = grouped_experts(f.x.index_select(0, f.tok[a:b]), counts, w["gate"], w["up"], w["down"])
    buf.index_copy_(0, f.order[a:b], y)


class _LayerSlots:
    """``store.pool[layer][name][j]``: the weights in local slot j of a layer (a view of the shared pool)."""

    def __init__(self, store: ExpertStore, layer: int, name: str) -> None:
        self.store, self.layer, self.name = store, layer, name

    def __getitem__(self, j: Any) -> torch.Tensor:
        return self.store.slot_pool[self.name][int(self.store.slots[self.layer][int(j)])]

    def __len__(self) -> int:
        return int(self.store.slots[self.layer].size)
