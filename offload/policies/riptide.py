"""``riptide``: TIDE (keep the experts a dLLM reuses across denoising steps on the GPU, run the misses on the
CPU) with the open ends of its released code (synchronous copies, uniform budgets, raw-count ranking, fixed tau,
no reuse across blocks) closed, each part switchable for ablation.

Per (step, MoE layer), after the layer's router ran: c = the step's token-assignment counts; per-expert
seconds from the cost model (:mod:`offload.policies.riptide_costs`) cpu(c_e), gpu(c_e), save_e = cpu - gpu; the
layer's time T as the engine schedules it (riptide_costs.CostTables.layer_time). The choices themselves are
pure functions in :mod:`offload.policies.riptide_plan`.

1. ``layer_budgets`` -- per-layer budgets by marginal benefit, same total memory. Each expert's value is the
   smoothed (decay 0.95 per step) saving it would bring if resident, save_e x 1[active]. At the first denoising
   step of every block after the first, the total sum_l B_l is split by
   :func:`~offload.policies.riptide_stats.allocate_budgets` (each layer keeps min_share x B), adopted when the
   resident sets could hold > REBUDGET_GAIN (2%) more value. A layer then moves there itself
   (``LayerDecision.budget``): shrinking demotes its least valuable residents; growing takes slots the others
   have handed back. Off: the uniform budget.
2. ``drift`` -- refresh (re-plan) a layer when its routing drifted since its last refresh,
   cos(c, c_ref) < drift, or when the current placement's cost exceeds a bound: the regret
   R = sum(top-B save) - sum(save of active residents) [s/step], over the block's remaining steps, would pay
   for ``cost_bound`` expert copies. None: every ``tau`` in-block steps and every step of the first block (as
   TIDE). Refreshes happen on denoising and decode forwards.
3. ``cost_aware`` -- on a refresh, promote only what saves more CPU time over its expected residency than its
   transfer costs where it cannot hide (riptide_plan.cost_aware); the horizon of expert e at in-block step j is
   H_e = max(0, n_bar - j - 1) x a_e (the block's remaining steps, BlockStats; a_e its smoothed activity,
   decay ``ema``); evicting an inactive expert v costs H_v save(round(ema_v)). Off: TIDE's target (top-B by
   count, all promoted).
4. ``prefetch`` -- promotions that fit this step's asynchronous window W go as a ``Prefetch`` of this same layer,
   issued by the engine or store once the layer's experts have run and landing before its next step: predicted from
   this step's routing, the layer's most recent one at any point before its next router runs; and issued at the
   earliest point that touches no slot the layer still reads (an earlier issue would also queue the weights
   ahead of the layer's own activation copies on the one H2D engine). W = link_share x (estimated step time)
   minus the estimated synchronous link time of the step (both from the previous step's decisions), shared
   among the layers still to decide. Promotions beyond W are synchronous. Off: all synchronous.
5. ``balance`` -- overlap_cpu=True, the CPU path starting with the copies (sim.engine), and the CPU's share cut to
   what hides under the GPU's: the costliest misses are fetched while the layer gets shorter
   (riptide_plan.balance), kept when a slot is free, else streamed. Off: overlap_cpu=False and no streams
   (TIDE's serial layer: GPU experts, then the CPU path).
6. ``carry`` -- the last placement of a block seeds the next: no reset at a block start, where drift and the
   plan decide what changes. Off: every block's in-block step 0 refreshes to TIDE's target (top-B, all
   promoted), the behaviour the issue compares with.

Initial placement: experts 0..B-1 (nothing is known before the first router runs). Needs ``ctx.cost``; a
runtime given none gets :class:`~offload.policies.riptide_costs.ProxyCost`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from offload.policies import riptide_plan as plan
from offload.policies.base import AR_WINDOW, LayerDecision, LayerView, Policy, PolicyContext, Prefetch, StepInfo
from offload.policies.params import DEFAULT_TAU, PolicyParams, check_bool, check_int, check_unit, knob
from offload.policies.riptide_costs import CostTables, ProxyCost
from offload.policies.riptide_stats import BlockStats, allocate_budgets
from offload.trace import KIND_DECODE, KIND_DENOISE

_EMPTY = np.zeros(0, dtype=np.int64)
# adopt a new split of the budgets only when it holds this much more value per step (relative): layers that
# route alike would otherwise trade slots on noise, and every move costs copies
REBUDGET_GAIN = 0.02
VALUE_DECAY = 0.95  # per step, for the experts' long-run value (about two blocks)


@dataclass(frozen=True)
class RiptideParams(PolicyParams):
    policy: ClassVar[str] = "riptide"
    prefetch: bool = knob(True, "copy the next step's predicted promotions asynchronously after this layer")
    cost_aware: bool = knob(True, "promote only when the CPU time saved over the expected residency beats the "
                            "unhidden copy")
    layer_budgets: bool = knob(True, "re-split the total budget across layers by marginal benefit")
    balance: bool = knob(True, "CPU share overlapped from the decision on; the costliest misses fetched while "
                         "that shortens the layer")
    carry: bool = knob(True, "placements carry across blocks")
    drift: float | None = knob(0.97, "refresh when the cosine between this step's and the last refresh's counts "
                               "falls below it; None: every tau steps")
    tau: int = knob(DEFAULT_TAU, "refresh interval when drift is None")
    cost_bound: float = knob(1.0, "re-plan a layer when its placement's regret over the block's remaining "
                                      "steps would pay for this many expert copies")
    link_share: float = knob(0.5, "prefetch window: this share of the estimated step time, less the link "
                                      "time already booked")
    min_share: float = knob(0.5, "share of its budget each layer keeps when budgets are re-split")
    ema: float = knob(0.8, "per-step decay of the smoothed counts and activity")

    def check(self) -> None:
        for flag in ("prefetch", "cost_aware", "layer_budgets", "balance", "carry"):
            check_bool(flag, getattr(self, flag))
        if self.drift is not None:
            check_unit("drift", self.drift)
        check_int("tau", self.tau)
        check_unit("cost_bound", self.cost_bound, hi=float("inf"))
        for name in ("link_share", "min_share", "ema"):
            check_unit(name, getattr(self, name))

    def params(self) -> dict[str, Any]:
        """The settings that differ from the defaults: enough to rebuild the policy, short enough for a label."""
        p = super().params()
        if self.drift is not None:
            p.pop("tau", None)  # tau only matters when refreshes are periodic
        return p


class Riptide(Policy):
    name = "riptide"
    role = "ours"
    Params = RiptideParams
    uses_cost = True

    @property
    def refresh_interval(self) -> int | None:
        return int(self.p.tau) if self.p.drift is None else None  # periodic only without the drift trigger

    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        placement = super().initial_placement(ctx)
        L, E = ctx.num_moe_layers, ctx.num_experts
        self.tab = CostTables(ctx.cost if ctx.cost is not None else ProxyCost(ctx.expert_bytes), E)
        self.stats = BlockStats(ctx.block_length)
        self.ema = np.zeros((L, E))            # smoothed counts (decay ``ema``)
        self.act = np.zeros((L, E))            # smoothed activity 1[c > 0] (decay ``ema``)
        self.value = np.zeros((L, E))          # smoothed save x 1[active], s/step (VALUE_DECAY)
        self.ref = np.zeros((L, E))            # counts at each layer's last refresh
        self.refreshed = np.zeros(L, dtype=bool)
        self.b = np.array(ctx.budget, dtype=np.int64)  # the budgets set so far (Residency holds the same)
        self.total = int(self.b.sum())
        self.target = self.b.copy()
        self.floor = max(1, int(self.p.min_share * (self.total // L)))
        self._est_layer = np.zeros(L)          # estimated MoE-expert time of each layer's last decision (s)
        self._est_link = np.zeros(L)           # its estimated synchronous link time (s)
        self._window = 0.0                     # asynchronous link time left in this step (s)
        return placement

    # ---- per step ---------------------------------------------------------------------------------------------
    def _new_step(self, step: StepInfo) -> None:
        cost, L = self.tab.cost, self.ctx.num_moe_layers
        n = np.array([step.tokens_forwarded])
        est_step = float(cost.step_fixed(n, n, n)[0] + L * cost.moe_pre(n, n)[0]) + float(self._est_layer.sum())
        self._window = max(0.0, self.p.link_share * est_step - float(self._est_link.sum()))
        # re-split at each block's first step; autoregressive decode has a block per token: every AR_WINDOW tokens
        replan = step.block % AR_WINDOW == 0 if step.kind == KIND_DECODE else step.step_in_block == 0
        if self.p.layer_budgets and step.kind in (KIND_DENOISE, KIND_DECODE) and replan and step.block >= 1:
            target = allocate_budgets(self.value, self.total, self.floor)
            held = np.cumsum(np.concatenate([np.zeros((L, 1)), -np.sort(-self.value, axis=1)], axis=1), axis=1)
            rows = np.arange(L)
            now, new = held[rows, self.b].sum(), held[rows, target].sum()
            if new - now > REBUDGET_GAIN * now:
                self.target = target

    # ---- the decision -------------------------------------------------------------------------------------------
    def decide(self, view: LayerView) -> LayerDecision:
        st, l, c = view.step, view.layer, view.counts
        if l == 0:
            self._new_step(st)
        denoise = st.kind in (KIND_DENOISE, KIND_DECODE)
        if denoise and l == 0:
            self.stats.observe(st.block)
        res = view.resident.copy()              # the residency as this decision changes it
        active = c > 0
        t_cpu, t_gpu = self.tab.times(c)
        save = t_cpu - t_gpu
        d = self.p.ema
        self.ema[l] = d * self.ema[l] + (1.0 - d) * c
        self.act[l] = d * self.act[l] + (1.0 - d) * active
        if self.p.layer_budgets:
            self.value[l] = VALUE_DECAY * self.value[l] + (1.0 - VALUE_DECAY) * np.where(active, save, 0.0)

        demote: list[np.ndarray] = []
        budget = None
        if self.p.layer_budgets and denoise and self.b[l] != self.target[l]:
            budget, shrink = self._rebudget(l, res, active, save)
            res[shrink] = False
            demote.append(shrink)
        B = int(self.b[l])

        sync_p = async_p = victims = _EMPTY
        if denoise and self._is_refresh(st, l, c, res, active, save):
            sync_p, async_p, victims = self._refresh(st, l, c, res, active, t_cpu, t_gpu, save, B)
            self.refreshed[l] = True
            self.ref[l] = c
        n_sv = max(0, sync_p.size - (B - int(res.sum())))  # synchronous ones take free slots, then victims
        demote.append(victims[:n_sv])
        res[victims[:n_sv]] = False
        res[sync_p] = True
        victims = victims[n_sv:]

        stream = keep = _EMPTY
        if self.p.balance:
            keep, stream, used, t_layer, cpu_assign = plan.balance(self.tab, c, res, t_cpu, t_gpu, B, sync_p.size,
                                                                   async_p, victims)
            if used.size:
                demote.append(used)
                res[used] = False
                victims = victims[~np.isin(victims, used)]
            if keep.size:
                res[keep] = True
                if async_p.size:
                    async_p = async_p[~np.isin(async_p, keep)]
        else:
            cpu = active & ~res
            cpu_assign = int(c[cpu].sum())
            t_layer = float(self.tab.layer_time(sync_p.size, t_gpu[active & res].sum(), t_cpu[cpu].sum(),
                                                cpu_assign, False))
        promote = np.concatenate([sync_p, keep])
        n_av = max(0, async_p.size - (B - int(np.count_nonzero(res))))
        self._account(l, t_layer, cpu_assign, promote.size + stream.size, async_p.size)
        prefetch = (Prefetch(layer=l, promote=async_p, demote=victims[:n_av]),) if async_p.size else ()
        return LayerDecision(promote=promote, demote=np.concatenate(demote), stream=stream, prefetch=prefetch,
                             overlap_cpu=self.p.balance, budget=None if budget is None else int(budget))

    # ---- parts --------------------------------------------------------------------------------------------------
    def _rebudget(self, l: int, res: np.ndarray, active: np.ndarray, save: np.ndarray) -> tuple[int, np.ndarray]:
        """Towards the target budget: shrink now (demoting the least valuable residents), or grow by what the
        other layers have handed back. Returns (new budget, experts to demote)."""
        target, cur = int(self.target[l]), int(self.b[l])
        shrink = _EMPTY
        if target < cur:
            shrink = self._victims(l, res, active, save)[: max(0, int(res.sum()) - target)]
            new = target
        else:
            new = cur + min(target - cur, self.total - int(self.b.sum()))
        self.b[l] = new
        return new, shrink

    def _victims(self, l: int, res: np.ndarray, active: np.ndarray, save: np.ndarray) -> np.ndarray:
        """Residents in eviction order: inactive ones by smoothed count ascending, then active ones by save."""
        idle, busy = np.flatnonzero(res & ~active), np.flatnonzero(res & active)
        return np.concatenate([idle[np.argsort(self.ema[l, idle], kind="stable")],
                               busy[np.argsort(save[busy], kind="stable")]])

    def _rest(self, st: StepInfo) -> float:
        """Expected denoising steps left in the block after this one."""
        return max(0.0, self.stats.n_bar - st.step_in_block - 1)

    def _is_refresh(self, st: StepInfo, l: int, c: np.ndarray, res: np.ndarray, active: np.ndarray,
                    save: np.ndarray) -> bool:
        if not self.refreshed[l] or (not self.p.carry and st.step_in_block == 0):
            return True
        if self.p.drift is None:
            return st.first_block or st.phase % self.p.tau == 0
        ref = self.ref[l]
        norm = float(np.sqrt(float(c @ c) * float(ref @ ref)))
        if norm == 0.0 or float(c @ ref) / norm < self.p.drift:
            return True
        s_act = np.where(active, save, 0.0)
        k = s_act.size - int(self.b[l])
        best = float(np.partition(s_act, k)[k:].sum()) if k > 0 else float(s_act.sum())  # the top-B savings
        return (best - float(s_act[res].sum())) * self._rest(st) > self.p.cost_bound * self.tab.copy_each

    def _refresh(self, st: StepInfo, l: int, c: np.ndarray, res: np.ndarray, active: np.ndarray, t_cpu: np.ndarray,
                 t_gpu: np.ndarray, save: np.ndarray, B: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(synchronous promotions, asynchronous promotions, victims in eviction order)."""
        window = self._window / (self.ctx.num_moe_layers - l) if self.p.prefetch else 0.0
        cap = int(np.searchsorted(self.tab.copy, window, side="right") - 1)  # copies the window holds
        if (not self.p.carry and st.step_in_block == 0) or not self.p.cost_aware:
            promote, victims = plan.tide_target(c, res, B)
        else:
            horizon = self._rest(st) * self.act[l]
            victims, n_idle, back = _EMPTY, 0, _EMPTY
            if np.count_nonzero(active & ~res) > B - int(np.count_nonzero(res)):  # some promotion needs a victim
                victims = self._victims(l, res, active, save)
                n_idle = int(np.count_nonzero(~active[victims]))
                idle = victims[:n_idle]
                t_c, t_g = self.tab.times(np.maximum(1, np.rint(self.ema[l, idle])).astype(np.int64))
                back = horizon[idle] * np.maximum(t_c - t_g, 0.0)
            promote, victims = plan.cost_aware(self.tab, c, res, t_cpu, t_gpu, B, victims, n_idle, horizon, back,
                                               cap, self.p.balance)
        n_sync = max(0, promote.size - cap)     # what does not fit the window is promoted now (the best ones)
        return promote[:n_sync], promote[n_sync:], victims

    def _account(self, l: int, t_layer: float, cpu_assign: int, n_fetch: int, n_async: int) -> None:
        """Record this decision's estimated layer time and synchronous link time (weights + the CPU's results),
        and take its asynchronous copies off the window left to later layers."""
        self._est_layer[l] = t_layer
        self._est_link[l] = float(self.tab.copy[n_fetch]) + float(self.tab.act_copies(np.array(cpu_assign))[1])
        self._window = max(0.0, self._window - float(self.tab.copy[n_async]))
