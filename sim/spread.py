"""How much an answer depends on the trace: results over several synthetic trace draws, as medians and ranges.

No real LLaDA2 trace can be recorded here, so ``sim.explore --seeds N`` (and a study's ``seeds``) replays N
synthetic traces per mode. Draw 0 is the calibrated generator with the run's seed; draw i >= 1 has seed + i and
the generator's uncertain parameters drawn within their calibration tolerance (``traces.synthetic_draws``). A
row carries its draw in ``tags["draw"]``. Per mode and policy (tau policies at their best tau *per draw*):

  tokens/s            median over draws, and [min, max]
  vs base             per draw: tokens/s / the best baseline's (a policy of a BASELINE_ROLES role) of that draw;
                      median and [min, max] of those ratios
  wins                the share of draws in which this (policy, mode) is the fastest eligible run

The recommendation is the (policy, mode) with the highest median tokens/s among the eligible runs, and the policy
file records its median, its range and its share of wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from offload.policies import BASELINE_ROLES, role_of, sweeps_tau, with_role
from offload.results import SimRecord


@dataclass(frozen=True)
class Spread:
    """One (mode, policy) over the draws: the best row of each draw (best tau for tau policies)."""

    mode: str
    policy: str
    rows: tuple[SimRecord, ...]      # one per draw, in draw order
    vs_base: tuple[float, ...]       # per draw, tokens/s over the best baseline of that draw (nan: none)

    @property
    def tokens_per_s(self) -> np.ndarray:
        return np.array([r.tokens_per_s for r in self.rows])

    @property
    def label(self) -> str:
        labels = {r.label for r in self.rows}
        return labels.pop() if len(labels) == 1 else self.policy + " best"


def draw_of(r: SimRecord) -> int:
    return int(r.tags.get("draw", 0))


def best(rows: Iterable[SimRecord], *policies: str) -> SimRecord | None:
    """The fastest of ``rows`` run by one of ``policies`` (a tau policy at its best tau); None when none is."""
    return max((r for r in rows if r.policy in policies), key=lambda r: r.tokens_per_s, default=None)


def best_baseline(rows: Iterable[SimRecord]) -> SimRecord | None:
    """The fastest row of a baseline (``offload.policies.BASELINE_ROLES``)."""
    return best(rows, *with_role(*BASELINE_ROLES))


def bound_row(rows: Iterable[SimRecord]) -> SimRecord | None:
    """The first row that carries the bound of the rows' budget (``sim.bound``; the ceiling's row is bounded with
    every expert resident, so it does not count)."""
    return next((r for r in rows if role_of(r.policy) != "ceiling" and r.bound_tokens_per_s), None)


def bound_of(rows: Iterable[SimRecord]) -> float | None:
    """The bound of these rows' budget in tokens/s (None: not computed)."""
    r = bound_row(rows)
    return r.bound_tokens_per_s if r else None


def spreads(rows: Sequence[SimRecord]) -> list[Spread]:
    """Per mode and policy, each draw's best row and its ratio to that draw's best baseline."""
    out = []
    for mode in dict.fromkeys(r.mode for r in rows):
        in_mode = [r for r in rows if r.mode == mode]
        draws = sorted({draw_of(r) for r in in_mode})
        by_draw = {d: [r for r in in_mode if draw_of(r) == d] for d in draws}
        base = {d: getattr(best_baseline(rs), "tokens_per_s", float("nan")) for d, rs in by_draw.items()}
        for policy in dict.fromkeys(r.policy for r in in_mode):
            top = [b for b in (best(by_draw[d], policy) for d in draws) if b is not None]
            out.append(Spread(mode, policy, tuple(top), tuple(r.tokens_per_s / base[draw_of(r)] for r in top)))
    return out


def bound_per_draw(rows: Sequence[SimRecord]) -> np.ndarray:
    """Each draw's bound in tokens/s (``sim.bound``, on the budget's rows), for the draws that have one."""
    bounds = (bound_of([r for r in rows if draw_of(r) == d]) for d in sorted({draw_of(r) for r in rows}))
    return np.array([b for b in bounds if b], dtype=float)


