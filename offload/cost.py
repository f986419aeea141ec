"""Cost models: seconds for each piece of work the engine schedules (no simpy here).

The engine asks a cost model (:class:`CostModel`) for these kinds of time, all in seconds and vectorised with numpy:

  step_fixed(n, c, m)  GPU work of one forward outside the MoE layers: per-step overhead, the dense layers
                       (attention + dense MLP) and lm_head over m tokens. n tokens forwarded, c context keys
                       (per sequence; an optional seqs: sequences decoded together, each with its own cache).
  moe_pre(n, c)        GPU work of one MoE layer outside its routed experts: attention, router, shared expert,
                       and the expert store's fixed per-layer work (moe_overhead).
  gpu_experts(counts)  one layer's batch of resident routed experts; counts[..., E] token-assignments.
  cpu_experts(counts)  the same experts computed on the host CPU.
  h2d(bytes), d2h(bytes)  one batch of copies over the host link.

:class:`RooflineCostModel` derives them from a :class:`~offload.model_spec.ModelSpec` and a
:class:`~offload.hardware.HardwareProfile`: an operator takes max(FLOPs / rate, bytes / bandwidth) plus a fixed
launch overhead; a measured table in the profile replaces the roofline for its operator. Routed experts run
one GEMM group per expert, so a batch costs the sum over active experts (e: n_e > 0):

  T_gpu = sum_e max(6 n_e h i / R_gpu, b (3 h i + 2 n_e h) / BW_hbm) + 3 * launch
  T_cpu = sum_e [max(6 n_e h i / R_cpu, b (3 h i + 2 n_e h) / BW_dram) + expert_overhead]
  T_copy(B) = latency + B / BW_link   (0 when B = 0)

With measured tables (``offload.hardware``; L_d dense layers, all times per call):

  step_fixed(n, c, m) = step_overhead + embed(n) + L_d [attention(n, c) + dense_mlp(n)] + [m > 0] lm_head(m)
  moe_pre(n, c)       = attention(n, c) + moe_dense(n) + moe_overhead(n)
  T_gpu = [any n_e > 0] gpu_expert.call_seconds + sum_e gpu_expert(n_e)      (likewise T_cpu)

Each missing table falls back to the roofline term (embed: 0; moe_overhead: the profile's scalar
moe_layer_overhead_us, default 0). A profile measured for another model layer shape is refused (TideError).

``single_device`` profiles (runtime ``--device cpu``): the "GPU" and the CPU are one host, so ``serial`` is True;
the engine then runs every item one after the other and moves no activations (``sim.engine``'s serial mode, its
default for such a cost model).

Host memory (the profile's optional ``host`` section, ``offload.hardware.HostSpec``; f = pageable_fraction, 0.5
by default):

  h2d_pageable(B) = latency + B / (f BW_h2d)   (or the copy_h2d_pageable table);  d2h_pageable likewise
  logits_cast(m)  = m V (b + 4) / BW_hbm + launch    float32 cast of m logit rows (0 for m = 0)
  dram_bytes_per_s = host.dram_gbps x 1e9 (None: not given);  pinned_bytes = host.pinned_gib x 2^30 (inf: not given)
  cpu_dram_bytes_per_s = cpu.dram_gbps x 1e9   the CPU experts' own read rate (their peak DRAM demand)

:class:`ExecutorCost` prices one layer's pieces as an executor (``offload.executor``) carries them out: weight
copies per batch, per expert or per projection, from pinned or pageable memory, in closed form (n blocking
copies of B bytes: n x T(B)); activation copies batched or per CPU expert; per-expert overheads; lm_head over the
block or the whole prefix. Each copy also returns the host DRAM bytes it moves (pageable: 3 B, a bounce through
the driver's pinned buffer) for the engine's DRAM law (``sim.engine``). With the default executor every price
equals the plain cost model's.

:class:`ConstantCostModel` gives fixed times per unit of work, for hand-computed tests (pageable copies
``pageable_slowdown`` times the pinned ones; optional DRAM bandwidth and pinned capacity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec, OpCost

# Kernel launches per operator group in an eager PyTorch forward (calibration absorbs the rest).
_LAUNCH = {"attention": 8, "router": 4, "shared": 3, "dense_mlp": 3, "experts": 3, "lm_head": 1, "norms": 4}


class CostModel(Protocol):
    """Every member the engine, :class:`ExecutorCost`, ``sim.bound`` and the cost-aware policies call."""

    expert_bytes: int
    token_bytes: int
    serial: bool         # one device runs everything, one item after another (sim.engine's serial mode)
    shared_duplex: bool  # one copy engine serves both directions of the host link
    dram_bytes_per_s: float | None      # host DRAM shared by copies and CPU experts (None: not modelled)
    pinned_bytes: float                 # page-locked host memory for expert weights (inf: all of them)
    cpu_dram_bytes_per_s: float | None  # the CPU experts' own DRAM read rate (None: no cap of their own)

    def step_fixed(self, n: Any, c: Any, m: Any, seqs: Any = 1) -> np.ndarray: ...
    def moe_pre(self, n: Any, c: Any, seqs: Any = 1) -> np.ndarray: ...
    def gpu_experts(self, counts: np.ndarray) -> np.ndarray: ...
    def cpu_experts(self, counts: np.ndarray) -> np.ndarray: ...
    def gpu_expert_each(self, n: Any) -> np.ndarray: ...  # one expert of n tokens, the per-call term left out
    def cpu_expert_each(self, n: Any) -> np.ndarray: ...
    def h2d(self, nbytes: Any) -> np.ndarray: ...
    def d2h(self, nbytes: Any) -> np.ndarray: ...
    def h2d_pageable(self, nbytes: Any) -> np.ndarray: ...
    def d2h_pageable(self, nbytes: Any) -> np.ndarray: ...
    def logits_cast(self, m: Any) -> np.ndarray: ...  # float32 cast of m logit rows (lm_head_fp32 executors)


def _roofline(cost: OpCost, tflops: float, gbps: float) -> np.ndarray:
    return np.maximum(np.asarray(cost.flops) / (tflops * 1e12), np.asarray(cost.bytes) / (gbps * 1e9))


@dataclass(frozen=True)
class RooflineCostModel:
    model: ModelSpec
    hw: HardwareProfile
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.hw.check_model(self.model)  # tables measured on another layer shape would price the wrong work

    @property
    def expert_bytes(self) -> int:
        return self.model.expert_bytes

    @property
    def token_bytes(self) -> int:
        return self.model.token_bytes

    @property
    def serial(self) -> bool:
        """True when every resource is one serially-executing device (profile ``single_device``)."""
        return self.hw.single_device

    @property
    def shared_duplex(self) -> bool:
        """True when H2D and D2H copies share one engine (the profile's link)."""
        return self.hw.link.shared_duplex

    def _gpu(self, cost: OpCost, launches: int) -> np.ndarray:
        return _roofline(cost, self.hw.gpu.matmul_tflops, self.hw.gpu.hbm_gbps) + launches * self.hw.gpu.kernel_overhead_us * 1e-6

    def attention(self, n: Any, c: Any, seqs: Any = 1) -> np.ndarray:
        """n tokens forwarded in ``seqs`` sequences (a batched decode step), each token attending to at most c
        keys of its own sequence: every sequence reads its own cache. A measured table holds one sequence: a
        batch costs seqs x table(n / seqs, c)."""
        table = self.hw.tables.get("attention")
        if table is not None:
            s = np.asarray(seqs, dtype=np.float64)
            return s * table(np.asarray(n) / s, c) if np.any(s != 1) else table(n, c)
        return self._gpu(self.model.attention_cost(n, c, seqs), _LAUNCH["attention"] + _LAUNCH["norms"])

    def embed(self, n: Any) -> np.ndarray:
        table = self.hw.tables.get("embed")
        return table(n) if table is not None else np.zeros(np.shape(n))

    def dense_mlp(self, n: Any) -> np.ndarray:
        table = self.hw.tables.get("dense_mlp")
        return table(n) if table is not None else self._gpu(self.model.dense_mlp_cost(n), _LAUNCH["dense_mlp"])

    def lm_head(self, m: Any) -> np.ndarray:
        table = self.hw.tables.get("lm_head")
        if table is not None:
            m = np.asarray(m)
            return np.where(m > 0, table(m), 0.0)  # the runtime skips lm_head for forwards without logits
        return self._gpu(self.model.lm_head_cost(m), _LAUNCH["lm_head"])

    def moe_dense(self, n: Any) -> np.ndarray:
        """Router and shared expert (with their norm and residual) of one MoE layer."""
        table = self.hw.tables.get("moe_dense")
        if table is not None:
            return table(n)
        m = self.model
        return self._gpu(m.router_cost(n), _LAUNCH["router"]) + self._gpu(m.shared_expert_cost(n), _LAUNCH["shared"]) * (m.num_shared_experts > 0)

    def moe_overhead(self, n: Any) -> np.ndarray:
        """The expert store's fixed work per MoE layer (counts + host sync, policy decision, sort, gathers)."""
        table = self.hw.tables.get("moe_overhead")
        if table is not None:
            return table(n)
        return np.full(np.shape(n), self.hw.moe_layer_overhead_us * 1e-6)

    def step_fixed(self, n: Any, c: Any, m: Any, seqs: Any = 1) -> np.ndarray:
        dense = self.attention(n, c, seqs) + self.dense_mlp(n)
        return (self.hw.step_overhead_us * 1e-6 + self.embed(n) + self.model.first_k_dense_replace * dense
                + self.lm_head(m))

    def moe_pre(self, n: Any, c: Any, seqs: Any = 1) -> np.ndarray:
        return self.attention(n, c, seqs) + self.moe_dense(n) + self.moe_overhead(n)

    def gpu_expert_each(self, n: Any) -> np.ndarray:
        """One routed expert on the GPU with n tokens (0 for n = 0)."""
        n = np.asarray(n)
        table = self.hw.tables.get("gpu_expert")
        per = table(n) if table is not None else _roofline(self.model.expert_cost(n), self.hw.gpu.matmul_tflops, self.hw.gpu.hbm_gbps)
        return np.where(n > 0, per, 0.0)

    def cpu_expert_each(self, n: Any) -> np.ndarray:
        """One routed expert on the CPU with n tokens (0 for n = 0)."""
        n = np.asarray(n)
        table = self.hw.tables.get("cpu_expert")
        if table is not None:
            per = table(n)
        else:
            per = _roofline(self.model.expert_cost(n), self.hw.cpu.matmul_tflops, self.hw.cpu.dram_gbps)
            per = per + self.hw.cpu.expert_overhead_us * 1e-6
        return np.where(n > 0, per, 0.0)

    def _lut(self, which: str, counts: np.ndarray) -> np.ndarray:
        # per-expert time by token count, tabulated once: the engine calls this per layer, so indexing a table
        # beats re-evaluating the roofline on every call
        counts = np.asarray(counts).astype(np.int64, copy=False)  # token counts are integers by definition
        lut = self._cache.get(which)
        if lut is not None:
            try:  # the common case: every count inside the table (counts are >= 0, so none wraps around)
                return lut[counts]
            except IndexError:
                pass
        size = max(1024, 2 * int(counts.max(initial=0)) + 1)
        lut = (self.gpu_expert_each if which == "gpu" else self.cpu_expert_each)(np.arange(size))
        self._cache[which] = lut
        return lut[counts]

    def _call(self, table_name: str, default_s: float) -> float:
        key = ("call", table_name)  # looked up per layer: the table and the profile do not change
        call = self._cache.get(key)
        if call is None:
            table = self.hw.tables.get(table_name)
            call = self._cache[key] = table.call if table is not None and table.call is not None else default_s
        return call

    def gpu_experts(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts)
        call = self._call("gpu_expert", _LAUNCH["experts"] * self.hw.gpu.kernel_overhead_us * 1e-6)
        return self._lut("gpu", counts).sum(axis=-1) + (counts > 0).any(axis=-1) * call

    def cpu_experts(self, counts: np.ndarray) -> np.ndarray:
        counts = np.asarray(counts)
        call = self._call("cpu_expert", 0.0)
        return self._lut("cpu", counts).sum(axis=-1) + (counts > 0).any(axis=-1) * call

    def _copy(self, nbytes: Any, table_name: str, gbps: float) -> np.ndarray:
        nbytes = np.asarray(nbytes, dtype=np.float64)
        table = self.hw.tables.get(table_name)
        t = table(nbytes) if table is not None else self.hw.link.latency_us * 1e-6 + nbytes / (gbps * 1e9)
        return np.where(nbytes > 0, t, 0.0)

    def h2d(self, nbytes: Any) -> np.ndarray:
        return self._copy(nbytes, "copy_h2d", self.hw.link.h2d_gbps)

    def d2h(self, nbytes: Any) -> np.ndarray:
        return self._copy(nbytes, "copy_d2h", self.hw.link.d2h_gbps)

    def h2d_pageable(self, nbytes: Any) -> np.ndarray:
        """A copy from pageable host memory: the measured table, else pageable_fraction of the pinned bandwidth."""
        return self._copy(nbytes, "copy_h2d_pageable", self.hw.link.h2d_gbps * self.hw.host_memory.pageable_fraction)

    def d2h_pageable(self, nbytes: Any) -> np.ndarray:
        return self._copy(nbytes, "copy_d2h_pageable", self.hw.link.d2h_gbps * self.hw.host_memory.pageable_fraction)

    def logits_cast(self, m: Any) -> np.ndarray:
        """Casting m rows of logits to float32 (read b V m, write 4 V m bytes; one launch; 0 for m = 0)."""
        m = np.asarray(m, dtype=np.float64)
        nbytes = m * self.model.vocab_size * (self.model.dtype_bytes + 4)
        t = nbytes / (self.hw.gpu.hbm_gbps * 1e9) + self.hw.gpu.kernel_overhead_us * 1e-6
        return np.where(m > 0, t, 0.0)

    @property
    def dram_bytes_per_s(self) -> float | None:
        """Host DRAM bandwidth shared by the link's copies and the CPU experts (None: not modelled)."""
        gbps = self.hw.host_memory.dram_gbps
        return None if gbps is None else gbps * 1e9

    @property
    def pinned_bytes(self) -> float:
        """Page-locked host memory available for expert weights (inf: every expert)."""
        return self.hw.host_memory.pinned_bytes

    @property
    def cpu_dram_bytes_per_s(self) -> float:
        """The rate the CPU experts read their weights at (the profile's cpu.dram_gbps)."""
        return self.hw.cpu.dram_gbps * 1e9


@dataclass(frozen=True)
class ConstantCostModel:
    """Fixed times per unit of work, so tests can compute the expected makespan by hand.

    step_fixed = step_s per forward; moe_pre = pre_s per MoE layer; gpu_experts = gpu_expert_s per active
    resident expert; cpu_experts = cpu_expert_s per active CPU expert; copies = per_byte_s * bytes.
    """

    step_s: float = 1.0
    pre_s: float = 1.0
    gpu_expert_s: float = 0.1
    cpu_expert_s: float = 1.0
    h2d_per_byte_s: float = 0.01
    d2h_per_byte_s: float = 0.01
    expert_bytes: int = 100
    token_bytes: int = 1
    serial: bool = False
    shared_duplex: bool = False
    pageable_slowdown: float = 2.0         # a pageable copy takes this many times the pinned one
    dram_bytes_per_s: float | None = None  # shared host DRAM bandwidth (None: not modelled)
    pinned_bytes: float = float("inf")     # page-locked host memory for expert weights
    cpu_dram_bytes_per_s: float | None = None  # the CPU experts' read rate (None: all their time is memory-bound)

    def step_fixed(self, n: Any, c: Any, m: Any, seqs: Any = 1) -> np.ndarray:
        return np.full(np.shape(n), self.step_s)

    def moe_pre(self, n: Any, c: Any, seqs: Any = 1) -> np.ndarray:
        return np.full(np.shape(n), self.pre_s)

    def gpu_experts(self, counts: np.ndarray) -> np.ndarray:
        return (np.asarray(counts) > 0).sum(axis=-1) * self.gpu_expert_s

    def cpu_experts(self, counts: np.ndarray) -> np.ndarray:
        return (np.asarray(counts) > 0).sum(axis=-1) * self.cpu_expert_s

    def gpu_expert_each(self, n: Any) -> np.ndarray:
        return np.where(np.asarray(n) > 0, self.gpu_expert_s, 0.0)

    def cpu_expert_each(self, n: Any) -> np.ndarray:
        return np.where(np.asarray(n) > 0, self.cpu_expert_s, 0.0)

    def h2d(self, nbytes: Any) -> np.ndarray:
        return np.asarray(nbytes, dtype=np.float64) * self.h2d_per_byte_s

    def d2h(self, nbytes: Any) -> np.ndarray:
        return np.asarray(nbytes, dtype=np.float64) * self.d2h_per_byte_s

    def h2d_pageable(self, nbytes: Any) -> np.ndarray:
        return self.h2d(nbytes) * self.pageable_slowdown

    def d2h_pageable(self, nbytes: Any) -> np.ndarray:
        return self.d2h(nbytes) * self.pageable_slowdown

    def logits_cast(self, m: Any) -> np.ndarray:
        return np.zeros(np.shape(m))


@dataclass(frozen=True, eq=False)
class ExecutorCost:
    """A cost model priced as an executor carries the plan out (``offload.executor``; equations in the module
    docstring of ``sim.engine``). ``pinned`` [L, E]: the experts whose host copy is page-locked."""

    cost: CostModel
    executor: ExecutorProfile
    pinned: np.ndarray
    # copy prices by (direction, pinned experts, pageable experts), or by size for a batch of activations: a
    # copy's price depends on nothing else, and a run prices the same few sizes hundreds of thousands of times
    _memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def of(cls, cost: CostModel, executor: ExecutorProfile, num_moe_layers: int, num_experts: int) -> "ExecutorCost":
        """Pinned experts: none for a pageable executor, else the first floor(pinned_bytes / expert_bytes) in
        (layer, expert) order, as the store page-locks its stacks layer by layer."""
        cap = 0.0 if executor.pageable else float(cost.pinned_bytes)
        n = num_moe_layers * num_experts
        k = n if cap >= n * int(cost.expert_bytes) else int(cap // max(int(cost.expert_bytes), 1))
        pinned = (np.arange(n) < k).reshape(num_moe_layers, num_experts)
        pinned.setflags(write=False)
        return cls(cost, executor, pinned)

    @property
    def dram_bytes_per_s(self) -> float | None:
        """Shared host DRAM bandwidth when the executor models its contention, else None."""
        return self.cost.dram_bytes_per_s if self.executor.shared_dram else None

    # ---- fixed work ---------------------------------------------------------------------------------
    def lm_rows(self, tokens_forwarded: Any, lm_tokens: Any) -> np.ndarray:
        """Logit rows per forward: the block's (lm_tokens), or the whole forwarded prefix where logits are made."""
        lm = np.asarray(lm_tokens)
        return np.where(lm > 0, np.asarray(tokens_forwarded), 0) if self.executor.lm_head_rows == "prefix" else lm

    def step_fixed(self, n: Any, c: Any, m_block: Any, seqs: Any = 1) -> np.ndarray:
        m = self.lm_rows(n, m_block)
        t = np.asarray(self.cost.step_fixed(n, c, m, seqs), dtype=np.float64)
        if self.executor.lm_head_fp32:
            t = t + np.asarray(self.cost.logits_cast(m), dtype=np.float64)
        return t

    # ---- experts ------------------------------------------------------------------------------------
    def gpu_experts(self, counts: np.ndarray) -> float:
        counts = np.asarray(counts)
        us = self.executor.gpu_expert_overhead_us  # 0 for most executors: no count to take (t + 0.0 is t)
        return float(self.cost.gpu_experts(counts)) + (us * 1e-6 * int(np.count_nonzero(counts)) if us else 0.0)

    def gpu_experts_rows(self, counts: np.ndarray) -> np.ndarray:
        """:meth:`gpu_experts` of each row of ``counts`` [n, E] in one call: the same operations per row (numpy
        sums a contiguous row pairwise whether alone or in a matrix), so each equals its own call to the bit."""
        counts = np.asarray(counts)
        t = np.asarray(self.cost.gpu_experts(counts), dtype=np.float64)
        us = self.executor.gpu_expert_overhead_us
        return t + us * 1e-6 * np.count_nonzero(counts, axis=-1) if us else t

    def cpu_experts(self, counts: np.ndarray) -> float:
        counts = np.asarray(counts)
        us = self.executor.cpu_expert_overhead_us
        return float(self.cost.cpu_experts(counts)) + (us * 1e-6 * int(np.count_nonzero(counts)) if us else 0.0)

    def cpu_dram_bytes(self, counts: np.ndarray) -> float:
        """Host DRAM bytes a CPU batch moves: each active expert's weights once, each assignment's row in and out."""
        counts = np.asarray(counts)
        return float(np.count_nonzero(counts) * int(self.cost.expert_bytes) + 2 * counts.sum() * int(self.cost.token_bytes))

    # ---- copies -------------------------------------------------------------------------------------
    def _weights(self, direction: str, layer: int, ids: np.ndarray) -> tuple[float, float]:
        """(seconds, host DRAM bytes) of copying experts ``ids`` of ``layer`` one way."""
        if ids.size == 0:
            return 0.0, 0.0
        every = self._memo.get("pinned")
        if every is None:  # all pinned (or none): the count needs no gather per copy
            every = self._memo["pinned"] = 1 if self.pinned.all() else 0 if not self.pinned.any() else -1
        n = int(ids.size)
        pin = n if every == 1 else 0 if every == 0 else int(self.pinned[layer, ids].sum())
        key = (direction, pin, n - pin)
        out = self._memo.get(key)
        if out is None:
            out = self._memo[key] = self._price(*key)
        return out

    def _price(self, direction: str, pin: int, page: int) -> tuple[float, float]:
        b = int(self.cost.expert_bytes)
        g = self.executor.copy_granularity
        pinned_t, pageable_t = self._copy_fns(direction)
        if g == "batched":  # one copy per memory kind (the pinned share and the pageable one)
            t = float(pinned_t(pin * b)) + float(pageable_t(page * b))
        else:  # n blocking copies of b / per bytes each: n x (latency + bytes / bandwidth) in closed form
            per = self.executor.copies_per_expert
            t = per * (pin * float(pinned_t(b / per)) + page * float(pageable_t(b / per)))
        # a pageable copy bounces through the driver's pinned buffer: read + write by the CPU, then the DMA read
        return t, float(pin * b + 3 * page * b)

    def _copy_fns(self, direction: str) -> tuple[Any, Any]:
        """(pinned, pageable) copy time of one direction ("h2d" or "d2h")."""
        c = self.cost
        return (c.h2d, c.h2d_pageable) if direction == "h2d" else (c.d2h, c.d2h_pageable)

    def weights_h2d(self, layer: int, ids: np.ndarray) -> tuple[float, float]:
        return self._weights("h2d", layer, np.asarray(ids, dtype=np.int64))

    def demote_d2h(self, layer: int, ids: np.ndarray) -> tuple[float, float]:
        return self._weights("d2h", layer, np.asarray(ids, dtype=np.int64))

    def activations(self, direction: str, cpu_counts: np.ndarray) -> tuple[float, float]:
        """(seconds, DRAM bytes) of the CPU experts' rows one way: one batch, or one copy per CPU expert."""
        tb = int(self.cost.token_bytes)
        counts = np.asarray(cpu_counts)
        pageable = self.executor.pageable
        fn = self._copy_fns(direction)[pageable]  # (pinned, pageable)[True]: the pageable rate
        total = float(counts.sum()) * tb
        if self.executor.act_copies == "batched":  # priced by its size alone: memoised like the weights
            key = ("act", direction, total)
            t = self._memo.get(key)
            if t is None:
                t = self._memo[key] = float(fn(total))
        else:
            t = float(np.sum(fn(counts[counts > 0] * tb)))
        return t, total * (3.0 if pageable else 1.0)
