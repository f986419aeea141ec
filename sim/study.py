"""Running a study (``python -m sim.explore --study paper|FILE.json``; the grid is data, ``sim.study_spec``).

The paper's grid (``sim/studies/paper.json``): LLaDA2.0-mini and LLaDA2.0-flash x A100/PCIe 4 and H100/PCIe 5 x
GPU budgets of 25%, 50% and 75% of the routed experts x ``prefix-recompute`` and ``block-cache``, every policy
(tau swept where it applies), on seeded synthetic traces: the study's ``seeds`` draws per model and mode (draw 0
the calibrated generator, the others with its uncertain parameters drawn; ``sim.spread``), every figure of the
headline a median with its [min-max] over draws.

Budget per layer B = floor(f E), capped by what fits the GPU next to the non-expert weights and a reserve
for activations and workspace:

  B_max = floor((M_gpu - M_non_expert - M_reserve) / (L expert_bytes)),   M_reserve = the study's reserve_gib

Fractions that cap to the same B collapse into one grid point (its label keeps every fraction asked).
The points marked as the paper's setting come from the study's ``paper_setting`` (TIDE, arXiv 2605.20179:
prefix-recompute, mini at 128 of 256 experts per layer, flash at the largest budget that fits 80 GB).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from offload.budget import GIB
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
import numpy as np

from offload.policies import BASELINES
from offload.results import SimRecord
from sim import spread
from sim.study_spec import StudySpec
from sim.sweep import Task, model_payload
from offload.trace_io import write_trace

RESERVE_GIB = 4.0  # the default reserve for activations and workspace next to the weights


@dataclass(frozen=True)
class Point:
    model: str
    hardware: str
    budget: int
    fractions: tuple[float, ...]
    capped: bool
    mode: str

    @property
    def label(self) -> str:
        frac = "/".join(f"{round(100 * f)}%" for f in self.fractions)
        return f"{self.model} {self.hardware} B={self.budget} ({frac}{', capped' if self.capped else ''}) {self.mode}"

    def tags(self) -> dict[str, Any]:
        return {"model": self.model, "hardware": self.hardware, "fractions": list(self.fractions),
                "capped": self.capped, "point": self.label}


def max_fitting_budget(model: ModelSpec, hw: HardwareProfile, reserve_gib: float = RESERVE_GIB) -> int:
    free = hw.gpu_memory_bytes - model.non_expert_bytes - reserve_gib * GIB
    return max(0, min(model.num_experts, int(free // (model.num_moe_layers * model.expert_bytes))))


def grid_points(study: StudySpec) -> list[Point]:
    points: list[Point] = []
    for m in study.models:
        spec = ModelSpec.load(m)
        for h in study.hardware:
            hw = HardwareProfile.load(h)
            cap = max_fitting_budget(spec, hw, study.reserve_gib)
            by_budget: dict[int, list[float]] = {}
            for f in study.fractions:
                b = min(max(1, int(f * spec.num_experts)), cap)
                if b >= 1:
                    by_budget.setdefault(b, []).append(f)
            for b, fs in by_budget.items():
                capped = any(int(f * spec.num_experts) > b for f in fs)
                points += [Point(m, h, b, tuple(fs), capped, mode) for mode in study.modes]
    return points


def paper_setting(p: Point, points: Sequence[Point], study: StudySpec) -> bool:
    """Whether ``p`` is the study's paper setting: its mode, and per model a budget or the largest that fits."""
    want = study.paper_setting
    if not want or p.mode != want.get("mode"):
        return False
    budget = want.get("budget", {}).get(p.model)
    if budget == "largest":
        return p.budget == max(q.budget for q in points if q.model == p.model and q.hardware == p.hardware)
    return budget is not None and p.budget == budget


def make_traces(study: StudySpec, out: Path) -> dict[tuple[str, str, int], str]:
    """(model, mode, draw) -> trace file: ``study.seeds`` synthetic draws per model and mode (``sim.spread``)."""
    from traces.synthetic_draws import draw_trace

    paths = {}
    for m in study.models:
        spec = ModelSpec.load(m)
        for mode in study.modes:
            for draw in range(study.seeds):
                trace = draw_trace(spec, mode, study.seed, draw, gen_length=study.gen_length)
                name = f"{m}-{mode}" + (f"-draw{draw}" if study.seeds > 1 else "")
                paths[(m, mode, draw)] = str(write_trace(trace, out / "traces" / f"{name}.npz"))
    return paths


