"""A true lower bound on the simulated run time of a trace, for any policy, budget and executor schedule.

:func:`lower_bound` solves a relaxation of what any execution of the trace must pay (``sim.engine``'s model,
``offload.plan``'s plans), as a linear program, and returns a :class:`Bound`: ``seconds`` no policy's
``simulate(...).sim_time_s`` can beat, and ``tokens_per_s`` (generated tokens / seconds) no policy can exceed.
The ``oracle`` policy is a clairvoyant *heuristic*; this is the bound.

The relaxation (all times in seconds; counts in token-assignments; S steps, L MoE layers, E experts)
-----------------------------------------------------------------------------------------------------------
Every active expert (s, l, e) with n = counts[s, l, e] > 0 runs either on the GPU or on the CPU (a plan
partitions the active experts: ``offload.plan``). Let x in [0, 1] be its GPU share (relaxed from {0, 1}).
Per expert and per count n, from the cost model:

  g(n)  [s]        GPU time of one expert of n tokens in a batch, without the batch's per-call term
  c(n)  [s]        likewise on the CPU (includes a per-expert overhead; without the batch's per-call term)
  w     [s/expert] min over k = 1..E of h2d(k * expert_bytes) / k: a batch of k <= E weight copies (promote +
                   stream of one layer, or one prefetch entry: distinct ids of one layer) takes >= k w
  a_h, a_d [s/assignment]  min over N = 1..N_max of h2d(N * token_bytes) / N (d2h likewise), N_max the most
                   assignments of any layer-step: a layer's activation copy of N <= N_max assignments takes >= N a
                   (0 in serial mode, where the engine copies no activations)

Weights: at a layer's run its GPU experts are resident (at most that layer's current budget) or streamed in
this layer (one copy each). Budgets may be re-partitioned between layers (``LayerDecision.budget``), but every
layer decides once per step, so the budgets that hold at the layers' runs of step s sum to at most
B_tot = sum_l budget[l]. Residency is free in the relaxation (copies that filled the slots earlier are not
charged; no causality), so the weight copies are at least

  u_s >= (sum_{l,e} x_{s,l,e} - B_tot)^+        experts, per step s.

Busy time per resource (G0 = ``sim.engine.mandatory_gpu_time``: step_fixed + moe_pre of every forward):

  GPU  = G0 + sum x g(n)
  CPU  = sum (1 - x) c(n)
  H2D  = w sum_s u_s + a_h sum (1 - x) n        weights in, CPU results back
  D2H  = a_d sum (1 - x) n                      activations out
  LINK = H2D + D2H                              (shared_duplex: one copy engine)
  DRAM = expert_bytes (sum (1 - x) + sum_s u_s) / dram_bytes_per_s      (optional: weights the CPU experts
                                                 read + weights copied to the GPU; activations omitted)

Every resource serialises its work, so any makespan T >= each busy time (overlap between steps and layers is
free: no causality): T >= max(GPU, CPU, H2D, D2H[, DRAM]) with LINK replacing H2D and D2H when shared.
In serial mode (one device, ``simulate(serial=True)``), T is the sum of all work items:

  T >= G0 + sum x g(n) + sum (1 - x) c(n) + w sum_s u_s + min(call_gpu, call_cpu) * (layer-steps with an
       active expert)                           (each such layer-step runs a GPU or a CPU batch or both)

and T >= DRAM. The bound is min T over 0 <= x <= 1 and u (a linear program).

Why it stays valid
------------------
- g, c: the batch costs of ``offload.cost`` are sum_e each(n_e) + [any n_e > 0] * call. The per-expert part is
  exact (the model's ``*_expert_each``; the per-call term is a batch of one expert minus it); :func:`lower_bound`
  checks on the trace's layer-steps that the model's batches are never below the sum (TideError otherwise). The
  per-call terms are dropped outside serial mode: which resource pays them depends on a 0/1 choice the relaxation
  does not make (a sound but lost ~3 kernel launches per layer-step on the GPU for Roofline models).
- copies: a batch costs latency + bytes / bandwidth (or a measured table); w and a_* are the best per-unit
  price over every batch size an executor can issue, so per-batch latencies are counted only as far as they
  are certain (amortised over the largest possible batch).
- Solving: experts of one step with the same count are interchangeable, so the LP's data is a histogram
  [step, count value]. Its dual is a maximisation over the simplex of K <= 5 resource prices lambda of
  phi(lambda) = min over x, u of sum_k lambda_k R_k(x, u), and weak duality gives phi(lambda) <= min max_k R_k
  for *every* lambda. phi is exact by a greedy per step (sort the count values by reduced cost; the first
  B_tot experts of a step are free of the copy price). Kelley's cutting planes maximise phi (a master LP of
  K + 1 variables per iteration; a handful of iterations on LLaDA2.0-flash) until a feasible relaxed schedule
  (a convex mix of the greedy ones) is within a relative 1e-10 of the best phi: the LP optimum.
  ``method="lp"`` solves the full LP (scipy linprog, HiGHS) instead; either way ``seconds`` is the best phi
  found, so a solver tolerance or an early stop can only loosen the bound, never make it invalid.

What it omits: causality (a copy before its use, the CPU path after its activations leave, the layer order),
the copies that filled resident slots, prefetches that are never used, per-call terms (outside serial mode),
activation bytes in DRAM, and integrality. It is a bound, not a schedule.

A policy with ``needs_budget = False`` (all-gpu) runs with every expert resident whatever budget is asked
(``simulate``): bound it with ``budget=None``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from offload.cost import CostModel
from offload.errors import TideError
from offload.trace import Trace
from offload.executor import ExecutorProfile
from sim.engine import mandatory_gpu_time

_TOL = 1e-9    # relative slack when checking that a cost model's batches are at least the derived per-expert sums
_GAP = 1e-10   # the cutting planes stop when (upper - lower) <= _GAP x upper
_MAX_CUTS = 400
METHODS = ("auto", "cutting-plane", "lp")


@dataclass(frozen=True)
class Solver:
    """How the bound was found."""

    method: str                    # "cutting-plane", "lp" (scipy linprog, HiGHS), or "trivial" (no active expert)
    converged: bool                # the optimum was reached (gap closed); if not, seconds is still a valid bound
    message: str
    lp_seconds: float              # value of the best relaxed schedule found: the LP optimum lies in [seconds, this]
    iterations: int                # cutting planes (1 for the LP)
    variables: int                 # the full LP's variables (one per (step, count) group, one per step, T)
    wall_s: float
    multipliers: dict[str, float]  # dual prices of the resource rows (on the simplex): which resources bind


@dataclass(frozen=True)
class Bound:
    """A lower bound on any policy's simulated time for a (trace, cost model, budget, executor mode)."""

    seconds: float                 # certified: no policy's sim_time_s is below it
    tokens_per_s: float            # generated tokens / seconds: no policy's tokens/s is above it
    generated_tokens: int
    mandatory_gpu_s: float         # step_fixed + moe_pre of every forward (part of gpu_s)
    gpu_s: float                   # busy times at the relaxation's optimum
    cpu_s: float
    h2d_s: float
    d2h_s: float
    link_s: float                  # h2d_s + d2h_s: the one engine's busy time when shared_duplex
    dram_s: float | None           # None: DRAM bandwidth not modelled
    gpu_experts: float             # (fractional) active experts run on the GPU, summed over layer-steps
    cpu_experts: float
    streamed_experts: float        # weight copies the relaxation pays (beyond the free resident budget)
    binding: tuple[str, ...]       # resource rows at the optimum's value: gpu, cpu, h2d, d2h, link, dram, serial
    budget_total: int              # experts resident over all layers (re-partitionable between layers)
    serial: bool
    shared_duplex: bool
    solver: Solver


