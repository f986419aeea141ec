"""The per-layer choices of ``riptide`` (:mod:`offload.policies.riptide`), as pure functions of one layer's state.

Shared arguments: ``tab`` the cost tables (:class:`~offload.policies.riptide_costs.CostTables`), ``c`` [E] this
step's token-assignment counts, ``res`` [E] bool residency, ``t_cpu``/``t_gpu`` [E] each expert's CPU/GPU
seconds at its count (0 where inactive), ``B`` the layer's budget. Times are seconds, per step of this layer.
Everything is vectorised over the layer's experts: cumulative sums over sorted candidates, no Python loop.
"""
from __future__ import annotations

import numpy as np

from offload.policies.baselines import top_b
from offload.policies.riptide_costs import CostTables

_EMPTY = np.zeros(0, dtype=np.int64)


def _cs(a: np.ndarray) -> np.ndarray:
    """[0, a0, a0 + a1, ...]: prefix sums (in a's dtype: counts stay integers), _cs(a)[j] = sum of the first j."""
    out = np.zeros(a.size + 1, dtype=a.dtype)
    np.cumsum(a, out=out[1:])
    return out


def tide_target(c: np.ndarray, res: np.ndarray, B: int) -> tuple[np.ndarray, np.ndarray]:
    """TIDE's refresh: promote the top-B experts by count (count > 0) that are not resident, busiest first;
    victims = resident non-targets by ascending id, only as many as the promotions need slots for."""
    target = np.zeros_like(res)
    target[top_b(c, B)] = True
    promote = np.flatnonzero(target & ~res)
    promote = promote[np.argsort(-c[promote], kind="stable")]
    free = B - int(res.sum())
    return promote, np.flatnonzero(res & ~target)[: max(0, promote.size - free)]


def _cs3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Prefix sums of three equal-length rows at once: [3, n + 1] (one cumsum instead of three)."""
    out = np.zeros((3, a.size + 1))
    np.cumsum(np.stack((a, b, c)), axis=1, out=out[:, 1:])
    return out


def cost_aware(tab: CostTables, c: np.ndarray, res: np.ndarray, t_cpu: np.ndarray, t_gpu: np.ndarray, B: int,
               victims: np.ndarray, n_idle: int, horizon: np.ndarray, back: np.ndarray, cap: int,
               overlap: bool) -> tuple[np.ndarray, np.ndarray]:
    """The promotions that pay, and the victims they evict (a prefix of ``victims``).

    Candidates: active misses by save = t_cpu - t_gpu, descending. Promotion i takes a free slot or the next
    victim (``victims``: the ``n_idle`` inactive residents first, then active ones); with Tf(j) the layer time
    after j promotions (no fetch; active victims' work moves to the CPU), horizon[e] the steps expert e is
    expected to keep paying for, back[i] what the i-th inactive victim is expected to cost on the CPU over its
    own horizon:

        gain(j) = sum_{i<j} horizon_i (Tf(i) - Tf(i+1)) - sum_{inactive victims of j} back
        now(j)  = Tnow(j - min(j, cap)) - Tf(0)     the first j - cap promotions are fetched now (synchronous),
                                                    the last ``cap`` fit the asynchronous window: free
        j* = argmax_j gain(j) - now(j), kept only when > 0.
    """
    active = c > 0
    miss = active & ~res
    cand = np.flatnonzero(miss)
    free = max(0, B - int(np.count_nonzero(res)))
    jmax = min(cand.size, free + victims.size)
    if jmax == 0:
        return _EMPTY, _EMPTY
    cand = cand[np.argsort(t_gpu[cand] - t_cpu[cand], kind="stable")[:jmax]]
    pc = _cs3(t_gpu[cand], t_cpu[cand], c[cand])
    j = np.arange(jmax + 1)
    nv = np.maximum(j - free, 0)             # victims j promotions need
    gpu_s = t_gpu[active & res].sum() + pc[0]
    cpu_s = t_cpu[miss].sum() - pc[1]
    assign = c[miss].sum() - pc[2]
    if nv[-1] > n_idle:                      # some active victims: their work moves to the CPU
        busy = victims[n_idle:]
        pv = _cs3(t_gpu[busy], t_cpu[busy], c[busy])
        nav = np.maximum(nv - n_idle, 0)
        gpu_s, cpu_s, assign = gpu_s - pv[0, nav], cpu_s + pv[1, nav], assign + pv[2, nav]
    assign = np.rint(assign).astype(np.int64)
    tf = tab.layer_time(0, gpu_s, cpu_s, assign, overlap)
    gain = _cs(horizon[cand] * (tf[:-1] - tf[1:]))
    if n_idle and free < jmax:
        gain -= _cs(back[:n_idle])[np.minimum(nv, n_idle)]
    n_sync = np.maximum(j - cap, 0)
    net = gain - (tab.layer_time(n_sync, gpu_s[n_sync], cpu_s[n_sync], assign[n_sync], overlap) - tf[0])
    best = int(np.argmax(net))               # the first maximum: the fewest copies among equals
    if net[best] <= 0:
        return _EMPTY, _EMPTY
    return cand[:best], victims[: int(nv[best])]


def balance(tab: CostTables, c: np.ndarray, res: np.ndarray, t_cpu: np.ndarray, t_gpu: np.ndarray, B: int,
            n_fetched: int, pending: np.ndarray,
            victims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, int]:
    """Fetch the costliest misses while the layer gets shorter; returns (kept, streamed, victims used, the
    layer's time, its CPU token-assignments).

    Misses by t_cpu descending; fetching the first k with ``n_fetched`` promotions already being copied:
        k* = argmin_k Tnow(k),  Tnow = max(copy(F) + G, max(d2h + C, copy(F)) + h2d)   (overlap_cpu)
    Fetched experts are kept (promoted) where that costs nothing: a ``pending`` (asynchronous) promotion takes a
    free slot or an inactive victim's slot (it was to be copied anyway, and now also serves this step); any
    other takes only a free slot the pending ones do not need. The rest are streamed (used, then dropped)."""
    active = c > 0
    miss = np.flatnonzero(active & ~res)
    gpu0 = float(t_gpu[active & res].sum())
    miss = miss[np.argsort(-t_cpu[miss], kind="stable")]
    p = _cs3(t_gpu[miss], t_cpu[miss], c[miss])
    assign = np.rint(p[2, -1] - p[2]).astype(np.int64)
    t_now = tab.layer_time(n_fetched + np.arange(miss.size + 1), gpu0 + p[0], p[1, -1] - p[1], assign, True)
    k = int(np.argmin(t_now))                # the first minimum: the fewest copies among equally fast splits
    if k == 0:
        return _EMPTY, _EMPTY, _EMPTY, float(t_now[0]), int(assign[0])
    fetch = miss[:k]
    free = max(0, B - int(np.count_nonzero(res)))
    used = _EMPTY
    if pending.size:
        is_pending = np.isin(fetch, pending)
        pend, other = fetch[is_pending], fetch[~is_pending]
        idle_victims = victims[~active[victims]]
        n_p = min(pend.size, free + idle_victims.size)
        used = idle_victims[: max(0, n_p - free)]
        free -= min(n_p, free)
        n_o = min(other.size, max(0, free - (pending.size - n_p)))
        keep = np.concatenate([pend[:n_p], other[:n_o]])
        stream = np.concatenate([pend[n_p:], other[n_o:]])
    else:
        keep, stream = fetch[:free], fetch[free:]
    return np.sort(keep), np.sort(stream), used, float(t_now[k]), int(assign[k])