def study_tasks(study: StudySpec, points: Sequence[Point], traces: dict[tuple[str, str, int], str],
                policies: Sequence[tuple[str, dict[str, Any]]], executor: dict[str, Any] | None = None) -> list[Task]:
    """Every (point, draw, policy) run; ``executor``: an ExecutorProfile dict (None: the default, tide-moe)."""
    tasks = []
    payloads = {m: model_payload(ModelSpec.load(m)) for m in {p.model for p in points}}
    profiles = {h: HardwareProfile.load(h).to_dict() for h in {p.hardware for p in points}}
    for p in points:
        tags = {**p.tags(), "paper_setting": paper_setting(p, points, study)}
        for draw in range(study.seeds):
            for name, params in policies:
                tasks.append(Task(traces[(p.model, p.mode, draw)], p.label, payloads[p.model], profiles[p.hardware],
                                  p.budget, name, params, {**tags, "draw": draw}, executor=executor))
    return tasks


def _best(rows: list[SimRecord], policy: str) -> SimRecord | None:
    rs = [r for r in rows if r.policy == policy]
    return max(rs, key=lambda r: r.tokens_per_s) if rs else None


def _draw_headline(rs: Sequence[SimRecord]) -> dict[str, Any]:
    """One grid point in one draw: each column's tokens/s (tau policies at their best tau) and the ratios."""
    get = {p: _best(list(rs), p) for p in (*BASELINES, "tide", "tide-opt", "riptide", "oracle", "all-gpu")}
    tput = {p: (r.tokens_per_s if r else None) for p, r in get.items()}
    base = max((t for p, t in tput.items() if p in BASELINES and t), default=None)

    def ratio(a: str | float | None, b: str | float | None) -> float | None:
        x = tput.get(a) if isinstance(a, str) else a
        y = tput.get(b) if isinstance(b, str) else b
        return x / y if x and y else None

    opt = get["tide-opt"]
    # the bound of the point's budget (all-gpu's row is bounded with every expert resident)
    bound = next((r.bound_tokens_per_s for r in rs if r.policy != "all-gpu" and r.bound_tokens_per_s), None)
    return {"baseline": base, "baseline_policy": max(BASELINES, key=lambda p: tput[p] or 0.0), **tput,
            "bound": bound, "riptide_vs_bound": ratio("riptide", bound), "tide_opt_vs_bound": ratio("tide-opt", bound),
            "tide_best_tau": get["tide"].tau if get["tide"] else None,
            "tide_opt_tau": opt.policy_report.get("chosen_tau") if opt else None,
            "tide_opt_vs_base": ratio("tide-opt", base), "tide_vs_base": ratio("tide", base),
            "tide_opt_vs_static": ratio("tide-opt", "static"), "riptide_vs_tide_opt": ratio("riptide", "tide-opt"),
            "riptide_vs_tide": ratio("riptide", "tide"), "riptide_vs_oracle": ratio("riptide", "oracle")}


# headline columns with a median and a [min, max] over draws
RANGED = ("baseline", *BASELINES, "tide", "tide-opt", "riptide", "oracle", "all-gpu", "bound", "tide_opt_vs_base",
          "tide_vs_base", "tide_opt_vs_static", "riptide_vs_tide_opt", "riptide_vs_tide", "riptide_vs_oracle",
          "riptide_vs_bound", "tide_opt_vs_bound")


