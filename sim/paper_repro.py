"""TIDE's evaluation reproduced in the simulator, under the authors' executor and under this project's.

    python -m sim.paper_repro [--out DIR] [--seeds N] [--jobs N]

Runs the ``paper-repro`` study (sim/studies/paper-repro.json: LLaDA2.0-mini at B = 128 and -flash at B = 96 of
256 experts per layer, A100/PCIe 4 and H100/PCIe 5 presets, prefix recompute, gen_length 1024 with EOS early
stop, block 32, steps 32, N synthetic prompts) twice: with ``--executor tide-reference`` (the released code's
costs: pageable per-projection copies, demotions copied back, a blocking copy pair per CPU expert, a Python loop
per GPU expert, lm_head over the prefix in fp32, nothing overlapped) and with ``--executor tide-moe`` (this
runtime). It prints one markdown table of the paper's settings, per executor:

  tokens/s            the mean over prompts of each prompt's tokens/s (TIDE's evaluation averages per sample)
  paper's baselines   "CPU routing" (cpu-route, experts 0..B-1) and "full swap" (fetch-lru): TIDE's 1.4x (mini)
                      and 1.5x (flash) are tide over the better of the two
  tide-opt / static   what refreshing gains over the fixed placement of the first step's busiest experts
  riptide / tide-opt  what this project's policy gains over TIDE's, and the bound (``sim.bound``)

Each ratio is taken per prompt and then averaged, with its [min-max] over prompts.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offload import provenance
from offload.atomic_io import atomic_write_text
from offload.cli import Parser
from offload.errors import TideError, run_cli
from offload.results import SimRecord, from_json
from sim.spread import draw_of
from sim.study_spec import MAX_SEEDS, check_seeds

EXECUTORS = ("tide-reference", "tide-moe")
PAPER = {"llada2.0-mini": 1.4, "llada2.0-flash": 1.5}  # TIDE's reported speedups (arXiv 2605.20179, summary)


def _best(rows: Sequence[SimRecord], policy: str) -> float | None:
    vals = [r.tokens_per_s for r in rows if r.policy == policy]
    return max(vals) if vals else None


def per_prompt(rows: Sequence[SimRecord]) -> dict[str, np.ndarray]:
    """Per draw (prompt) of one grid point: each policy's tokens/s (tau policies at their best tau), the bound,
    and the ratios; arrays over draws."""
    draws = sorted({draw_of(r) for r in rows})
    out: dict[str, list[float]] = {}
    for d in draws:
        rs = [r for r in rows if draw_of(r) == d]
        t = {p: _best(rs, p) for p in ("cpu-route", "static", "fetch-lru", "tide", "tide-opt", "riptide")}
        bound = next((r.bound_tokens_per_s for r in rs if r.bound_tokens_per_s), None)
        paper_base = max(t["cpu-route"], t["fetch-lru"])
        vals = {**t, "bound": bound, "tide_vs_paper_base": t["tide"] / paper_base,
                "tide_opt_vs_paper_base": t["tide-opt"] / paper_base, "tide_opt_vs_static": t["tide-opt"] / t["static"],
                "riptide_vs_tide_opt": t["riptide"] / t["tide-opt"],
                "riptide_vs_bound": t["riptide"] / bound if bound else float("nan")}
        for k, v in vals.items():
            out.setdefault(k, []).append(float("nan") if v is None else float(v))
    return {k: np.array(v) for k, v in out.items()}


def _cell(v: np.ndarray, spec: str, unit: str = "") -> str:
    return f"{format(float(np.mean(v)), spec)}{unit} [{format(float(v.min()), spec)}-{format(float(v.max()), spec)}]"


def table(results: dict[str, list[SimRecord]]) -> str:
    """Markdown: one row per executor and paper-setting point."""
    head = ("| executor | setting | B | cpu-route | fetch-lru | static | tide (best τ) | tide-opt | riptide | bound | "
            "tide / paper's base | tide-opt / paper's base (TIDE: 1.4x mini, 1.5x flash) | tide-opt / static | "
            "riptide / tide-opt | riptide / bound |\n|" + "---|" * 15 + "\n")
    lines = []
    for executor, rows in results.items():
        paper = [r for r in rows if r.tags.get("paper_setting")]
        for point in dict.fromkeys(r.tags["point"] for r in paper):
            rs = [r for r in paper if r.tags["point"] == point]
            v = per_prompt(rs)
            first = rs[0]
            lines.append(f"| {executor} | {first.tags['model']} {first.tags['hardware']} | {first.budget} | "
                         + " | ".join(_cell(v[p], ".1f") for p in ("cpu-route", "fetch-lru", "static", "tide",
                                                                    "tide-opt", "riptide", "bound"))
                         + " | " + " | ".join(_cell(v[k], ".2f", "x") for k in (
                             "tide_vs_paper_base", "tide_opt_vs_paper_base", "tide_opt_vs_static",
                             "riptide_vs_tide_opt", "riptide_vs_bound")) + " |")
    return head + "\n".join(lines) + "\n"


def load_rows(run_dir: Path) -> list[SimRecord]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise TideError(f"{run_dir}: no results.json (run the study first)")
    return [from_json(SimRecord, d) for d in json.loads(path.read_text())]


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m sim.paper_repro", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/paper-repro", help="parent of the two run directories (default "
                    "runs/paper-repro)")
    ap.add_argument("--seeds", type=int, default=None, help="synthetic prompts per model (default: the study's 5; at most "
                    f"{MAX_SEEDS})")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    ap.add_argument("--reuse", action="store_true", help="only print the table from the run directories there")
    ap.add_argument("--publish", default=None, metavar="PAGE.md",
                    help="also write the table as a results page with its provenance (offload/provenance.py)")
    a = ap.parse_args(argv)
    began = provenance.start("python -m sim.paper_repro", argv)
    if a.seeds is not None:
        check_seeds(a.seeds)
    if a.jobs is not None and a.jobs < 1:
        raise TideError(f"--jobs must be >= 1, got {a.jobs}")
    out = Path(a.out)
    results: dict[str, list[SimRecord]] = {}
    for executor in EXECUTORS:
        run_dir = out / executor
        if not a.reuse:
            from sim.explore import main as explore

            args: list[Any] = ["--study", "paper-repro", "--executor", executor, "--out", str(run_dir), "--quiet",
                               "--no-report"]
            args += ["--seeds", str(a.seeds)] if a.seeds else []
            args += ["--jobs", str(a.jobs)] if a.jobs else []
            explore(args)
        results[executor] = load_rows(run_dir)
    text = table(results)
    atomic_write_text(out / "paper-repro.md", text)
    print("\nTIDE's setting, mean over prompts [min-max]:\n" + text)
    if a.publish:
        note = ("TIDE's setting (the `paper-repro` study: LLaDA2.0-mini at B = 128 and LLaDA2.0-flash at B = 96, "
                "prefix recompute, gen_length 1024 with EOS stop, synthetic prompts) under both executors. Tokens/s "
                "as TIDE's evaluation reports it: the mean over prompts of each prompt's tokens/s, [min-max] over "
                "prompts; \"paper's base\" is the better of `cpu-route` and `fetch-lru`. Roofline presets, not "
                "calibrated on real hardware." + (" Printed from earlier runs (`--reuse`): the date is the "
                                                   "table's, not the runs'." if a.reuse else ""))
        provenance.write_page(a.publish, "TIDE's own setting under both executors", text, began, note)
        print(f"wrote {a.publish}")
    return 0


if __name__ == "__main__":
    run_cli(main)
