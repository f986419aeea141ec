"""Synthetic-trace calibration, measured vs published, with tide's hit ratios from the simulator.

    python -m sim.synthetic_check [--seeds N]

The table of ``python -m traces.stats --check`` (traces/stats.py) plus, for LLaDA2.0-mini (B = 128) and -flash
(B = 96), tide's GPU hit ratio at tau = 1..5 on prefix-recompute traces: targets 0.93-0.95 (mini) and about 0.98
(flash) at tau = 1, and TIDE's loss hit(1) - hit(tau) of 0.0009 / 0.0014 / 0.0028 / 0.0040 at tau = 2..5 (pass:
monotone in tau and 0.002-0.006 at tau 5). Hit ratios count token-assignments and do not depend on costs, so a
ConstantCostModel replays them. Lives in sim because traces may not import the engine.

Two averages of the loss (mini):
  whole-run     hit = sum_s gpu_s / sum_s (gpu_s + cpu_s)   (the engine's Counters.hit_ratio; the pass/fail row)
  step-averaged hit = mean_s gpu_s / (gpu_s + cpu_s)         over the generating forwards s, all layers pooled
TIDE's 0.0009 / 0.0014 / 0.0028 / 0.0040 are "averaged over steps" (10 prompts), its first prompt's whole-prompt
figures 0.0016 / 0.0019 / 0.0021 / 0.0025 (routing-stats.md); the step-averaged rows are shown for comparison
only. The engine reports whole-run counters alone, so :func:`tide_step_hit_ratios` replays tide's placement rule
(offload/policies/tide.py) in numpy; its whole-run figure equals the engine's (tests/traces/test_synthetic.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from offload import provenance
from offload.cli import Parser
from offload.cost import ConstantCostModel
from offload.errors import run_cli
from offload.policies import make_policy
from offload.trace import KIND_DECODE, KIND_DENOISE, Trace
from sim.engine import simulate
from traces.stats import calibration_rows, format_check


def tide_hit_ratios(trace: Trace, budget: int, taus: Sequence[int] = (1, 2, 3, 4, 5)) -> list[float]:
    """GPU hit ratio of ``tide`` at each tau, ``budget`` experts per layer (the engine's whole-run counters)."""
    return [simulate(trace, make_policy("tide", tau=t), ConstantCostModel(), budget=budget).counters.hit_ratio
            for t in taus]


def tide_step_hits(trace: Trace, budget: int, tau: int) -> np.ndarray:
    """Per generating forward, tide's GPU hit ratio (all MoE layers pooled) at refresh interval ``tau``.

    tide's rule, vectorised over layers: experts 0..B-1 resident at first; on a refresh forward (a denoising or
    decode forward of the first block, or one whose in-block step is a multiple of tau) target = the B busiest
    experts with count > 0, promote the targets not resident, demote as many resident non-targets as were promoted,
    in ascending id; then hits = the forward's assignments to resident experts."""
    counts = trace.counts
    S, L, E = counts.shape
    resident = np.zeros((L, E), dtype=bool)
    resident[:, :budget] = True
    generating = (trace.kind == KIND_DENOISE) | (trace.kind == KIND_DECODE)
    refresh = generating & ((trace.block == 0) | (trace.step_in_block % tau == 0))
    hits = np.zeros(S)
    for s in range(S):  # a loop over forwards: residency carries over from one to the next
        c = counts[s].astype(np.int64)
        if refresh[s]:
            order = np.argsort(-c, axis=1, kind="stable")[:, :budget]  # ties by lower id, as offload's top_b
            target = np.zeros((L, E), dtype=bool)
            np.put_along_axis(target, order, np.take_along_axis(c, order, axis=1) > 0, axis=1)
            promote = target & ~resident
            spare = resident & ~target
            demote = spare & (np.cumsum(spare, axis=1) <= promote.sum(axis=1, keepdims=True))
            resident = (resident | promote) & ~demote
        hits[s] = (c * resident).sum()
    total = counts.sum(axis=(1, 2), dtype=np.int64)
    keep = generating & (total > 0)
    return hits[keep] / total[keep]


def tide_step_hit_ratios(trace: Trace, budget: int, taus: Sequence[int] = (1, 2, 3, 4, 5)) -> list[float]:
    """Step-averaged tide hit ratio at each tau: the mean over generating forwards of :func:`tide_step_hits`."""
    return [float(tide_step_hits(trace, budget, t).mean()) for t in taus]


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m sim.synthetic_check", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="synthetic seeds 0..N-1 (default 3)")
    ap.add_argument("--publish", default=None, metavar="PAGE.md",
                    help="also write the table as a results page with its provenance (offload/provenance.py)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be an integer >= 1, got {args.seeds}")
    began = provenance.start("python -m sim.synthetic_check", argv)
    table = format_check(calibration_rows(range(args.seeds), hit_ratios=tide_hit_ratios,
                                          step_hit_ratios=tide_step_hit_ratios))
    print(table)
    if args.publish:
        note = (f"Synthetic traces against the published routing figures of `../shared/reference/routing-stats.md`, "
                f"seeds 0-{args.seeds - 1}: mean and (range); `python -m traces.stats --check` prints the rows that "
                "need no simulator. The step-averaged rows are shown for comparison, not checked.")
        provenance.write_page(args.publish, "Synthetic trace calibration", f"```text\n{table}\n```", began, note)
        print(f"wrote {args.publish}")
    return 0


if __name__ == "__main__":
    run_cli(main)
