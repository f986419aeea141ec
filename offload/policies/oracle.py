"""``oracle``: a clairvoyant policy (``causal = False``: simulator only; the runtime refuses it).

It reads the whole trace (``ctx.trace``) and the cost model (``ctx.cost``), and mirrors the engine's clock, so
at every (step s, MoE layer l) it knows exactly when the GPU, the CPU and each copy engine come free. The mirror
is exact for an executor that copies streamed experts as one batch with the promotions (``staging_slots`` 0), no
shared host DRAM and no host-thread charges; under other executors (the default ``tide-moe`` streams through
staging slots) its plans are timed by the engine as usual but chosen on that simpler clock. It is a clairvoyant
heuristic, not an upper bound on throughput: ``sim.bound`` gives the true lower bound on time.

Value of residency. An active expert with n token-assignments costs, if it is not on the GPU, (seconds)

  v(n) = T_cpu(n) + n * token_bytes * (1 / BW_d2h + 1 / BW_h2d) - T_gpu(n)       (v(0) = 0)

and the discounted future value of keeping expert e of layer l resident from step s on is

  W[s, l, e] = v(c[s, l, e]) + gamma * W[s + 1, l, e]                              (gamma = ``discount``)

which orders experts both by how soon and how much they are needed (Belady's next use when all v are equal).

One decision, in the engine's order (see :mod:`sim.engine`):

1. Layer plan, chosen with hindsight: the overlapped split (as ``riptide``'s ``balance``, but timed on the
   mirrored clock). The active experts that are not resident are sorted by CPU cost (the costliest first; among
   equals, the most tokens); the k first of them are fetched synchronously (promoted into a free slot or over a
   resident of lower future value, else streamed), the rest run on the CPU, whose path starts at the decision
   (``overlap_cpu``) concurrently with the weight copy, as :mod:`sim.engine` runs it. The layer's end time is
   evaluated for every k = 0..K in one vectorised pass (per-expert marginal times: exact for costs that are a
   sum over experts plus a constant per non-empty batch, as both cost models in :mod:`offload.cost` are; the chosen
   plan is then re-timed exactly), with t the decision time and ``link`` the end of the queued prefetches:

     fetch(k) = max(t, link) + T_h2d(k * expert_bytes)               (t, and the link stays at link, if k = 0)
     start(k) = max(fetch(k), arrival of in-flight prefetches this layer uses)
     d2h(k)   = max(t, D2H engine) + T_d2h(act)                      (shared-duplex link: max(t, link after
                                                                      the weights), it queues behind them)
     h2d(k)   = max(max(d2h(k), CPU pool) + T_cpu(rest), link after the weights [and D2H]) + T_h2d(act)
     end(k)   = max(start(k) + T_gpu(hits + k first), h2d(k))      (start + T_gpu when no CPU share)

   and the argmin is taken: per layer and step, the best of all-CPU (k = 0), all-fetch (k = K) and every split
   in between -- which includes the split a causal policy fetching the costliest misses can choose.
2. Prefetch for the same layer at the next step, issued once this layer ran (so the slot is free: a prefetched
   expert holds its slot from issue, and is usable when its copy lands). Candidates, best W[s + 1] first:
   (a) experts needed at step s + 1 replace free slots (value 0), then residents of lower W[s + 1];
   (b) experts needed only later replace free slots or residents of lower W[s + 1] that are not needed
       sooner than they are (NU = next use; Belady-safe: nothing needed at s + 1 is evicted for later use).
   As many as the link can carry before it is needed again: the queue must drain by the time the next layer
   with CPU work sends its activations back (FIFO link: they would queue behind it) and before this layer's
   next use, both estimated on the mirrored clock as pre + max(GPU experts, CPU path) per layer position on
   the current residencies. Experts whose copy is still in flight are never evicted.

Initial placement (free, before timing): the B experts of each layer with the highest W[0].

It is an upper bound in practice, not by proof: each layer-step takes the best of its candidate plans, but the
prefetch schedule is a heuristic, and it keeps the uniform per-layer budget (no ``LayerDecision.budget``
re-partition, which riptide may use). tests/sim/test_oracle.py checks that it is never slower than any causal
policy (cpu-route, fetch-lru, tide at every tau, tide-opt, riptide) on synthetic and random traces over several
machines and budgets, and that the mirrored clock equals the engine's.

Cost of one replay: backward passes over the trace for W and NU ([S + 1, L, E] each), then per decision
O(E + L x E) numpy work: about 3 s for LLaDA2.0-mini, gen length 1024 (the engine itself about 0.6 s).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from offload.errors import TideError
from offload.policies.base import LayerDecision, LayerView, Policy, PolicyContext, Prefetch, ids
from offload.policies.params import PolicyParams, check_unit, knob


def _leading(ok: np.ndarray) -> int:
    """Length of the leading run of True."""
    return int(np.argmin(np.append(ok, False)))


def expert_value(cost: Any, max_count: int) -> np.ndarray:
    """v(n) for n = 0..max_count (seconds saved per step by having an expert with n assignments resident)."""
    n = np.arange(max_count + 1)
    col = n[:, None]
    per_byte = float(cost.h2d(1e9) - cost.h2d(5e8) + cost.d2h(1e9) - cost.d2h(5e8)) / 5e8
    v = np.asarray(cost.cpu_experts(col)) - np.asarray(cost.gpu_experts(col)) + n * int(cost.token_bytes) * per_byte
    return np.where(n > 0, np.maximum(v, 1e-12), 0.0)  # resident never loses; keeps the ordering strict


@dataclass(frozen=True)
class OracleParams(PolicyParams):
    policy: ClassVar[str] = "oracle"
    discount: float = knob(0.8, "gamma in W[s] = v(c[s]) + gamma W[s + 1]: the value of keeping an expert "
                              "resident, future steps discounted")

    def check(self) -> None:
        check_unit("discount", self.discount, closed=False)


class Oracle(Policy):
    """Clairvoyant upper bound for a budget and machine (see the module docstring)."""

    name = "oracle"
    role = "clairvoyant"
    causal = False
    Params = OracleParams
    uses_cost = True

    # ---- set-up --------------------------------------------------------------------------------------------
    def initial_placement(self, ctx: PolicyContext) -> np.ndarray:
        tr, cost = ctx.trace, ctx.cost
        if tr is None or cost is None:
            raise TideError("policy oracle needs the whole trace and a cost model (simulator only)")
        counts = np.asarray(tr.counts)
        S, L, E = counts.shape
        v = expert_value(cost, int(counts.max(initial=0)))
        self.W = np.zeros((S + 1, L, E), dtype=np.float32)  # W[S] = 0: nothing after the last step
        for s in range(S - 1, -1, -1):
            np.multiply(self.W[s + 1], self.p.discount, out=self.W[s])
            self.W[s] += v[counts[s]]
        self.NU = np.full((S + 1, L, E), S, dtype=np.int32)  # next use: first step >= s with a count (S: never)
        for s in range(S - 1, -1, -1):
            self.NU[s] = np.where(counts[s] > 0, s, self.NU[s + 1])
        seqs = tr.sequences
        self.step_fixed = np.asarray(cost.step_fixed(tr.tokens_forwarded, tr.context_tokens, tr.lm_tokens, seqs), float)
        self.pre = np.asarray(cost.moe_pre(tr.tokens_forwarded, tr.context_tokens, seqs), dtype=np.float64)
        self.cost, self.eb, self.tb = cost, int(cost.expert_bytes), int(cost.token_bytes)
        self.shared = bool(cost.shared_duplex)
        self.copy_lat = float(cost.h2d(self.eb)) - self._copy_marginal()
        # GPU expert batch: f(x) = sum_e f1(x_e) + C when any x_e > 0; f1 marginal via a pair with a 1-count
        one, two = float(cost.gpu_experts(np.array([1]))), float(cost.gpu_experts(np.array([1, 1])))
        self.gpu_batch, self.gpu_one = 2 * one - two, one
        # mirrored clock: GPU stream, copy engines, CPU pool; arrival of each prefetched expert
        self.t = self.link = self.d2h = self.cpu = 0.0
        self.arrival = np.zeros((L, E))
        self.res_all = np.zeros((L, E), dtype=bool)  # residency as this policy left it, per layer
        placement = np.zeros((L, E), dtype=bool)
        for layer, b in enumerate(ctx.budget):
            placement[layer, np.argsort(-self.W[0, layer], kind="stable")[: int(b)]] = True
        self.res_all[:] = placement
        return placement

    def _copy_marginal(self) -> float:
        return max(float(self.cost.h2d(2 * self.eb) - self.cost.h2d(self.eb)), 1e-12)

    # ---- per decision --------------------------------------------------------------------------------------
    def decide(self, view: LayerView) -> LayerDecision:
        s, layer = view.step.index, view.layer
        if layer == 0:
            self.t += self.step_fixed[s]
        self.t += self.pre[s]
        counts, res = view.counts, view.resident.copy()
        promote, demote, stream = self._plan(s, layer, counts, res)
        res[demote] = False
        res[promote] = True
        self.res_all[layer] = res
        prefetch = self._prefetch(s, layer, res)
        return LayerDecision(promote=promote, demote=demote, stream=stream, overlap_cpu=True, prefetch=prefetch)

    def _layer_end(self, k: np.ndarray, gpu_t: np.ndarray, cpu_t: np.ndarray, act: np.ndarray,
                   wait: float) -> tuple[np.ndarray, ...]:
        """Mirrored engine times of one layer for plans fetching k experts: (end, fetch end, D2H end, CPU end,
        H2D end), vectorised over plans. As :mod:`sim.engine` runs a decision with ``overlap_cpu``: the weight
        copy is requested at the decision (behind the prefetches on the H2D engine), the CPU path's D2H at the
        same moment (on a shared-duplex link: behind the weight copy), and its results queue behind both."""
        cost, t = self.cost, self.t
        fetch = np.where(k > 0, max(t, self.link) + np.asarray(cost.h2d(k * self.eb)), t)
        start = np.maximum(fetch, wait)
        link = np.where(k > 0, fetch, self.link)      # the H2D engine, free after the weights
        d2h_e = np.maximum(t, link if self.shared else self.d2h) + np.asarray(cost.d2h(act))
        if self.shared:
            link = np.where(act > 0, d2h_e, link)
        cpu_e = np.maximum(d2h_e, self.cpu) + cpu_t
        h2d_e = np.maximum(cpu_e, link) + np.asarray(cost.h2d(act))
        end = np.where(act > 0, np.maximum(start + gpu_t, h2d_e), start + gpu_t)
        return end, fetch, d2h_e, cpu_e, h2d_e

    def _plan(self, s: int, layer: int, counts: np.ndarray, res: np.ndarray) -> tuple[np.ndarray, ...]:
        """Step 1 of the module docstring: choose k, then which of the k to promote or stream; advance the clock."""
        cost, t = self.cost, self.t
        active = counts > 0
        hit_mask = active & res
        miss = np.flatnonzero(active & ~res)
        # the costliest on the CPU first; among equals, the most tokens (the most activation copies saved)
        c_all = np.asarray(cost.cpu_experts(counts[miss].astype(np.int64)[:, None])).reshape(-1)
        miss = miss[np.lexsort((-counts[miss], -c_all))]
        K = miss.size
        wait = float(self.arrival[layer, hit_mask].max(initial=0.0))
        hits = np.where(hit_mask, counts, 0)
        mc = counts[miss].astype(np.int64)
        k = np.arange(K + 1)
        if K:
            pair = np.stack([mc, np.ones_like(mc)], axis=1)
            g_each = np.asarray(cost.gpu_experts(pair)) - self.gpu_one
            c_each = np.asarray(cost.cpu_experts(mc[:, None]))
            g_hits = float(cost.gpu_experts(hits))
            gpu_t = g_hits + np.concatenate([[0.0], np.cumsum(g_each)])
            if not hit_mask.any():  # the batch's constant is paid once there is any expert
                gpu_t[1:] += self.gpu_batch
            cpu_t = np.concatenate([np.cumsum(c_each[::-1])[::-1], [0.0]])
            act = np.concatenate([np.cumsum(mc[::-1])[::-1], [0]]) * self.tb
            best = int(np.argmin(self._layer_end(k, gpu_t, cpu_t, act, wait)[0]))
        else:
            best = 0
        # exact timing of the chosen plan, to keep the mirrored clock equal to the engine's
        fetched = miss[:best]
        g_counts = hits.copy()
        g_counts[fetched] = counts[fetched]
        c_counts = np.where(active & ~res, counts, 0)
        c_counts[fetched] = 0
        n_cpu = int(c_counts.sum())
        end, fetch, d2h_e, cpu_e, h2d_e = (float(x) for x in self._layer_end(
            np.array(best), np.asarray(cost.gpu_experts(g_counts)), np.asarray(cost.cpu_experts(c_counts)),
            np.array(n_cpu * self.tb), wait))
        self.t = end
        if n_cpu:
            self.d2h = d2h_e if not self.shared else self.d2h
            self.cpu, self.link = cpu_e, h2d_e
        elif best:
            self.link = fetch
        if best == 0:
            return ids([]), ids([]), ids([])
        # promote into free slots or over residents of lower future value; stream the rest
        w_next = self.W[s + 1, layer]
        fetched = fetched[np.argsort(-w_next[fetched], kind="stable")]
        free = int(self.ctx.budget[layer]) - int(res.sum())
        evictable = np.flatnonzero(res & ~active & (self.arrival[layer] <= t))
        evictable = evictable[np.argsort(w_next[evictable], kind="stable")]
        n_free = min(max(free, 0), best)
        rest = fetched[n_free:]
        m = min(rest.size, evictable.size)
        better = np.flatnonzero(~(w_next[rest[:m]] > w_next[evictable[:m]]))
        m = int(better[0]) if better.size else m
        self.arrival[layer, fetched] = 0.0
        return ids(fetched[: n_free + m]), ids(evictable[:m]), ids(rest[m:])

    def _link_deadline(self, s: int, layer: int, res: np.ndarray) -> float:
        """When the link must be free again: the estimated time the next layer with CPU work (in the coming
        L layer positions, up to this layer at step s + 1) sends its activations back, or else when this layer
        starts at step s + 1. Layers are timed as pre + max(GPU experts, CPU path) on current residencies."""
        L = self.res_all.shape[0]
        pos = np.arange(layer + 1, layer + 1 + L)
        steps, layers = s + pos // L, pos % L
        counts = self.ctx.trace.counts[steps, layers]                                  # [L, E]
        resident = self.res_all[layers]
        miss = np.where(resident, 0, counts)
        act = miss.sum(axis=1) * self.tb
        cost = self.cost
        cpu_path = np.asarray(cost.d2h(act)) + np.asarray(cost.cpu_experts(miss))
        gpu = np.asarray(cost.gpu_experts(np.where(resident, counts, 0)))
        pre = self.pre[steps] + np.where(layers == 0, self.step_fixed[steps], 0.0)
        dur = pre + np.maximum(gpu, cpu_path + np.asarray(cost.h2d(act)))
        begin = self.t + np.concatenate([[0.0], np.cumsum(dur[:-1])]) + pre              # experts start
        need = begin + np.where(act > 0, cpu_path, np.inf)
        need[-1] = min(need[-1], begin[-1])                                              # this layer's own use
        return float(need.min())

    def _prefetch(self, s: int, layer: int, res: np.ndarray) -> tuple[Prefetch, ...]:
        """Step 2 of the module docstring: swaps for this layer at the next step, within the link's share."""
        if s + 1 >= self.W.shape[0] - 1:
            return ()
        start = max(self.t, self.link)
        room = self._link_deadline(s, layer, res) - start
        # 1e-9: a copy that fits exactly must not be lost to rounding
        n_cap = int((room - self.copy_lat) / self._copy_marginal() + 1e-9) if room > self.copy_lat else 0
        if n_cap <= 0:
            return ()
        w, nu, nxt = self.W[s + 1, layer], self.NU[s + 1, layer], s + 1
        outside = np.flatnonzero(~res & (w > 0))
        outside = outside[np.argsort(-w[outside], kind="stable")]
        soon, later = outside[nu[outside] == nxt], outside[nu[outside] > nxt]
        free = max(int(self.ctx.budget[layer]) - int(res.sum()), 0)
        inside = np.flatnonzero(res & (self.arrival[layer] <= self.t))
        inside = inside[np.argsort(w[inside], kind="stable")]
        # (a) experts needed at s + 1: over free slots, then residents of lower future value
        victims = np.concatenate([np.zeros(free), w[inside]])
        m = min(soon.size, victims.size, n_cap)
        n_a = _leading(w[soon[:m]] > victims[:m])
        # (b) experts needed later: only over free slots or residents needed no sooner (Belady-safe)
        left_free = free - min(n_a, free)
        rest = inside[max(n_a - free, 0):]
        rest = rest[nu[rest] > nxt]
        v_val = np.concatenate([np.zeros(left_free), w[rest]])
        v_nu = np.concatenate([np.full(left_free, np.iinfo(np.int32).max), nu[rest]])
        m = min(later.size, v_val.size, n_cap - n_a)
        n_b = _leading((w[later[:m]] > v_val[:m]) & (nu[later[:m]] <= v_nu[:m]))
        promote = np.concatenate([soon[:n_a], later[:n_b]])
        demote = np.concatenate([inside[: max(n_a - free, 0)], rest[: max(n_b - left_free, 0)]])
        n = promote.size
        if n == 0:
            return ()
        self.link = start + float(self.cost.h2d(n * self.eb))
        self.arrival[layer, promote] = self.link
        self.res_all[layer, promote] = True
        self.res_all[layer, demote] = False
        return (Prefetch(layer=layer, promote=ids(promote), demote=ids(demote)),)
