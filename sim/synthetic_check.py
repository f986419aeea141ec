"""Synthetic-trace calibration, measured vs published, with tide's hit ratios from the simulator.

    python -m sim.synthetic_check [--seeds N]

The table of ``python -m traces.stats --check`` (traces/stats.py) plus, for LLaDA2.0-mini (B = 128) and -flash
(B = 96), tide's GPU hit ratio at tau = 1..5 on prefix-recompute traces: targets 0.93-0.95 (mini) and about 0.98
(flash) at tau = 1, and TIDE's loss hit(1) - hit(tau) of 0.0009 / 0.0014 / 0.0028 / 0.0040 at tau = 2..5 (pass:
monotone in tau and 0.002-0.006 at tau 5). Hit ratios count token-assignments and do not depend on costs, so a
ConstantCostModel replays them. Lives in sim because traces may not import the engine.
"""
from __future__ import annotations

from typing import Sequence

from offload.cli import Parser
from offload.cost import ConstantCostModel
from offload.errors import run_cli
from offload.policies import make_policy
from offload.trace import Trace
from sim.engine import simulate
from traces.stats import calibration_rows, format_check


def tide_hit_ratios(trace: Trace, budget: int, taus: Sequence[int] = (1, 2, 3, 4, 5)) -> list[float]:
    """GPU hit ratio of ``tide`` at each tau, ``budget`` experts per layer."""
    return [simulate(trace, make_policy("tide", tau=t), ConstantCostModel(), budget=budget).counters.hit_ratio
            for t in taus]


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m sim.synthetic_check", description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="synthetic seeds 0..N-1 (default 3)")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error(f"--seeds must be an integer >= 1, got {args.seeds}")
    print(format_check(calibration_rows(range(args.seeds), hit_ratios=tide_hit_ratios)))
    return 0


if __name__ == "__main__":
    run_cli(main)
