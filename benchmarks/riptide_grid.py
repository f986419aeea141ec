"""riptide against tide at its best tau (and the baselines) over the issue #5 grid, on synthetic traces.

Grid: models (llada2.0-mini, llada2.0-flash) x hardware (a100-pcie4, h100-pcie5) x budgets (25/50/75% of the
experts per layer, or --gpu-memory-gb) x modes (prefix-recompute, block-cache). One synthetic trace per
(model, mode), seed 0, gen length 1024, block 32, prompt 128 (sim.explore's defaults). Prints one row per
setting: tokens/s of riptide, of tide at its best tau (tau = 1..16), of tide-opt when registered, of
cpu-route and fetch-lru, and riptide / tide-best. ``--ablate`` adds one riptide run per part switched off.

    python benchmarks/riptide_grid.py [--models mini flash] [--hardware a100-pcie4 h100-pcie5]
        [--budgets 0.25 0.5 0.75] [--modes prefix-recompute block-cache] [--ablate] [--jobs 2] [--json OUT]

A budget that would not fit the GPU with the non-expert weights is still simulated, and marked "no-fit".
``--hetero`` replaces each trace by one whose layers route unlike each other (the calibrated model's layers are
statistically alike, so per-layer budgets have nothing to gain there): the first half of the MoE layers from a
concentrated configuration (block_concentration 0.3), the second half from a spread one (block_concentration
5, popularity_skew 0.8), same seed, hence the same steps.
"""
from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor as WorkerPool  # "executor" names the executor profile only
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks._checks import at_least, fraction, output_file  # noqa: E402
from offload.atomic_io import atomic_write_text  # noqa: E402
from offload.budget import fits, resolve_budget  # noqa: E402
from offload.cli import Parser  # noqa: E402
from offload.cost import RooflineCostModel  # noqa: E402
from offload.errors import TideError, run_cli  # noqa: E402
from offload.hardware import HardwareProfile  # noqa: E402
from offload.model_spec import ModelSpec  # noqa: E402
from offload.policies import POLICIES, make_policy  # noqa: E402
from offload.trace import DIFFUSION_MODES  # noqa: E402
from sim.engine import simulate  # noqa: E402
from traces.synthetic import default_config, generate  # noqa: E402

MODELS = {"mini": "llada2.0-mini", "flash": "llada2.0-flash"}
ABLATIONS = {"no-prefetch": {"prefetch": False}, "no-cost-aware": {"cost_aware": False},
             "no-layer-budgets": {"layer_budgets": False}, "no-balance": {"balance": False},
             "no-carry": {"carry": False}, "tau-refresh": {"drift": None, "tau": 4}}
_TRACES: dict[tuple[str, str], Any] = {}


def _trace(model: str, mode: str, hetero: bool = False) -> Any:
    if (model, mode, hetero) not in _TRACES:
        spec = ModelSpec.load(model)
        trace = generate(spec, default_config(spec, mode, seed=0))
        if hetero:
            spread = generate(spec, default_config(spec, mode, seed=0, block_concentration=5.0, popularity_skew=0.8))
            tight = generate(spec, default_config(spec, mode, seed=0, block_concentration=0.3))
            half = spec.num_moe_layers // 2
            counts = np.concatenate([tight.counts[:, :half], spread.counts[:, half:]], axis=1)
            trace = replace(trace, counts=counts)
        _TRACES[(model, mode, hetero)] = trace
    return _TRACES[(model, mode, hetero)]


