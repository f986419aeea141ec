"""Running a study (``python -m sim.explore --study paper|FILE.json``; the grid is data, ``sim.study_spec``).

The paper's grid (``sim/studies/paper.json``): LLaDA2.0-mini and LLaDA2.0-flash x A100/PCIe 4 and H100/PCIe 5 x
GPU budgets of 25%, 50% and 75% of the routed experts x ``prefix-recompute`` and ``block-cache``, every policy
(tau swept where it applies), on seeded synthetic traces (one per model and mode, as in ``traces.synthetic``).

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
from offload.policies import BASELINES
from offload.results import SimRecord
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


def make_traces(study: StudySpec, out: Path) -> dict[tuple[str, str], str]:
    from traces.synthetic import default_config, generate

    paths = {}
    for m in study.models:
        spec = ModelSpec.load(m)
        for mode in study.modes:
            trace = generate(spec, default_config(spec, mode, gen_length=study.gen_length, seed=study.seed))
            paths[(m, mode)] = str(write_trace(trace, out / "traces" / f"{m}-{mode}.npz"))
    return paths


def study_tasks(study: StudySpec, points: Sequence[Point], traces: dict[tuple[str, str], str],
                policies: Sequence[tuple[str, dict[str, Any]]]) -> list[Task]:
    tasks = []
    payloads = {m: model_payload(ModelSpec.load(m)) for m in {p.model for p in points}}
    profiles = {h: HardwareProfile.load(h).to_dict() for h in {p.hardware for p in points}}
    for p in points:
        for name, params in policies:
            tasks.append(Task(traces[(p.model, p.mode)], p.label, payloads[p.model], profiles[p.hardware], p.budget,
                              name, params, {**p.tags(), "paper_setting": paper_setting(p, points, study)}))
    return tasks


def _best(rows: list[SimRecord], policy: str) -> SimRecord | None:
    rs = [r for r in rows if r.policy == policy]
    return max(rs, key=lambda r: r.tokens_per_s) if rs else None


def headline(rows: Sequence[SimRecord]) -> list[dict[str, Any]]:
    """Per grid point: tokens/s of the best baseline (``offload.policies.BASELINES``: cpu-route, static,
    fetch-lru), static alone, tide at its best tau, tide-opt (with the tau it chose), riptide, oracle, all-gpu,
    and the ratios between them."""
    out = []
    for point in dict.fromkeys(r.tags["point"] for r in rows):
        rs = [r for r in rows if r.tags["point"] == point]
        get = {p: _best(rs, p) for p in (*BASELINES, "tide", "tide-opt", "riptide", "oracle", "all-gpu")}
        tput = {p: (r.tokens_per_s if r else None) for p, r in get.items()}
        base = max((t for p, t in tput.items() if p in BASELINES and t), default=None)

        def ratio(a: str | float | None, b: str | float | None) -> float | None:
            x = tput.get(a) if isinstance(a, str) else a
            y = tput.get(b) if isinstance(b, str) else b
            return x / y if x and y else None

        opt, first = get["tide-opt"], rs[0]
        out.append({"point": point, "model": first.tags["model"], "hardware": first.tags["hardware"],
                    "budget": next((r.budget for r in rs if r.policy != "all-gpu"), None),  # all-gpu's is every expert
                    "mode": first.mode, "paper_setting": bool(first.tags.get("paper_setting")), "baseline": base,
                    "baseline_policy": max(BASELINES, key=lambda p: tput[p] or 0.0),
                    **{p: tput[p] for p in tput},
                    "tide_best_tau": get["tide"].tau if get["tide"] else None,
                    "tide_opt_tau": opt.policy_report.get("chosen_tau") if opt else None,
                    "tide_opt_vs_base": ratio("tide-opt", base), "tide_vs_base": ratio("tide", base),
                    "tide_opt_vs_static": ratio("tide-opt", "static"),
                    "riptide_vs_tide_opt": ratio("riptide", "tide-opt"), "riptide_vs_tide": ratio("riptide", "tide"),
                    "riptide_vs_oracle": ratio("riptide", "oracle")})
    return out


def markdown_table(lines: Sequence[dict[str, Any]]) -> str:
    def f(v: Any, spec: str = ".1f") -> str:
        return "–" if v is None else format(v, spec)

    def x(v: Any) -> str:
        return "–" if v is None else f"{v:.2f}x"

    head = ("| setting | B | mode | best baseline | static | tide (best τ) | tide-opt (τ) | riptide | oracle | all-gpu | "
            "tide-opt / base | tide-opt / static | riptide / tide-opt | riptide / oracle |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = []
    for h in lines:
        star = " **paper**" if h["paper_setting"] else ""
        body.append(f"| {h['model']} {h['hardware']}{star} | {h['budget']} | {h['mode']} | {f(h['baseline'])} "
                    f"({h['baseline_policy']}) | {f(h['static'])} | {f(h['tide'])} ({h['tide_best_tau']}) | {f(h['tide-opt'])} "
                    f"({h['tide_opt_tau'] if h['tide_opt_tau'] is not None else '–'}) | {f(h['riptide'])} | "
                    f"{f(h['oracle'])} | {f(h['all-gpu'])} | {x(h['tide_opt_vs_base'])} | {x(h['tide_opt_vs_static'])} | "
                    f"{x(h['riptide_vs_tide_opt'])} | {x(h['riptide_vs_oracle'])} |")
    return head + "\n".join(body) + "\n"