@dataclass(frozen=True)
class _Row:
    """One resource's busy time, affine in the relaxation: a + b . Y + w * U, with Y [C] the experts of each
    count value run on the GPU (summed over steps) and U the weight copies."""

    name: str
    a: float
    b: np.ndarray  # [C] per expert of that count moved to the GPU
    w: float       # per weight copy


@dataclass(frozen=True)
class _Problem:
    rows: tuple[_Row, ...]
    hist: np.ndarray   # [S, C] active experts of each count value per step (over the step's layers)
    btot: int          # free resident experts per step (all layers together)

    def totals(self, Y: np.ndarray, U: float) -> np.ndarray:
        return np.array([r.a + float(r.b @ Y) + r.w * U for r in self.rows])

    def phi(self, lam: np.ndarray) -> tuple[float, np.ndarray, float]:
        """phi(lam) = min over feasible (y, u) of sum_k lam_k R_k: a lower bound on min max_k R_k for any lam on
        the simplex (weak duality); exact by a greedy per step. Returns (phi, its minimiser's Y and U)."""
        kappa = np.sum([l * r.b for l, r in zip(lam, self.rows)], axis=0)  # reduced cost of one expert on the GPU
        lw = float(sum(l * r.w for l, r in zip(lam, self.rows)))            # price of one weight copy (>= 0)
        # within a step the first btot experts on the GPU are free of the copy price: the most negative reduced
        # costs take them (each saves lw over paying, at least what any expert not otherwise moved saves).
        # The reduced cost depends on the count value alone, so one order serves every step.
        order = np.argsort(kappa, kind="stable")
        h = self.hist[:, order]
        before = np.cumsum(h, axis=1) - h
        free = np.clip(self.btot - before, 0, h)
        k = kappa[order]
        y_free = np.where(k < 0, free, 0)
        y_paid = np.where(k + lw < 0, h - free, 0)  # taken only once the step's free ones are all taken
        Y = np.empty_like(k)
        Y[order] = (y_free + y_paid).sum(axis=0)
        U = float(y_paid.sum())
        return float(sum(l * r.a for l, r in zip(lam, self.rows)) + kappa @ Y + lw * U), Y, U


