"""TIDE's evaluation reproduced in the simulator, under the authors' executor and under this project's.

    python -m sim.paper_repro [--out DIR] [--seeds N] [--jobs N] [--reuse] [--publish PAGE.md]

The same as ``python -m sim.explore --study paper-repro --quiet --no-report --out DIR``: the study file
(``sim/studies/paper-repro.json``: TIDE's setting under the ``tide-reference`` and ``tide-moe`` executors, one run
directory each under DIR) and its table (``sim.study_spec.TABLES["paper-repro"]``: the paper's settings per
executor, tokens/s the mean over prompts of each prompt's, the paper's baselines, tide-opt over them and over
static, riptide over tide-opt and the bound; each ratio taken per prompt, then averaged, with its [min-max]).
"""
from __future__ import annotations

from typing import Sequence

from offload import provenance
from offload.cli import Parser
from offload.errors import run_cli
from sim import explore
from sim.study_spec import MAX_SEEDS


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m sim.paper_repro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/paper-repro", help="parent of the two run directories (default "
                    "runs/paper-repro)")
    ap.add_argument("--seeds", type=int, default=None, help="synthetic prompts per model (default: the study's 5; "
                    f"at most {MAX_SEEDS})")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--reuse", action="store_true", help="only print the table from the run directories there")
    ap.add_argument("--publish", default=None, metavar="PAGE.md",
                    help="also write the table as a results page with its provenance (offload/provenance.py)")
    a = ap.parse_args(argv)
    args = ["--study", "paper-repro", "--out", a.out, "--quiet", "--no-report", *(["--reuse"] if a.reuse else [])]
    args += [f"--{k}={v}" for k in ("seeds", "jobs", "publish") if (v := getattr(a, k)) is not None]
    return explore.run(explore.parse_args(args), provenance.start("python -m sim.paper_repro", argv))


if __name__ == "__main__":
    run_cli(main)
