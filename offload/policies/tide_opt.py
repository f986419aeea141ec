"""``tide-opt``: TIDE with its refresh interval tau chosen by a mathematical program over the cost model.

Mechanics are exactly :class:`offload.policies.tide.Tide` (top-B refresh at in-block steps 0, tau, 2 tau, ...,
every step of the first generated block, synchronous transfers, misses on the CPU, no overlap). Only tau is
chosen, once, at the first decision after the first generated block, from what a runtime knows then:

* ``ctx.cost``, the profiled cost model (seconds; see :mod:`offload.cost`);
* the first block's denoising steps j = 0..n-1, which all refresh: per layer l, the step's counts c_j[l, e]
  (token-assignments) and the placement R_j[l] left by its refresh (bool [E]).

Measured tables (all seconds, summed over MoE layers; d = steps since the last refresh)::

  step(d)    = mean_{j}   sum_l [ T_gpu(c_{j+d} * R_j) + T_cpu_path(c_{j+d} * ~R_j) ]          d = 0..n-1
  refresh(d) = mean_{j}   sum_l   T_h2d(|topB(c_{j+d}) \\ R_j| * expert_bytes)                   d = 1..n-1
  T_cpu_path(x) = T_d2h(a) + T_cpu(x) + T_h2d(a),  a = sum_e x_e * token_bytes  (0 when x = 0)

the mean running over the pairs (j, j + d) of the block, i.e. what a placement frozen d steps ago costs per
step, and what refreshing it costs. TIDE serialises everything (no overlap), so a step's latency is this plain
sum of GPU compute, CPU compute and I/O time: the paper's weighted sum, with every weight 1 on this executor.
Both tables are made non-decreasing in d (weighted isotonic regression): staleness cannot pay.

Objective, per block of n steps (n = the first block's steps; the refresh at step 0 does not depend on tau
and is left out)::

  J(tau) = sum_{j=0}^{n-1} step(j mod tau) + |{j in 1..n-1 : j mod tau = 0}| * refresh(tau)      [s/block]

Continuous relaxation: k in-block refreshes (k real, in [0, n - 1]) cutting the block into k + 1 equal periods
of p = n / (k + 1) steps::

  Jc(k) = (k + 1) * S(p) + k * refresh(p),   S(p) = sum_{d < p} step(d)                             [s/block]

with S and refresh interpolated linearly between integers (Jc = J when k + 1 divides n). The program is
solved by ``scipy.optimize.minimize_scalar`` (bounded) over k; its integer neighbours are the taus TIDE's grid
needs for floor(k*) and ceil(k*) refreshes (tau = ceil(n / (k + 1))) and floor/ceil of the period p*; the best
of them under J starts a greedy integer search that moves to a neighbouring tau while J does not get worse
(ties go to the larger tau: fewer refreshes, whose fixed costs the model does not price). Without scipy (the
GPU machines have only torch and numpy) J is evaluated at every integer tau in [1, n] and the best taken (same
tie rule); on a multimodal J the two can differ, the grid being exact for the model.
J cannot tell taus >= n apart (none refreshes within a block of n steps) and ties go to the larger, so an
optimum at n is reported as ``ctx.block_length`` (a block has at most that many steps): longer blocks are then
not refreshed at step n either.

With ``per_layer=True`` each layer gets its own tables and its own tau. With ``ctx.cost`` None (a runtime
without a calibrated model) :class:`ByteProxyCost` prices work by the bytes it moves: a promotion copies
expert_bytes over the link; a CPU expert reads expert_bytes from host DRAM, taken as 4x the link bandwidth
(the ratio of the presets' DDR5 and PCIe 5 figures); GPU work and activations count as free.

Limits: one block is one sample of n and of the drift; under prefix recompute the first block forwards the
shortest prefix, so later (longer) steps make staleness costlier than measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from offload.policies.base import AR_WINDOW, LayerDecision, LayerView, Policy, PolicyContext, StepInfo
from offload.policies.params import PolicyParams, check_bool, knob
from offload.policies.tide import Tide
from offload.trace import KIND_DECODE, KIND_DENOISE

_TIE = 1e-9  # relative tolerance under which two objective values count as equal


@dataclass(frozen=True)
class ByteProxyCost:
    """Cost model used when ``ctx.cost`` is None: seconds = bytes moved / bandwidth (see module docstring).
    Only the parts tide-opt prices (experts and copies)."""

    expert_bytes: int
    link_gbps: float = 50.0
    dram_to_link: float = 4.0
    token_bytes: int = 0

    def gpu_experts(self, counts: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(counts)[:-1])

    def cpu_experts(self, counts: np.ndarray) -> np.ndarray:
        active = (np.asarray(counts) > 0).sum(axis=-1)
        return active * self.expert_bytes / (self.dram_to_link * self.link_gbps * 1e9)

    def h2d(self, nbytes: Any) -> np.ndarray:
        return np.asarray(nbytes, dtype=np.float64) / (self.link_gbps * 1e9)

    d2h = h2d


def _isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted non-decreasing least-squares fit of y (pool adjacent violators), along axis 0 of [D, ...]."""
    out = np.empty_like(y)
    for col in np.ndindex(y.shape[1:]):
        vals, wts, sizes = [], [], []
        for v, wt in zip(y[(slice(None), *col)], w):
            vals.append(float(v)), wts.append(float(wt)), sizes.append(1)
            while len(vals) > 1 and vals[-2] > vals[-1]:
                v2, w2, s2 = vals.pop(), wts.pop(), sizes.pop()
                wsum = wts[-1] + w2
                vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / wsum if wsum > 0 else max(vals[-1], v2)
                wts[-1], sizes[-1] = wsum, sizes[-1] + s2
        out[(slice(None), *col)] = np.repeat(vals, sizes)
    return out