def _expert_costs(cost: CostModel, which: str, n: np.ndarray) -> tuple[np.ndarray, float]:
    """(per-expert time at each count in n, the batch's per-call time) for the GPU or the CPU."""
    batch: Callable[[np.ndarray], Any] = cost.gpu_experts if which == "gpu" else cost.cpu_experts
    one = float(np.asarray(batch(np.array([[1]]))).reshape(-1)[0])
    each = cost.gpu_expert_each if which == "gpu" else cost.cpu_expert_each
    per = np.asarray(each(n), dtype=np.float64)
    call = one - float(np.asarray(each(np.array([1]))).reshape(-1)[0])
    return np.maximum(per, 0.0), max(call, 0.0)


def _check_additive(cost: CostModel, which: str, counts: np.ndarray, un: np.ndarray, per: np.ndarray,
                    call: float) -> None:
    """The derived per-expert costs must never exceed the model's batch cost of a real layer-step."""
    batch = cost.gpu_experts if which == "gpu" else cost.cpu_experts
    full = np.asarray(batch(counts), dtype=np.float64)  # [S, L]: every active expert of a layer-step in one batch
    lut = np.zeros(int(un.max()) + 1)
    lut[un] = per
    derived = lut[counts].sum(axis=-1) + call * (counts > 0).any(axis=-1)
    if np.any(derived > full * (1 + _TOL) + 1e-15):
        raise TideError(f"cost model's {which}_experts is not a sum of per-expert times plus a per-call term: "
                        "no sound per-expert bound")


def _per_unit(copy: Callable[[np.ndarray], Any], unit_bytes: int, kmax: int) -> float:
    """min over k = 1..kmax of copy(k units) / k: a price per unit no copy batch of <= kmax units beats."""
    if kmax < 1 or unit_bytes <= 0:
        return 0.0
    k = np.arange(1, kmax + 1, dtype=np.float64)
    t = np.asarray(copy(k * unit_bytes), dtype=np.float64)
    return max(0.0, float((t / k).min()))


def _budget_total(budget: Any, L: int, E: int) -> int:
    if budget is None:
        return L * E
    arr = np.asarray(budget)
    if arr.size not in (1, L) or arr.ndim > 1 or not np.issubdtype(arr.dtype, np.integer):
        raise TideError(f"budget must be an integer or {L} integers (experts per MoE layer)")
    arr = np.broadcast_to(arr.astype(np.int64), (L,))
    if arr.min() < 1 or arr.max() > E:
        raise TideError(f"budget must be between 1 and {E} experts per layer")
    return int(arr.sum())


@dataclass(frozen=True)
class _Solution:
    seconds: float      # certified: max of phi over the multipliers tried
    lam: np.ndarray     # the multipliers that gave it
    Y: np.ndarray       # a relaxed schedule (experts of each count on the GPU) ...
    U: float            # ... and its weight copies, whose busy times have max lp_seconds
    lp_seconds: float
    iterations: int
    converged: bool
    message: str