def run_setting(job: tuple[str, str, Any, str, bool, list[int], bool]) -> dict[str, Any]:
    model, hw_name, budget_spec, mode, ablate, taus, hetero = job
    spec, hw = ModelSpec.load(model), HardwareProfile.load(hw_name)
    if isinstance(budget_spec, str):  # "70GB"
        budget = resolve_budget(spec, None, gpu_memory_gb=float(budget_spec[:-2]))
    else:
        budget = np.full(spec.num_moe_layers, max(1, int(round(budget_spec * spec.num_experts))))
    cost = RooflineCostModel(spec, hw)
    trace = _trace(model, mode, hetero)
    sim = lambda p: simulate(trace, p, cost, budget, shared_duplex=hw.link.shared_duplex)  # noqa: E731
    tide = {tau: sim(make_policy("tide", tau=tau)).tokens_per_s for tau in taus}
    best_tau = max(tide, key=lambda t: (tide[t], -t))
    rip = sim(make_policy("riptide"))
    row = {"model": model, "hardware": hw_name, "budget": int(budget[0]), "mode": mode,
           "fits": bool(fits(spec, hw, budget)), "riptide": rip.tokens_per_s, "riptide_hit": rip.counters.hit_ratio,
           "tide_best": tide[best_tau], "tide_best_tau": best_tau, "tide_by_tau": tide,
           "cpu-route": sim(make_policy("cpu-route")).tokens_per_s,
           "fetch-lru": sim(make_policy("fetch-lru")).tokens_per_s}
    if "tide-opt" in POLICIES:
        row["tide-opt"] = sim(make_policy("tide-opt")).tokens_per_s
    if ablate:
        row["ablations"] = {name: sim(make_policy("riptide", **p)).tokens_per_s for name, p in ABLATIONS.items()}
    return row


def check_args(a: Any) -> list[Any]:
    """Every option checked in this process before any worker starts (a worker's error would surface only
    after the pool drains, behind the settings already running); the budgets as run_setting takes them."""
    at_least("--jobs", a.jobs)
    for tau in a.tau:
        at_least("--tau", tau)
    for name in a.hardware:
        HardwareProfile.load(name)
    output_file("--json", a.json)
    specs = [ModelSpec.load(MODELS[m]) for m in a.models]
    budgets: list[Any] = []
    for text in a.budgets:
        if not text.endswith("GB"):
            budgets.append(fraction("--budgets", text))
            continue
        try:
            gb = float(text[:-2])
        except ValueError:
            raise TideError(f"--budgets: {text!r} is not a number of GB (e.g. 70GB)") from None
        for spec in specs:  # must hold one expert per layer of every model (the fit is only marked: no-fit)
            try:
                resolve_budget(spec, None, gpu_memory_gb=gb)
            except TideError as exc:
                raise TideError(f"--budgets {text}: {exc}") from None
        budgets.append(text)
    return budgets


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--hardware", nargs="+", default=["a100-pcie4", "h100-pcie5"])
    ap.add_argument("--budgets", nargs="+", default=["0.25", "0.5", "0.75"],
                    help="fractions of the experts per layer, or NGB for GPU memory (e.g. 70GB)")
    ap.add_argument("--modes", nargs="+", default=list(DIFFUSION_MODES), choices=DIFFUSION_MODES)
    ap.add_argument("--tau", nargs="+", type=int, default=list(range(1, 17)))
    ap.add_argument("--ablate", action="store_true", help="also run riptide with each part switched off")
    ap.add_argument("--hetero", action="store_true", help="layers that route unlike each other (see above)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="write the rows here")
    a = ap.parse_args(argv)
    budgets = check_args(a)
    jobs = [(MODELS[m], h, b, mode, a.ablate, a.tau, a.hetero) for m in a.models for h in a.hardware for b in budgets
            for mode in a.modes]
    with WorkerPool(max_workers=a.jobs) as pool:
        rows = list(pool.map(run_setting, jobs))
    cols = ["riptide", "tide_best", "tide-opt", "cpu-route", "fetch-lru"]
    print(f"{'model':<15}{'hardware':<12}{'B':>4} {'mode':<17}" + "".join(f"{c:>11}" for c in cols)
          + f"{'tau*':>5}{'rip/tide':>9}" + ("  ablations (tokens/s)" if a.ablate else ""))
    for r in rows:
        vals = "".join(f"{r[c]:>11.2f}" if c in r else f"{'-':>11}" for c in cols)
        line = (f"{r['model']:<15}{r['hardware']:<12}{r['budget']:>4} {r['mode']:<17}{vals}{r['tide_best_tau']:>5}"
                f"{r['riptide'] / r['tide_best']:>8.3f}x" + ("" if r["fits"] else " no-fit"))
        if a.ablate:
            line += "  " + " ".join(f"{k}:{v:.2f}" for k, v in r["ablations"].items())
        print(line)
    if a.json:
        atomic_write_text(a.json, json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    run_cli(main)