def headline(rows: Sequence[SimRecord]) -> list[dict[str, Any]]:
    """Per grid point, over the draws (``sim.spread``; a row's draw is ``tags["draw"]``, default 0): the median
    and ``<column>_range`` [min, max] of the tokens/s of the best baseline (``offload.policies.BASELINES``:
    cpu-route, static, fetch-lru), of each baseline, tide at its best tau, tide-opt, riptide, oracle, the bound
    (``sim.bound``: no policy is faster) and all-gpu, and of the ratios between them, each ratio taken within a
    draw. ``tide_best_tau`` and ``tide_opt_tau`` list
    each draw's; ``recommended`` is the causal policy (all-gpu only where the point's budget is every expert)
    with the highest median tokens/s, and ``recommended_wins`` the share of draws in which it is the fastest."""
    out = []
    for point in dict.fromkeys(r.tags["point"] for r in rows):
        rs = [r for r in rows if r.tags["point"] == point]
        draws = sorted({spread.draw_of(r) for r in rs})
        per = [_draw_headline([r for r in rs if spread.draw_of(r) == d]) for d in draws]
        first = rs[0]
        budget = next((r.budget for r in rs if r.policy != "all-gpu"), None)  # all-gpu's is every expert
        best, wins = spread.recommend(rs, lambda r, budget=budget: r.causal and (r.policy != "all-gpu" or r.budget == budget))
        line: dict[str, Any] = {"point": point, "model": first.tags["model"], "hardware": first.tags["hardware"],
                                "budget": budget, "mode": first.mode, "paper_setting": bool(first.tags.get("paper_setting")),
                                "draws": len(draws)}
        for key in RANGED:
            vals = [h[key] for h in per]
            known = np.array([v for v in vals if v is not None], dtype=float)
            line[key] = float(np.median(known)) if known.size == len(vals) else None
            line[f"{key}_range"] = [float(known.min()), float(known.max())] if known.size == len(vals) else None
        bases = [h["baseline_policy"] for h in per]
        line["baseline_policy"] = max(set(bases), key=bases.count)
        line["tide_best_tau"] = [h["tide_best_tau"] for h in per]
        line["tide_opt_tau"] = [h["tide_opt_tau"] for h in per]
        line["recommended"], line["recommended_wins"] = (best.label if best else None), wins
        out.append(line)
    return out


def _taus(v: Sequence[Any]) -> str:
    """Each draw's tau, distinct values joined by '/' ('–' when none; a per-layer list as its min-max)."""
    shown = []
    for t in v:
        if t is None:
            continue
        text = f"{min(t)}-{max(t)}" if isinstance(t, list) else str(t)
        if text not in shown:
            shown.append(text)
    return "/".join(shown) or "–"


def markdown_table(lines: Sequence[dict[str, Any]]) -> str:
    """The headline as markdown: medians with their [min-max] over draws when there is more than one."""
    def f(h: dict[str, Any], key: str, spec: str = ".1f", unit: str = "") -> str:
        v, r = h[key], h.get(f"{key}_range")
        if v is None:
            return "–"
        if r is None or h["draws"] < 2:
            return format(v, spec) + unit
        return f"{format(v, spec)}{unit} [{format(r[0], spec)}-{format(r[1], spec)}]"

    head = ("| setting | B | mode | best baseline | static | tide (best τ) | tide-opt (τ) | riptide | oracle | bound | "
            "all-gpu | tide-opt / base | tide-opt / static | riptide / tide-opt | riptide / bound | recommended (wins) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = []
    for h in lines:
        star = " **paper**" if h["paper_setting"] else ""
        body.append(f"| {h['model']} {h['hardware']}{star} | {h['budget']} | {h['mode']} | {f(h, 'baseline')} "
                    f"({h['baseline_policy']}) | {f(h, 'static')} | {f(h, 'tide')} ({_taus(h['tide_best_tau'])}) | "
                    f"{f(h, 'tide-opt')} ({_taus(h['tide_opt_tau'])}) | {f(h, 'riptide')} | {f(h, 'oracle')} | "
                    f"{f(h, 'bound')} | {f(h, 'all-gpu')} | {f(h, 'tide_opt_vs_base', '.2f', 'x')} | "
                    f"{f(h, 'tide_opt_vs_static', '.2f', 'x')} | {f(h, 'riptide_vs_tide_opt', '.2f', 'x')} | "
                    f"{f(h, 'riptide_vs_bound', '.2f', 'x')} | "
                    + (f"{h['recommended']} ({100 * h['recommended_wins']:.0f}%) |" if h["recommended"] else "– |"))
    return head + "\n".join(body) + "\n"