def _best_phi(P: _Problem, candidates: list[np.ndarray]) -> tuple[float, np.ndarray]:
    vals = [P.phi(lam)[0] for lam in candidates]
    i = int(np.argmax(vals))
    return vals[i], candidates[i]


def _cutting_plane(P: _Problem, scale: float) -> _Solution:
    """Kelley's cutting planes on the dual: maximise the concave piecewise-linear phi over the simplex of the K
    resource rows (K <= 5). Each phi evaluation gives a relaxed schedule z_i and the cut phi(lam) <= lam . R(z_i);
    the master LP (K + 1 variables) maximises the cuts' minimum, and its dual mixes the z_i into a feasible
    schedule, so the gap between that schedule's makespan and the best phi closes; phi is polyhedral, so this
    ends after finitely many distinct cuts."""
    from scipy.optimize import linprog

    K = len(P.rows)
    cuts: list[np.ndarray] = []
    zs: list[tuple[np.ndarray, float]] = []
    lower, best = -np.inf, np.eye(K)[0]

    def cut(lam: np.ndarray) -> None:
        nonlocal lower, best
        v, Y, U = P.phi(lam)
        cuts.append(P.totals(Y, U) / scale)
        zs.append((Y, U))
        if v > lower:
            lower, best = v, lam

    for lam in [*np.eye(K), np.full(K, 1.0 / K)]:  # each resource alone (phi = its least busy time), then all
        cut(lam)
    obj = np.zeros(K + 1)
    obj[-1] = -1.0
    a_eq = np.concatenate([np.ones(K), [0.0]])[None, :]
    bounds = [(0.0, None)] * K + [(None, None)]
    Y, U, upper, message = zs[0][0], zs[0][1], np.inf, "iteration cap"
    for it in range(_MAX_CUTS):  # noqa: B007 (it counts the cuts made, after the loop)
        R = np.array(cuts)
        res = linprog(obj, A_ub=np.hstack([-R, np.ones((len(cuts), 1))]), b_ub=np.zeros(len(cuts)), A_eq=a_eq,
                      b_eq=[1.0], bounds=bounds, method="highs")
        if res.status != 0:
            message = f"master LP: {res.message}"
            break
        mu = np.maximum(-np.asarray(res.ineqlin.marginals), 0.0)
        mu = mu / mu.sum() if mu.sum() > 0 else np.eye(len(cuts))[int(np.argmin(R.max(axis=1)))]
        Yc = np.sum([m * z[0] for m, z in zip(mu, zs)], axis=0)
        Uc = float(sum(m * z[1] for m, z in zip(mu, zs)))
        value = float(P.totals(Yc, Uc).max())  # a convex mix of feasible schedules is feasible
        if value < upper:
            Y, U, upper = Yc, Uc, value
        if upper - lower <= _GAP * upper:
            message = "gap closed"
            break
        lam = np.maximum(res.x[:K], 0.0)
        cut(lam / lam.sum())
    return _Solution(lower, best, Y, U, upper, it + 1, upper - lower <= _GAP * upper, message)