def _top_b_mask(counts: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[..., L, E] bool: per row the (at most) b[l] busiest experts with count > 0 (ties: lower id), as top_b."""
    order = np.argsort(-counts, axis=-1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(counts.shape[-1]), axis=-1)
    return (rank < b[:, None]) & (counts > 0)


def cost_tables(counts: np.ndarray, placed: np.ndarray, budget: np.ndarray, cost: Any) -> tuple[np.ndarray, np.ndarray]:
    """step[d, l] and refresh[d, l] (seconds, d = 0..n-1; refresh[0] = 0) from the first block's counts
    [n, L, E] and post-refresh placements [n, L, E] (see the module docstring), before the isotonic fit."""
    n, L, _ = counts.shape
    step, refresh = np.zeros((n, L)), np.zeros((n, L))
    tb, eb = int(cost.token_bytes), int(cost.expert_bytes)
    for d in range(n):  # one lag at a time, vectorised over the n - d pairs (j, j + d) and the layers
        c, r = counts[d:].astype(np.int64), placed[: n - d]                 # [n - d, L, E]
        hit, miss = np.where(r, c, 0), np.where(r, 0, c)
        act = miss.sum(axis=-1) * tb                                        # [n - d, L] activation bytes
        t = (np.asarray(cost.gpu_experts(hit)) + np.asarray(cost.cpu_experts(miss))
             + np.where(act > 0, np.asarray(cost.d2h(act)) + np.asarray(cost.h2d(act)), 0.0))
        step[d] = t.mean(axis=0)
        if d:
            promote = (_top_b_mask(c, budget) & ~r).sum(axis=-1)
            refresh[d] = np.asarray(cost.h2d(promote * eb), dtype=np.float64).mean(axis=0)
    return step, refresh


def block_objective(step: np.ndarray, refresh: np.ndarray, n: int, tau: int) -> float:
    """J(tau): seconds per block of n steps (without the tau-independent refresh at step 0)."""
    j = np.arange(n)
    return float(step[j % tau].sum() + ((j > 0) & (j % tau == 0)).sum() * refresh[min(tau, n - 1)])


def relaxed_objective(step: np.ndarray, refresh: np.ndarray, n: int) -> Callable[[float], float]:
    """Jc(k), k in [0, n - 1]: a block of n steps cut by k equally spaced refreshes into k + 1 periods of
    p = n / (k + 1) steps; S and refresh interpolated linearly between integers (exact at integer k, p)."""
    grid = np.arange(n + 1, dtype=np.float64)
    S = np.concatenate([[0.0], np.cumsum(step)])                            # S[t] = sum_{d < t} step(d)
    r = np.append(refresh, refresh[-1])                                     # refresh(n): never paid in a block

    def jc(k: float) -> float:
        p = n / (1.0 + float(np.clip(k, 0.0, n - 1)))
        return (n / p) * float(np.interp(p, grid, S)) + (n / p - 1.0) * float(np.interp(p, grid, r))

    return jc


def solve_tau(step: np.ndarray, refresh: np.ndarray, use_scipy: bool = True) -> tuple[int, str]:
    """The chosen integer tau in [1, n] and the solver used ("scipy", "grid" or "trivial"); see the module
    docstring."""
    n = int(step.size)
    if n <= 1:
        return 1, "trivial"
    def J(t: float) -> float:
        return block_objective(step, refresh, n, t)
    minimize_scalar = None
    if use_scipy:
        try:  # lazy: the runtime's GPU machines have no scipy
            from scipy.optimize import minimize_scalar
        except ImportError:
            pass
    if minimize_scalar is None:
        values = np.array([J(t) for t in range(1, n + 1)])
        ok = np.flatnonzero(values <= values.min() * (1 + _TIE) + 1e-300)
        return int(ok[-1]) + 1, "grid"
    res = minimize_scalar(relaxed_objective(step, refresh, n), bounds=(0.0, float(n - 1)), method="bounded",
                          options={"xatol": 1e-3})
    # integer neighbours: the taus giving floor(k*) and ceil(k*) refreshes as evenly as TIDE's grid allows
    # (tau = ceil(n / (k + 1))), and floor/ceil of the relaxed period n / (k* + 1)
    k, period = float(res.x), n / (1.0 + float(res.x))
    cands = {-(-n // (int(np.floor(k)) + 1)), -(-n // (int(np.ceil(k)) + 1)), int(np.floor(period)),
             int(np.ceil(period))}
    tau = min(sorted(min(max(t, 1), n) for t in cands)[::-1], key=J)  # first minimum of the descending list
    while True:  # greedy integer search; ties move up
        if tau < n and J(tau + 1) <= J(tau) * (1 + _TIE) + 1e-300:
            tau += 1
        elif tau > 1 and J(tau - 1) < J(tau) * (1 - _TIE):
            tau -= 1
        else:
            return tau, "scipy"


@dataclass(frozen=True)
class TideOptParams(PolicyParams):
    policy: ClassVar[str] = "tide-opt"
    per_layer: bool = knob(False, "solve one tau per MoE layer instead of one for all")

    def check(self) -> None:
        check_bool("per_layer", self.per_layer)


class TideOpt(Tide):
    """TIDE whose tau (one, or one per layer) is solved for after the first generated block."""

    name = "tide-opt"
    role = "paper"

    Params = TideOptParams
    uses_cost = True

    def __init__(self, **params: Any) -> None:
        Policy.__init__(self, **params)
        self.tau = 1  # the first block refreshes every step whatever tau is
        self.per_layer = self.p.per_layer
        self.chosen_tau: int | list[int] | None = None
        self._report: dict[str, Any] = {}

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        placement = super().initial_placement(ctx)
        self._tau_layer = np.ones(ctx.num_moe_layers, dtype=np.int64)
        self._obs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # step_in_block -> (counts, placed) [L, E]
        self._solved = False
        return placement

    @staticmethod
    def _observing(step: StepInfo) -> bool:
        """The window tau is learnt on, refreshed every step: the first generated block, or for autoregressive
        decode the first AR_WINDOW tokens."""
        if step.kind not in (KIND_DENOISE, KIND_DECODE):
            return False
        return step.first_block or (step.kind == KIND_DECODE and 0 <= step.block < AR_WINDOW)

    def is_refresh(self, view: LayerView) -> bool:
        step = view.step
        if step.kind not in (KIND_DENOISE, KIND_DECODE):
            return False
        return self._observing(step) or step.phase % int(self._tau_layer[view.layer]) == 0

    def decide(self, view: LayerView) -> LayerDecision:
        step = view.step
        if not self._solved and step.block >= (AR_WINDOW if step.kind == KIND_DECODE else 1):
            self.solve()
        dec = super().decide(view)
        if self._observing(step):
            if step.phase not in self._obs:
                shape = (self.ctx.num_moe_layers, view.resident.size)
                self._obs[step.phase] = (np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=bool))
            counts, placed = self._obs[step.phase]
            counts[view.layer] = view.counts
            placed[view.layer] = view.resident
            placed[view.layer, dec.demote] = False
            placed[view.layer, dec.promote] = True
        return dec

    def solve(self, use_scipy: bool = True) -> int | list[int]:
        """Choose tau from the steps observed so far (called once, at the first decision after block 0)."""
        self._solved = True
        n = 0
        while n in self._obs:  # the first block's consecutive steps 0..n-1
            n += 1
        cost = self.ctx.cost if self.ctx.cost is not None else ByteProxyCost(int(self.ctx.expert_bytes))
        if n <= 1:  # nothing to measure drift on: blocks of one step, where tau does not matter
            taus, solver = np.ones(self.ctx.num_moe_layers, dtype=np.int64), "trivial"
            step = refresh = np.zeros((max(n, 1), self.ctx.num_moe_layers))
        else:
            counts = np.stack([self._obs[j][0] for j in range(n)])
            placed = np.stack([self._obs[j][1] for j in range(n)])
            step, refresh = cost_tables(counts, placed, np.asarray(self.ctx.budget), cost)
            w = n - np.arange(n, dtype=np.float64)  # pairs per lag
            if not self.per_layer:
                step, refresh = step.sum(axis=1, keepdims=True), refresh.sum(axis=1, keepdims=True)
            step, refresh = _isotonic(step, w), np.concatenate([refresh[:1], _isotonic(refresh[1:], w[1:])])
            solved = [solve_tau(step[:, l], refresh[:, l], use_scipy) for l in range(step.shape[1])]
            taus = np.array([t for t, _ in solved], dtype=np.int64)
            solver = solved[0][1]
        predicted = float(sum(block_objective(step[:, l], refresh[:, l], max(n, 1), int(t))
                              for l, t in enumerate(taus)))
        taus = np.where(taus >= n, max(n, int(self.ctx.block_length)), taus)  # no in-block refresh: see docstring
        self._tau_layer = np.broadcast_to(taus, (self.ctx.num_moe_layers,)).copy()
        self.chosen_tau = [int(t) for t in self._tau_layer] if self.per_layer else int(self._tau_layer[0])
        self.tau = int(self._tau_layer.max())
        self._report = {"chosen_tau": self.chosen_tau, "observed_steps": n, "solver": solver,
                        "cost_model": "ctx.cost" if self.ctx.cost is not None else "byte-proxy",
                        "predicted_block_s": predicted}
        self._obs = {}
        return self.chosen_tau

    @property
    def refresh_interval(self) -> int | None:
        return self.chosen_tau if isinstance(self.chosen_tau, int) else None  # a list: one tau per layer

    def report(self) -> dict[str, Any]:
        """What the solver chose (empty before the first block ended)."""
        return dict(self._report)
