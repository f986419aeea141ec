"""How much an answer depends on the trace: results over several synthetic trace seeds, as medians and ranges.

No real LLaDA2 trace can be recorded here, so ``sim.explore --seeds N`` replays N synthetic traces per mode
(seeds seed .. seed + N - 1) and reports, per mode and policy (tau policies at their best tau *per seed*):

  tokens/s            median over seeds, and [min, max]
  vs base             per seed: tokens/s / the best baseline's (offload.policies.BASELINES) of that seed;
                      median and [min, max] of those ratios
  wins                the share of seeds in which this (policy, mode) is the fastest eligible run

The recommendation is the (policy, mode) with the highest median tokens/s among the eligible runs, and the policy
file records its median, its range and its share of wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from offload.policies import BASELINES, TAU_POLICIES
from offload.results import SimRecord


@dataclass(frozen=True)
class Spread:
    """One (mode, policy) over the seeds: the best row of each seed (best tau for tau policies)."""

    mode: str
    policy: str
    rows: tuple[SimRecord, ...]      # one per seed, in seed order
    vs_base: tuple[float, ...]       # per seed, tokens/s over the best baseline of that seed (nan: none)

    @property
    def tokens_per_s(self) -> np.ndarray:
        return np.array([r.tokens_per_s for r in self.rows])

    @property
    def label(self) -> str:
        labels = {r.label for r in self.rows}
        return labels.pop() if len(labels) == 1 else self.policy + " best"


def seed_of(r: SimRecord) -> int:
    return int(r.tags.get("seed", 0))


def spreads(rows: Sequence[SimRecord]) -> list[Spread]:
    """Per mode and policy, each seed's best row and its ratio to that seed's best baseline."""
    out = []
    for mode in dict.fromkeys(r.mode for r in rows):
        in_mode = [r for r in rows if r.mode == mode]
        seeds = sorted({seed_of(r) for r in in_mode})
        base = {s: max((r.tokens_per_s for r in in_mode if seed_of(r) == s and r.policy in BASELINES),
                       default=float("nan")) for s in seeds}
        for policy in dict.fromkeys(r.policy for r in in_mode):
            best = [max((r for r in in_mode if r.policy == policy and seed_of(r) == s), key=lambda r: r.tokens_per_s)
                    for s in seeds if any(r.policy == policy and seed_of(r) == s for r in in_mode)]
            out.append(Spread(mode, policy, tuple(best), tuple(r.tokens_per_s / base[seed_of(r)] for r in best)))
    return out


def _range(v: Sequence[float], fmt: str) -> str:
    v = np.asarray(v, dtype=float)
    if v.size < 2:
        return format(float(np.median(v)), fmt)
    return f"{format(float(np.median(v)), fmt)} [{format(float(v.min()), fmt)}-{format(float(v.max()), fmt)}]"


def recommend(rows: Sequence[SimRecord], eligible: Callable[[SimRecord], bool]) -> tuple[Spread, float]:
    """The eligible (policy, mode) with the highest median tokens/s, and its share of per-seed wins. A tau
    policy counts as one candidate at its best tau per seed, as in the table."""
    every = spreads(rows)
    cands = [s for s in every if all(eligible(r) for r in s.rows)] or every
    best = max(cands, key=lambda s: float(np.median(s.tokens_per_s)))
    seeds = sorted({seed_of(r) for r in rows})
    wins = 0
    for seed in seeds:
        top = max(cands, key=lambda s: max((r.tokens_per_s for r in s.rows if seed_of(r) == seed), default=-1.0))
        wins += top is best
    return best, wins / len(seeds)


def spread_table(rows: Sequence[SimRecord]) -> str:
    """Per mode: every policy's median tokens/s and ratio to the best baseline with their ranges over seeds."""
    lines = []
    n = len({seed_of(r) for r in rows})
    for mode in dict.fromkeys(r.mode for r in rows):
        lines.append(f"\n{mode}: median [min-max] over {n} trace seeds")
        lines.append(f"  {'policy':<24}{'tokens/s':>24}{'vs best baseline':>26}{'hit':>7}")
        for s in (s for s in spreads(rows) if s.mode == mode):
            taus = sorted({r.tau for r in s.rows}) if s.policy in TAU_POLICIES else []
            label = s.label + (f" (tau {'/'.join(map(str, taus))})" if len(taus) > 1 else "")
            hit = float(np.median([r.counters.hit_ratio for r in s.rows]))
            lines.append(f"  {label:<24}{_range(s.tokens_per_s, '.1f'):>24}{_range(s.vs_base, '.2f'):>26}{hit:>7.3f}")
    return "\n".join(lines)
