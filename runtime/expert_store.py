"""The runtime's routed experts: a GPU slot pool shared out among the MoE layers, host copies of every expert,
and a placement policy (``sim.policies``) that decides per (step, layer) what moves, executed with the
simulator's semantics and counted the simulator's way (``sim.engine``, ``sim.results``).

Memory
  host    every expert of every MoE layer, in the store's dtype (pinned for CUDA so copies are asynchronous
          DMA; on ``device=cpu`` the caller's tensors are kept as they are).
  device  one pool of S = sum(budget) slots, gate/up [S, i, h], down [S, h, i] (all-gpu: L x E slots). MoE
          layer l owns budget[l] of them, listed in ``slots[l]`` (local slot j -> global slot slots[l][j]);
          initially layer l owns the contiguous range after layer l-1's. A policy that re-partitions the
          budgets (``LayerDecision.budget``) moves *free* slots between layers: a shrinking layer hands back its
          free local slots, a growing one takes the lowest free global slots; no weight moves for it. A slot a
          layer gave up is refilled only by a later copy, which on CUDA waits for the compute queued before it.
          ``stream_slots`` staging slots shared by all layers for streamed experts; per forward a [T*k, h]
          buffer of expert outputs and the rows gathered for the experts. On ``device=cpu`` the pool is a
          second copy in host memory and every copy below is a memcpy (the same code path).
  :func:`check_budget_fits` compares (sum(budget) + stream_slots) x expert_bytes with the free GPU memory.

What is copied when (one MoE layer, one forward; CUDA streams in brackets)
  0. at construction, not counted: the policy's initial placement into slots (before any timing, as TIDE's
     code loads its resident experts at model load).
  1. counts = bincount(topk_ids): one small D2H copy of E ints, the one host sync per layer (the policy needs
     them; TIDE does the same).
  2. policy.decide -> Residency.apply; demoted slots are freed, the layer's slot list resized to a new budget
     if the decision set one, promoted experts copied host -> free slots [copy stream, after the compute
     stream's queued work, so no slot still being read is overwritten]; the layer's GPU experts wait for them
     (synchronous semantics), but the rows for the CPU experts are gathered before that wait, so with
     overlap_cpu the CPU path runs while the promotions and streams are copied (as the simulator models it).
  3. GPU experts wait for earlier prefetches into this layer whose experts they use.
  4. GPU experts = active & (resident | streamed): resident ones as one grouped GEMM over the span of the
     pool the layer's slots cover (rows sorted by slot, one stable device argsort); streamed ones in chunks
     through the staging slots (two halves, ping-pong: the copy of chunk c+1 [copy stream] overlaps the
     compute of chunk c).
  5. CPU experts = the other active ones: one hidden row per CPU token-assignment gathered on the device,
     copied to the host [activation stream, pinned], computed on the CPU from the host weights, copied back
     [activation stream] and placed. overlap_cpu=True: the GPU experts are enqueued first and run while the
     CPU works; False (TIDE): the GPU experts are synchronised before the CPU work starts.
  6. prefetches (decision.prefetch) go through Residency once this layer's experts are enqueued: copies on
     the copy stream after the compute stream's queued work, one event per batch that the target layer's
     next forward waits on before reading those slots.
  7. out = sum_k w[t, k] * y[t, k] in float32, cast to x's dtype.

Losslessness: every assignment's expert output lands at its own row of the [T*k, h] buffer, whatever ran it,
and the weighted sum over k is one fixed reduction (moe_infer's order: expert output in the model dtype,
weight and sum in float32). An expert always gets the same rows in the same order, and the host path and the
device=cpu "GPU" path use the same per-expert function, so on device=cpu in float32 every policy's output is
bit-identical to all-gpu's.

Byte accounting (the simulator's, ``sim.results``): expert_bytes = 3 h i x element size, token_bytes =
h x element size (the store's dtype; equal to the spec's when the dtype is the checkpoint's);
  promotions, demotions = Residency.moves (promote + stream + prefetch; demote + stream + prefetch demote)
  h2d_bytes = promotions x expert_bytes + cpu_assignments x token_bytes,  d2h_bytes = cpu_assignments x token_bytes
  gpu_assignments / cpu_assignments = token-assignments computed on each side; hit_ratio = gpu / (gpu + cpu).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from runtime.kernels import grouped_experts
from sim.errors import TideError
from sim.model_spec import ModelSpec
from sim.policies.base import LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo
from sim.policies.residency import MoveCounters, Residency

_GIB = 2**30


def expert_nbytes(spec: ModelSpec, dtype: torch.dtype) -> int:
    """Bytes of one routed expert's weights in ``dtype``."""
    return 3 * spec.hidden_size * spec.moe_intermediate_size * torch.empty(0, dtype=dtype).element_size()