def _lp(P: _Problem, scale: float) -> _Solution:
    """The full LP (one variable per (step, count) group, one per step, and T) with HiGHS' interior point and
    crossover; its dual prices feed phi, which certifies the value."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    rows, (S, C) = P.rows, P.hist.shape
    K = len(rows)
    step, col = np.nonzero(P.hist)
    mult = P.hist[step, col].astype(np.float64)
    J = step.size
    nv = J + S + 1
    # resource rows: (b . y + w sum u) / scale - T <= -a / scale; step rows: sum of the step's y - u_s <= btot
    ri = [np.full(J + S + 1, k) for k in range(K)] + [K + step, K + np.arange(S)]
    ci = [np.arange(nv)] * K + [np.arange(J), J + np.arange(S)]
    vv = [np.concatenate([r.b[col] / scale, np.full(S, r.w / scale), [-1.0]]) for r in rows]
    vv += [np.ones(J), -np.ones(S)]
    A = coo_matrix((np.concatenate(vv), (np.concatenate(ri), np.concatenate(ci))), shape=(K + S, nv)).tocsr()
    b_ub = np.concatenate([[-r.a / scale for r in rows], np.full(S, float(P.btot))])
    obj = np.zeros(nv)
    obj[-1] = 1.0
    bounds = np.column_stack([np.zeros(nv), np.concatenate([mult, np.full(S + 1, np.inf)])])
    res = linprog(obj, A_ub=A, b_ub=b_ub, bounds=bounds, method="highs-ipm")
    candidates = list(np.eye(K))
    if res.status == 0:
        y = np.clip(res.x[:J], 0.0, mult)
        Y = np.bincount(col, weights=y, minlength=C)
        U = float(np.maximum(np.bincount(step, weights=y, minlength=S) - P.btot, 0.0).sum())
        lam = np.maximum(-np.asarray(res.ineqlin.marginals[:K]), 0.0)
        if lam.sum() > 0:
            candidates.append(lam / lam.sum())
    else:  # no optimum: each resource alone still gives a valid (weaker) bound
        Y, U = P.hist.sum(axis=0).astype(np.float64), float(np.maximum(P.hist.sum(axis=1) - P.btot, 0).sum())
    seconds, lam = _best_phi(P, candidates)
    upper = float(P.totals(Y, U).max())
    return _Solution(seconds, lam, Y, U, upper, 1, res.status == 0 and upper - seconds <= 1e-7 * upper,
                     str(res.message))


def lower_bound(trace: Trace, cost: CostModel, budget: Any = None, *, serial: bool | None = None,
                shared_duplex: bool | None = None, dram_bytes_per_s: float | None = None,
                method: str = "auto", executor: ExecutorProfile | None = None) -> Bound:
    """The bound for ``trace`` on ``cost`` with ``budget`` experts per MoE layer (int or [L]; None: all), in the
    engine's mode (``serial``, ``shared_duplex``: None takes the cost model's, as ``simulate`` does);
    ``dram_bytes_per_s``: host DRAM bandwidth as a further resource (None: not modelled). ``method``:
    "cutting-plane", "lp" (the full LP), or "auto" (cutting planes, the LP if they have not converged).

    ``executor`` (None: none of its costs): what every policy pays under it is added where it is certain: its
    mandatory GPU work (lm_head rows and cast), the host sync per layer-step the GPU waits for (on the main
    process's path, like G0), and, when it overlaps nothing (serial unless ``serial`` says otherwise), the
    smaller of its per-expert GPU and CPU overheads for every active expert. Its other costs only add time, so
    leaving them out keeps the bound valid."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise TideError(f"bound method must be one of {', '.join(METHODS)}, got {method!r}")
    S, L, E = trace.num_steps, trace.num_moe_layers, trace.num_experts
    btot = _budget_total(budget, L, E)
    if serial is None:
        serial = bool(cost.serial) or (executor is not None and not executor.overlap)
    serial = bool(serial)
    shared_duplex = bool(cost.shared_duplex if shared_duplex is None else shared_duplex)
    if dram_bytes_per_s is not None and not (np.isfinite(dram_bytes_per_s) and dram_bytes_per_s > 0):
        raise TideError(f"dram_bytes_per_s must be a positive number, got {dram_bytes_per_s!r}")
    eb, tb = int(cost.expert_bytes), int(cost.token_bytes)
    counts = np.asarray(trace.counts).astype(np.int64, copy=False)
    g0 = mandatory_gpu_time(trace, cost, executor)
    if executor is not None:
        g0 += executor.host_sync_us * 1e-6 * S * L  # the GPU stream waits for it at every layer of every forward

    # experts of one step with the same count are interchangeable: a histogram [step, count value] holds it all
    width = int(counts.max(initial=0)) + 1
    dense = np.bincount((np.arange(S)[:, None, None] * width + counts).ravel(), minlength=S * width)
    dense = dense.reshape(S, width)[:, 1:]          # [step, count - 1]: count 0 (inactive) dropped
    present = dense.any(axis=0)
    vals = np.arange(1, width)[present]            # the count values that occur (C of them)
    hist = dense[:, present]
    C = vals.size
    if C:
        g, call_g = _expert_costs(cost, "gpu", vals)
        c, call_c = _expert_costs(cost, "cpu", vals)
        _check_additive(cost, "gpu", counts, vals, g, call_g)
        _check_additive(cost, "cpu", counts, vals, c, call_c)
    else:
        g = c = np.zeros(0)
        call_g = call_c = 0.0
    mult = hist.sum(axis=0).astype(np.float64)  # [C] over the whole trace
    nf = vals.astype(np.float64)
    c0 = float(c @ mult)       # every active expert on the CPU
    a0 = float(nf @ mult)      # ... and all its assignments
    w = _per_unit(cost.h2d, eb, E)
    n_max = int(counts.sum(axis=-1).max(initial=0))
    a_h = 0.0 if serial else _per_unit(cost.h2d, tb, n_max)
    a_d = 0.0 if serial else _per_unit(cost.d2h, tb, n_max)

    rows: list[_Row] = []
    if serial:
        layer_steps = int((counts > 0).any(axis=-1).sum())
        per_expert = 0.0 if executor is None else 1e-6 * min(executor.gpu_expert_overhead_us,
                                                              executor.cpu_expert_overhead_us)
        rows.append(_Row("serial", g0 + c0 + min(call_g, call_c) * layer_steps + per_expert * float(mult.sum()),
                         g - c, w))
    else:
        rows += [_Row("gpu", g0, g, 0.0), _Row("cpu", c0, -c, 0.0)]
        h2d = _Row("h2d", a_h * a0, -a_h * nf, w)
        d2h = _Row("d2h", a_d * a0, -a_d * nf, 0.0)
        rows += [_Row("link", h2d.a + d2h.a, h2d.b + d2h.b, w)] if shared_duplex else [h2d, d2h]
    if dram_bytes_per_s is not None:
        p = eb / float(dram_bytes_per_s)
        rows.append(_Row("dram", p * float(mult.sum()), np.full(C, -p), p))
    P = _Problem(tuple(rows), hist, btot)
    K = len(rows)
    names = [r.name for r in rows]

    nvars = int(np.count_nonzero(hist)) + S + 1
    if C == 0:
        a = np.array([r.a for r in rows])
        sol = _Solution(float(a.max()), np.eye(K)[int(np.argmax(a))], np.zeros(0), 0.0, float(a.max()), 0, True,
                        "no active expert")
        how = "trivial"
    else:
        # scale times so that T is O(1) and the solvers' absolute tolerances are relative ones: by the better of
        # two feasible schedules (every expert on the GPU, every expert on the CPU), at least the optimum
        all_gpu = float(P.totals(mult, float(np.maximum(hist.sum(axis=1) - btot, 0).sum())).max())
        scale = max(min(all_gpu, float(P.totals(np.zeros(C), 0.0).max())), 1e-300)
        how = "lp" if method == "lp" else "cutting-plane"
        sol = _lp(P, scale) if method == "lp" else _cutting_plane(P, scale)
        if method == "auto" and not sol.converged:
            lp = _lp(P, scale)
            how = "lp"
            sol = _Solution(max(sol.seconds, lp.seconds), lp.lam if lp.seconds >= sol.seconds else sol.lam, lp.Y,
                            lp.U, min(sol.lp_seconds, lp.lp_seconds), sol.iterations + 1, lp.converged,
                            f"cutting planes: {sol.message}; lp: {lp.message}")
    tot = dict(zip(names, P.totals(sol.Y, sol.U)))
    top_total = max(tot.values())
    binding = tuple(k for k, v in tot.items() if v >= top_total * (1 - 1e-6))
    act = float(nf @ (mult - sol.Y))
    gpu_s = g0 + float(g @ sol.Y)
    cpu_s = float(c @ (mult - sol.Y))
    h2d_s = w * sol.U + a_h * act
    d2h_s = a_d * act
    info = Solver(how, sol.converged, sol.message, sol.lp_seconds, sol.iterations, nvars,
                  time.perf_counter() - t0, dict(zip(names, np.asarray(sol.lam, dtype=float).tolist())))
    gen = int(trace.generated_tokens)
    seconds = sol.seconds
    return Bound(seconds=seconds, tokens_per_s=gen / seconds if seconds > 0 else float("inf"), generated_tokens=gen,
                 mandatory_gpu_s=g0, gpu_s=gpu_s, cpu_s=cpu_s, h2d_s=h2d_s, d2h_s=d2h_s, link_s=h2d_s + d2h_s,
                 dram_s=tot.get("dram"), gpu_experts=float(sol.Y.sum()), cpu_experts=float(np.sum(mult - sol.Y)),
                 streamed_experts=sol.U, binding=binding, budget_total=btot, serial=serial,
                 shared_duplex=shared_duplex, solver=info)
