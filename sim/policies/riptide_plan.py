"""The per-layer choices of ``riptide`` (:mod:`sim.policies.riptide`), as pure functions of one layer's state.

Shared arguments: ``tab`` the cost tables (:class:`~sim.policies.riptide_costs.CostTables`), ``c`` [E] this
step's token-assignment counts, ``res`` [E] bool residency, ``t_cpu``/``t_gpu`` [E] each expert's CPU/GPU
seconds at its count (0 where inactive), ``B`` the layer's budget. Times are seconds, per step of this layer.
Everything is vectorised over the layer's experts: cumulative sums over sorted candidates, no Python loop.
"""
from __future__ import annotations

import numpy as np

from sim.policies.baselines import top_b
from sim.policies.riptide_costs import CostTables

_EMPTY = np.zeros(0, dtype=np.int64)


def _cs(a: np.ndarray) -> np.ndarray:
    """[0, a0, a0 + a1, ...]: prefix sums, so _cs(a)[j] is the sum of the first j."""
    return np.concatenate([[0.0], np.cumsum(a, dtype=np.float64)])


def tide_target(c: np.ndarray, res: np.ndarray, B: int) -> tuple[np.ndarray, np.ndarray]:
    """TIDE's refresh: promote the top-B experts by count (count > 0) that are not resident, busiest first;
    victims = resident non-targets by ascending id, only as many as the promotions need slots for."""
    target = np.zeros_like(res)
    target[top_b(c, B)] = True
    promote = np.flatnonzero(target & ~res)
    promote = promote[np.argsort(-c[promote], kind="stable")]
    free = B - int(res.sum())
    return promote, np.flatnonzero(res & ~target)[: max(0, promote.size - free)]


def cost_aware(tab: CostTables, c: np.ndarray, res: np.ndarray, t_cpu: np.ndarray, t_gpu: np.ndarray, B: int,
               victims: np.ndarray, horizon: np.ndarray, back: np.ndarray, cap: int,
               overlap: bool) -> tuple[np.ndarray, np.ndarray]:
    """The promotions that pay, and the victims they evict (in ``victims`` order).

    Candidates: active misses by save = t_cpu - t_gpu, descending. Promotion i takes a free slot or the next
    victim (``victims``: inactive residents first, then active ones); with Tf(j) the layer time after j
    promotions (no fetch; active victims' work moves to the CPU), horizon[e] the steps expert e is expected to
    keep paying for, back[v] what an inactive victim v is expected to cost on the CPU over its own horizon:

        gain(j) = sum_{i<j} horizon_i (Tf(i) - Tf(i+1)) - sum_{inactive victims of j} back_v
        now(j)  = Tnow(j - min(j, cap)) - Tf(0)     the first j - cap promotions are fetched now (synchronous),
                                                    the last ``cap`` fit the asynchronous window: free
        j* = argmax_j gain(j) - now(j), kept only when > 0.
    """
    active = c > 0
    cand = np.flatnonzero(active & ~res)
    cand = cand[np.argsort(-(t_cpu - t_gpu)[cand], kind="stable")]
    free = max(0, B - int(res.sum()))
    jmax = min(cand.size, free + victims.size)
    if jmax == 0:
        return _EMPTY, _EMPTY
    n_idle = int((~active[victims]).sum())  # victims are ordered inactive first
    j = np.arange(jmax + 1)
    nv = np.maximum(0, j - free)             # victims j promotions need
    nav = np.maximum(0, nv - n_idle)         # of which active
    busy = victims[n_idle:]
    on, miss = active & res, active & ~res
    gpu_s = t_gpu[on].sum() + _cs(t_gpu[cand])[j] - _cs(t_gpu[busy])[nav]
    cpu_s = t_cpu[miss].sum() - _cs(t_cpu[cand])[j] + _cs(t_cpu[busy])[nav]
    assign = c[miss].sum() - _cs(c[cand])[j] + _cs(c[busy])[nav]
    tf = tab.layer_time(0, gpu_s, cpu_s, assign, overlap)
    gain = _cs(horizon[cand[:jmax]] * (tf[:-1] - tf[1:])) - _cs(back[victims[:n_idle]])[np.minimum(nv, n_idle)]
    n_sync = np.maximum(0, j - cap)
    now = tab.layer_time(n_sync, gpu_s[n_sync], cpu_s[n_sync], assign[n_sync], overlap) - tf[0]
    net = gain - now
    best = int(np.argmax(net))               # the first maximum: the fewest copies among equals
    if net[best] <= 0:
        return _EMPTY, _EMPTY
    return cand[:best], victims[: int(nv[best])]


def balance(tab: CostTables, c: np.ndarray, res: np.ndarray, t_cpu: np.ndarray, t_gpu: np.ndarray, B: int,
            n_fetched: int, pending: np.ndarray, victims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fetch the costliest misses while the layer gets shorter; returns (kept, streamed, victims used).

    Misses by t_cpu descending; fetching the first k with ``n_fetched`` promotions already being copied:
        k* = argmin_k Tnow(k),  Tnow = max(copy(F) + G, max(d2h + C, copy(F)) + h2d)   (overlap_cpu)
    Fetched experts are kept (promoted) where that costs nothing: a ``pending`` (asynchronous) promotion takes a
    free slot or an inactive victim's slot (it was to be copied anyway, and now also serves this step); any
    other takes only a free slot the pending ones do not need. The rest are streamed (used, then dropped)."""
    active = c > 0
    miss = np.flatnonzero(active & ~res)
    if miss.size == 0:
        return _EMPTY, _EMPTY, _EMPTY
    miss = miss[np.argsort(-t_cpu[miss], kind="stable")]
    on = active & res
    k = np.arange(miss.size + 1)
    t_now = tab.layer_time(n_fetched + k, t_gpu[on].sum() + _cs(t_gpu[miss]), t_cpu[miss].sum() - _cs(t_cpu[miss]),
                           c[miss].sum() - _cs(c[miss]), True)
    fetch = miss[: int(np.argmin(t_now))]    # the first minimum: the fewest copies among equally fast splits
    if fetch.size == 0:
        return _EMPTY, _EMPTY, _EMPTY
    free = max(0, B - int(res.sum()))
    is_pending = np.isin(fetch, pending)
    pend, other = fetch[is_pending], fetch[~is_pending]
    idle_victims = victims[~active[victims]]
    n_p = min(pend.size, free + idle_victims.size)
    used = idle_victims[: max(0, n_p - free)]
    free -= min(n_p, free)
    n_o = min(other.size, max(0, free - (pending.size - n_p)))
    keep = np.sort(np.concatenate([pend[:n_p], other[:n_o]]))
    stream = np.sort(np.concatenate([pend[n_p:], other[n_o:]]))
    return keep, stream, used