def check_budget_fits(budget: Any, expert_bytes: int, device: torch.device | str, stream_slots: int = 0) -> int:
    """Bytes the slot pools (+ staging slots) need; on CUDA raise a one-line TideError if they exceed the free
    memory of ``device`` (torch.cuda.mem_get_info)."""
    budget = np.asarray(budget, dtype=np.int64).reshape(-1)
    device = torch.device(device)
    need = (int(budget.sum()) + int(stream_slots)) * int(expert_bytes)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if need > free:
            per = f"{int(budget[0])} experts per layer x {budget.size} layers" if np.all(budget == budget[0]) \
                else f"{int(budget.sum())} experts over {budget.size} layers"
            raise TideError(f"budget of {per} (+{stream_slots} staging slots) needs {need / _GIB:.2f} GiB, "
                            f"{free / _GIB:.2f} GiB free on {device}")
    return need


class ExpertStore:
    """Routed experts of every MoE layer, placed by ``policy``; see the module docstring."""

    def __init__(self, spec: ModelSpec, experts: Sequence[dict[str, torch.Tensor]], policy: Policy,
                 budget: np.ndarray | int | None, device: torch.device | str, dtype: torch.dtype,
                 threads: int | None = None, cost: Any = None, stream_slots: int = 8, *,
                 block_length: int = 32, mode: str = "prefix-recompute") -> None:
        if not policy.causal:
            raise TideError(f"policy {policy.name} reads the whole trace (non-causal): simulator only")
        if stream_slots < 1:
            raise TideError(f"stream_slots must be >= 1, got {stream_slots}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.spec, self.policy, self.device, self.dtype = spec, policy, device, dtype
        self.cuda = device.type == "cuda"
        L, E = spec.num_moe_layers, spec.num_experts
        self.L, self.E, self.k = L, E, spec.top_k
        self.h, self.i = spec.hidden_size, spec.moe_intermediate_size
        elem = torch.empty(0, dtype=dtype).element_size()
        self.expert_bytes = 3 * self.h * self.i * elem
        self.token_bytes = self.h * elem
        if threads:
            torch.set_num_threads(int(threads))

        if budget is None or not policy.needs_budget:
            self.budget = np.full(L, E, dtype=np.int64)
        else:
            self.budget = np.broadcast_to(np.asarray(budget, dtype=np.int64), (L,)).copy()
            if self.budget.min() < 1 or self.budget.max() > E:
                raise TideError(f"budget must be between 1 and {E} experts per layer")
        self.host = self._host_experts(experts)
        check_budget_fits(self.budget, self.expert_bytes, device, stream_slots)

        ctx = PolicyContext(num_moe_layers=L, num_experts=E, top_k=spec.top_k, budget=self.budget.copy(),
                            expert_bytes=int(cost.expert_bytes) if cost is not None else self.expert_bytes,
                            block_length=int(block_length), mode=mode, cost=cost, trace=None)
        self.residency = Residency(policy, policy.initial_placement(ctx), self.budget)
        if self.residency.resident.shape != (L, E):
            raise TideError(f"policy {policy.name}: initial placement has shape {self.residency.resident.shape}, expected {(L, E)}")

        # expert -> local slot ([L, E]) and local slot -> expert (per layer, [budget[l]]); -1 = none; local slot j
        # of layer l is global slot slots[l][j] of the shared pool; free_slots: global slots no layer owns
        self.e2s = np.full((L, E), -1, dtype=np.int64)
        self.s2e = [np.full(int(b), -1, dtype=np.int64) for b in self.budget]
        starts = np.concatenate([[0], np.cumsum(self.budget)])
        self.slots = [np.arange(starts[l], starts[l + 1], dtype=np.int64) for l in range(L)]
        self.free_slots = np.zeros(0, dtype=np.int64)
        self._span = [(int(starts[l]), int(starts[l + 1])) for l in range(L)]  # [lo, hi) of each layer's slots
        self.stream_slots = int(stream_slots)
        self._nbuf = 2 if stream_slots >= 2 else 1  # staging halves for ping-pong
        self._chunk = self.stream_slots // self._nbuf
        with torch.inference_mode(False):  # plain tensors: updated in place inside and outside inference mode
            self.slot_pool = {n: torch.empty((int(starts[-1]), *self._shape(n)), dtype=dtype, device=device)
                              for n in ("gate", "up", "down")}
            self.stage = {n: torch.empty((self.stream_slots, *self._shape(n)), dtype=dtype, device=device)
                          for n in ("gate", "up", "down")}
        self.pool = [{n: _LayerSlots(self, layer, n) for n in ("gate", "up", "down")} for layer in range(L)]
        if self.cuda:
            self._copy_stream = torch.cuda.Stream(device)  # expert weights: promotions, streams, prefetches
            self._act_stream = torch.cuda.Stream(device)   # activations to and from the CPU experts
        self._stage_free: list[Any] = [None] * self._nbuf  # per half: event after its last compute
        self._half = 0
        self._pending: list[list[tuple[Any, np.ndarray]]] = [[] for _ in range(L)]  # in-flight prefetches
        self._load_initial()

        self._step: StepInfo | None = None
        self.step_counts = np.zeros((L, E), dtype=np.int64)
        self.h2d_act_bytes = self.d2h_bytes = self.cpu_assignments = self.gpu_assignments = 0

    # ---- construction ---------------------------------------------------------------------------------
    def _shape(self, name: str) -> tuple[int, int]:
        return (self.h, self.i) if name == "down" else (self.i, self.h)

    def _host_experts(self, experts: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
        if len(experts) != self.L:
            raise TideError(f"expert weights for {len(experts)} MoE layers, the model has {self.L}")
        out = []
        for layer, d in enumerate(experts):
            w = {}
            for name in ("gate", "up", "down"):
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
                if self.cuda and not t.is_pinned():
                    t = t.pin_memory()  # asynchronous H2D needs page-locked sources
                w[name] = t
            out.append(w)
        return out

    def _load_initial(self) -> None:
        """The initial placement into slots 0..n-1 (ascending expert id); not counted (happens before timing)."""
        for layer in range(self.L):
            ids = np.flatnonzero(self.residency.resident[layer])
            slots = np.arange(ids.size)
            self.e2s[layer, ids] = slots
            self.s2e[layer][slots] = ids
            self._copy_in(layer, ids, slots)
            self._check_slots(layer)
        if self.cuda:
            self._copy_stream.synchronize()

    # ---- slots ------------------------------------------------------------------------------------------
    def _check_slots(self, layer: int) -> None:
        """expert->slot and slot->expert are inverse bijections between the resident experts and the used slots."""
        res = self.residency.resident[layer]
        e2s, s2e = self.e2s[layer], self.s2e[layer]
        ok = (np.array_equal(e2s >= 0, res) and int((s2e >= 0).sum()) == int(res.sum())
              and np.array_equal(s2e[e2s[res]], np.flatnonzero(res))
              and s2e.size == self.slots[layer].size == int(self.residency.budget[layer]))
        if not ok:
            raise AssertionError(f"slot maps disagree with the residency at MoE layer {layer}")

    def check_slots(self) -> None:
        for layer in range(self.L):
            self._check_slots(layer)
        owned = np.sort(np.concatenate(self.slots + [self.free_slots]))
        if not np.array_equal(owned, np.arange(self.slot_pool["gate"].shape[0])):
            raise AssertionError("the layers' slots and the free slots do not partition the pool")

    def _compute_stream(self) -> Any:
        return torch.cuda.current_stream(self.device)

    def _copy_in(self, layer: int, experts: np.ndarray, slots: np.ndarray) -> Any:
        """Copy host experts into pool slots; on CUDA on the copy stream, returning the event of their arrival."""
        if experts.size == 0:
            return None
        host, pool = self.host[layer], self.slot_pool
        pairs = list(zip(experts.tolist(), self.slots[layer][slots].tolist()))  # the experts that move, never all E
        if not self.cuda:
            for e, s in pairs:
                for n in ("gate", "up", "down"):
                    pool[n][s].copy_(host[n][e])
            return None
        cs = self._copy_stream
        cs.wait_stream(self._compute_stream())  # a freed slot may still be read by queued compute
        with torch.cuda.stream(cs):
            for e, s in pairs:
                for n in ("gate", "up", "down"):
                    pool[n][s].copy_(host[n][e], non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(cs)
        return ev

    def _resize(self, layer: int, new: int) -> None:
        """Give layer ``layer`` ``new`` slots: hand back free ones, or take the lowest free global ones."""
        s2e, slots = self.s2e[layer], self.slots[layer]
        if new < s2e.size:
            free = np.flatnonzero(s2e < 0)
            if free.size < s2e.size - new:  # Residency checked resident <= new, so only a pool bug gets here
                raise AssertionError(f"layer {layer} cannot shrink to {new} slots")
            drop = free[free.size - (s2e.size - new):]
            keep = np.setdiff1d(np.arange(s2e.size), drop, assume_unique=True)
            self.free_slots = np.sort(np.concatenate([self.free_slots, slots[drop]]))
            s2e, slots = s2e[keep], slots[keep]
            used = s2e >= 0
            self.e2s[layer, s2e[used]] = np.flatnonzero(used)  # local ids of kept slots shift down
        elif new > s2e.size:
            take, self.free_slots = self.free_slots[: new - s2e.size], self.free_slots[new - s2e.size:]
            if take.size < new - s2e.size:
                raise AssertionError(f"no free slot in the pool for layer {layer}")
            s2e = np.concatenate([s2e, np.full(take.size, -1, dtype=np.int64)])
            slots = np.concatenate([slots, take])
        else:
            return
        self.s2e[layer], self.slots[layer] = s2e, slots
        self._span[layer] = (int(slots.min(initial=0)), int(slots.max(initial=-1)) + 1)

    def _move(self, layer: int, demote: np.ndarray, promote: np.ndarray) -> Any:
        """Free the demoted experts' slots, resize the layer to its budget, give the promoted ones free slots and
        copy them in."""
        e2s, s2e = self.e2s[layer], self.s2e[layer]
        if demote.size:
            s2e[e2s[demote]] = -1
            e2s[demote] = -1
        if s2e.size != self.residency.budget[layer]:
            self._resize(layer, int(self.residency.budget[layer]))
            s2e = self.s2e[layer]
        ev = None
        if promote.size:
            free = np.flatnonzero(s2e < 0)[: promote.size]
            if free.size < promote.size:  # Residency enforces the budget, so only a pool bug gets here
                raise AssertionError(f"no free slot for {promote.size} experts at MoE layer {layer}")
            e2s[promote] = free
            s2e[free] = promote
            ev = self._copy_in(layer, promote, free)
        self._check_slots(layer)
        return ev

    def _wait_prefetch(self, layer: int, used: np.ndarray) -> None:
        """The compute stream waits for in-flight prefetches into ``layer`` of experts it is about to read."""
        keep = []
        for ev, mask in self._pending[layer]:
            if ev.query():
                continue
            if (mask & used).any():
                self._compute_stream().wait_event(ev)
            else:
                keep.append((ev, mask))
        self._pending[layer] = keep

    def _prefetch(self, prefetch: Sequence[Prefetch]) -> None:
        for pf in prefetch:
            t = int(pf.layer)
            if not 0 <= t < self.L:
                raise TideError(f"policy {self.policy.name} prefetched into MoE layer {t} of {self.L}")
            demote, promote, _ = self.residency.apply(t, LayerDecision(promote=pf.promote, demote=pf.demote))
            ev = self._move(t, demote, promote)
            if ev is not None:
                mask = np.zeros(self.E, dtype=bool)
                mask[promote] = True
                self._pending[t].append((ev, mask))

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
            return self._forward(layer, x, topk_ids, topk_weights)

    def _forward(self, layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor) -> torch.Tensor:
        T, k = topk_ids.shape
        E, h, dev = self.E, self.h, self.device
        out_dtype = x.dtype
        x = x.to(self.dtype).contiguous()
        flat = topk_ids.reshape(-1)
        counts = torch.bincount(flat, minlength=E).cpu().numpy()  # the one sync of the layer
        if counts.size != E:
            raise TideError(f"expert id {counts.size - 1} out of range at MoE layer {layer} ({E} experts)")
        counts.setflags(write=False)
        self.step_counts[layer] = counts
        dec = self.policy.decide(LayerView(step=self._step, layer=layer, counts=counts,
                                           resident=self.residency.view(layer)))
        demote, promote, stream = self.residency.apply(layer, dec)
        ev = self._move(layer, demote, promote)  # the GPU experts wait for it below, the CPU rows do not

        res = self.residency.resident[layer]
        active = counts > 0
        res_act = active & res
        cpu_mask = active & ~res
        cpu_mask[stream] = False
        cpu_ids = np.flatnonzero(cpu_mask)
        n_cpu = int(counts[cpu_ids].sum())
        self.cpu_assignments += n_cpu
        self.gpu_assignments += T * k - n_cpu
        self.d2h_bytes += n_cpu * self.token_bytes
        self.h2d_act_bytes += n_cpu * self.token_bytes

        # one sort key per expert: resident -> its slot (within the span [lo, hi) of the pool that the layer's
        # slots cover), streamed -> after the span, CPU -> last (by expert id); rows of one expert keep their
        # assignment order (stable), so every placement feeds it the same rows
        lo, hi = self._span[layer]
        B, ns = hi - lo, stream.size
        slot_ids = self.slots[layer][self.e2s[layer, res_act]] - lo
        key = np.zeros(E, dtype=np.int64)
        key[res_act] = slot_ids
        key[stream] = B + np.arange(ns)
        key[cpu_ids] = B + ns + np.arange(cpu_ids.size)
        slot_counts = np.zeros(B, dtype=np.int64)
        slot_counts[slot_ids] = counts[res_act]
        n_res, n_str = int(slot_counts.sum()), int(counts[stream].sum())
        order = torch.argsort(torch.from_numpy(key).to(dev)[flat], stable=True)
        tok = torch.div(order, k, rounding_mode="floor")
        buf = torch.empty((T * k, h), dtype=self.dtype, device=dev)

        cpu_rows = y_cpu = gathered = None
        if n_cpu:
            cpu_rows = x.index_select(0, tok[n_res + n_str:])
            if self.cuda:
                # the CPU results' device buffer is allocated now and the activation stream waits for this event:
                # all compute that could still touch its (recycled) memory was queued before it, and the D2H
                # of the rows starts here, not after the GPU experts queued below
                y_cpu = torch.empty_like(cpu_rows)
                gathered = torch.cuda.Event()
                gathered.record(self._compute_stream())
        if self.cuda:  # only the GPU experts wait for this layer's promotions and for prefetches they read
            if ev is not None:
                self._compute_stream().wait_event(ev)
            if self._pending[layer]:
                self._wait_prefetch(layer, res_act)
        if n_res:
            pool = {n: t[lo:hi] for n, t in self.slot_pool.items()}
            y = grouped_experts(x.index_select(0, tok[:n_res]), slot_counts, pool["gate"], pool["up"], pool["down"])
            buf.index_copy_(0, order[:n_res], y)
        if ns:
            self._streamed(layer, x, tok[n_res:n_res + n_str], order[n_res:n_res + n_str], stream, counts[stream], buf)
        if n_cpu:
            if self.cuda and not dec.overlap_cpu:
                self._compute_stream().synchronize()  # TIDE: GPU experts finish before the CPU starts
            cpu_counts = np.zeros(E, dtype=np.int64)
            cpu_counts[cpu_ids] = counts[cpu_ids]
            y = self._cpu_experts(layer, cpu_rows, y_cpu, gathered, cpu_counts)
            buf.index_copy_(0, order[n_res + n_str:], y)
        if dec.prefetch:  # after this layer's experts are enqueued: no slot they read is overwritten
            self._prefetch(dec.prefetch)
        w = topk_weights.to(device=dev, dtype=torch.float32).reshape(T, k, 1)
        return (buf.view(T, k, h).float() * w).sum(dim=1).to(out_dtype)

    def _streamed(self, layer: int, x: torch.Tensor, tok: torch.Tensor, pos: torch.Tensor, stream: np.ndarray,
                  counts: np.ndarray, buf: torch.Tensor) -> None:
        """Streamed experts through the staging slots, ``_chunk`` at a time, alternating halves."""
        host, stage = self.host[layer], self.stage
        ends = np.cumsum(counts)
        for c0 in range(0, stream.size, self._chunk):
            ids = stream[c0:c0 + self._chunk].tolist()
            half = self._half
            self._half = (self._half + 1) % self._nbuf
            base = half * self._chunk
            w = {n: stage[n][base:base + len(ids)] for n in ("gate", "up", "down")}
            if self.cuda:
                cs = self._copy_stream
                if self._stage_free[half] is not None:
                    cs.wait_event(self._stage_free[half])  # the half's previous chunk has been computed
                with torch.cuda.stream(cs):
                    for j, e in enumerate(ids):
                        for n in ("gate", "up", "down"):
                            w[n][j].copy_(host[n][e], non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(cs)
                self._compute_stream().wait_event(ready)
            else:
                for j, e in enumerate(ids):
                    for n in ("gate", "up", "down"):
                        w[n][j].copy_(host[n][e])
            a = int(ends[c0 - 1]) if c0 else 0
            b = int(ends[c0 + len(ids) - 1])
            if b > a:
                y = grouped_experts(x.index_select(0, tok[a:b]), counts[c0:c0 + len(ids)], w["gate"], w["up"], w["down"])
                buf.index_copy_(0, pos[a:b], y)
            if self.cuda:
                done = torch.cuda.Event()
                done.record(self._compute_stream())
                self._stage_free[half] = done

    def _cpu_experts(self, layer: int, rows: torch.Tensor, y: torch.Tensor | None, gathered: Any,
                     counts: np.ndarray) -> torch.Tensor:
        """Rows (sorted by expert id) to the host, the host experts over them, results back to the device
        (into ``y``, allocated before ``gathered`` was recorded; CUDA only)."""
        host = self.host[layer]
        if not self.cuda:  # rows are already in host memory
            return grouped_experts(rows, counts, host["gate"], host["up"], host["down"])
        act, compute = self._act_stream, self._compute_stream()
        xh = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        act.wait_event(gathered)
        with torch.cuda.stream(act):
            xh.copy_(rows, non_blocking=True)
        rows.record_stream(act)  # allocated on the compute stream, read on this one
        d2h = torch.cuda.Event()
        d2h.record(act)
        d2h.synchronize()  # the host waits for the rows only, not for the GPU experts queued after them
        yh = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        grouped_experts(xh, counts, host["gate"], host["up"], host["down"], out=yh)
        with torch.cuda.stream(act):  # ordered after the wait on ``gathered`` above, so y's memory is ours
            y.copy_(yh, non_blocking=True)  # the pinned block is recycled only after this copy (host allocator event)
        compute.wait_stream(act)
        return y

    # ---- counters ---------------------------------------------------------------------------------------
    @property
    def max_resident(self) -> np.ndarray:
        return self.residency.max_resident.copy()

    @property
    def hit_ratio(self) -> float:
        total = self.gpu_assignments + self.cpu_assignments
        return self.gpu_assignments / total if total else 1.0

    def reset_counters(self) -> None:
        """Zero the counters (after a warm-up); residency and slots are kept."""
        self.residency.moves = MoveCounters()
        self.h2d_act_bytes = self.d2h_bytes = self.cpu_assignments = self.gpu_assignments = 0

    def metrics(self) -> dict[str, Any]:
        """The simulator's counter names (sim.results.METRIC_KEYS minus the timing ones), plus detail."""
        moves = self.residency.moves
        weight = moves.promotions * self.expert_bytes
        return {"policy": self.policy.name, "params": dict(self.policy.params()),
                "h2d_bytes": int(weight + self.h2d_act_bytes), "d2h_bytes": int(self.d2h_bytes),
                "hit_ratio": self.hit_ratio, "promotions": int(moves.promotions), "demotions": int(moves.demotions),
                "cpu_assignments": int(self.cpu_assignments), "gpu_assignments": int(self.gpu_assignments),
                "h2d_weight_bytes": int(weight), "max_resident": self.max_resident.tolist(),
                "budget": self.budget.tolist(), "layer_budgets": self.residency.budget.tolist()}


class _LayerSlots:
    """``store.pool[layer][name][j]``: the weights in local slot j of a layer (a view of the shared pool)."""

    def __init__(self, store: ExpertStore, layer: int, name: str) -> None:
        self.store, self.layer, self.name = store, layer, name

    def __getitem__(self, j: Any) -> torch.Tensor:
        return self.store.slot_pool[self.name][int(self.store.slots[self.layer][int(j)])]

    def __len__(self) -> int:
        return int(self.store.slots[self.layer].size)