def median_range(v: Sequence[float], fmt: str) -> str:
    v = np.asarray(v, dtype=float)
    if v.size < 2:
        return format(float(np.median(v)), fmt)
    return f"{format(float(np.median(v)), fmt)} [{format(float(v.min()), fmt)}-{format(float(v.max()), fmt)}]"


def recommend(rows: Sequence[SimRecord], eligible: Callable[[SimRecord], bool]) -> tuple[Spread | None, float]:
    """The eligible (policy, mode) with the highest median tokens/s, and its share of per-draw wins; (None, 0)
    when no run is eligible. A tau policy counts as one candidate at its best tau per draw, as in the table."""
    every = spreads(rows)
    cands = [s for s in every if all(eligible(r) for r in s.rows)]
    if not cands:
        return None, 0.0
    winner = max(cands, key=lambda s: float(np.median(s.tokens_per_s)))
    draws = sorted({draw_of(r) for r in rows})
    wins = 0
    for d in draws:
        top = max(cands, key=lambda s: max((r.tokens_per_s for r in s.rows if draw_of(r) == d), default=-1.0))
        wins += top is winner
    return winner, wins / len(draws)


def recommendation(rows: Sequence[SimRecord], eligible: Callable[[SimRecord], bool]
                   ) -> tuple[SimRecord, dict[str, float]] | None:
    """The recommended run (``recommend``) as its most frequent per-draw best row, with the predicted figures:
    its median tokens/s, their range, its hit ratio, its share of draws won and the draws; None: nothing eligible."""
    best, wins = recommend(rows, eligible)
    if best is None:
        return None
    labels = [r.label for r in best.rows]
    row = next(r for r in best.rows if r.label == max(set(labels), key=labels.count))
    tps = best.tokens_per_s
    return row, {"tokens_per_s": float(np.median(tps)), "tokens_per_s_min": float(tps.min()),
                 "tokens_per_s_max": float(tps.max()), "hit_ratio": row.counters.hit_ratio, "wins_share": wins,
                 "trace_draws": len(tps)}


def eligible(r: SimRecord, ceiling: bool = False) -> bool:
    """Whether ``r`` may be recommended: the runtime can execute it (not clairvoyant), and the ceiling (which
    keeps every expert) only where ``ceiling``: the budget is every expert and they fit the GPU."""
    return r.causal and (ceiling or role_of(r.policy) != "ceiling")


def spread_table(rows: Sequence[SimRecord]) -> str:
    """Per mode: every policy's median tokens/s and ratio to the best baseline with their ranges over draws."""
    lines = []
    n = len({draw_of(r) for r in rows})
    for mode in dict.fromkeys(r.mode for r in rows):
        lines.append(f"\n{mode}: median [min-max] over {n} trace draws (seed and generator parameters)")
        lines.append(f"  {'policy':<24}{'tokens/s':>24}{'vs best baseline':>26}{'hit':>7}")
        for s in (s for s in spreads(rows) if s.mode == mode):
            taus = sorted({r.tau for r in s.rows}) if sweeps_tau(s.policy) else []
            label = s.label + (f" (tau {'/'.join(map(str, taus))})" if len(taus) > 1 else "")
            hit = float(np.median([r.counters.hit_ratio for r in s.rows]))
            lines.append(f"  {label:<24}{median_range(s.tokens_per_s, '.1f'):>24}{median_range(s.vs_base, '.2f'):>26}{hit:>7.3f}")
        bounds = bound_per_draw([r for r in rows if r.mode == mode])
        if bounds.size:
            lines.append(f"  {'bound (sim.bound)':<24}{median_range(bounds, '.1f'):>24}  no policy within the "
                         f"budget is faster (all-gpu holds every expert; the oracle is a clairvoyant heuristic)")
    return "\n".join(lines)
