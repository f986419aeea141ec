"""Running a study (``python -m sim.explore --study paper|FILE.json``; the grid is data, ``sim.study_spec``; explore's
plain run is the one-point study its options describe) and its tables. Every figure of a table is taken per trace
draw (``sim.spread``: draw 0 the calibrated generator, the others with its uncertain parameters drawn) from the
best run of each policy (tau policies at their best tau), then as a median (or mean) with its [min-max].

Budget per layer B = floor(f E), capped by what fits the GPU next to the non-expert weights and a reserve
for activations and workspace:

  B_max = floor((M_gpu - M_non_expert - M_reserve) / (L expert_bytes)),   M_reserve = the study's reserve_gib

Fractions that cap to the same B collapse into one grid point (its label keeps every fraction asked); a study's
``budgets`` are taken as given. The points marked as the paper's setting come from the study's ``paper_setting``
(TIDE, arXiv 2605.20179: prefix-recompute, mini at 128 of 256 experts per layer, flash at the largest budget that
fits 80 GB).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from offload.budget import GIB
from offload.errors import TideError
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import POLICIES, parse_policy, role_of, sweeps_tau, with_role
from offload.results import SimRecord
from offload.trace_io import read_trace, write_trace
from sim import spread
from sim.study_spec import TABLES, StudySpec, TableSpec
from sim.sweep import Task, model_payload

RESERVE_GIB = 4.0  # the default reserve for activations and workspace next to the weights
TAU_ROLES = ("refresh", "paper")  # the roles whose tables show the refresh interval each draw's best run used
# the ratios of a headline (headline.json); its tables show some of them
RATIOS = (("paper", "base"), ("refresh", "base"), ("paper", "fixed"), ("ours", "paper"), ("ours", "refresh"),
          ("ours", "clairvoyant"), ("ours", "bound"), ("paper", "bound"))


@dataclass(frozen=True)
class Point:
    model: str
    hardware: str
    budget: int
    fractions: tuple[float, ...]
    capped: bool
    mode: str
    gen_length: int | None = None  # None: the study's only one (an axis of one value is not in the label)

    @property
    def label(self) -> str:
        frac = "/".join(f"{round(100 * f)}%" for f in self.fractions)
        asked = f" ({frac}{', capped' if self.capped else ''})" if self.fractions else ""
        gen = f" {self.gen_length} tokens" if self.gen_length else ""
        return f"{self.model} {self.hardware} B={self.budget}{asked} {self.mode}{gen}"

    def tags(self) -> dict[str, Any]:
        gen = {"gen_length": self.gen_length} if self.gen_length else {}
        return {"model": self.model, "hardware": self.hardware, "fractions": list(self.fractions),
                "capped": self.capped, "point": self.label, **gen}


@dataclass(frozen=True)
class Replay:
    """One trace file a grid point replays: its name (the file's stem), path and draw."""

    name: str
    path: str
    draw: int


TraceKey = tuple[str, str, "int | None"]  # (model, mode, gen_length: None where the study has one)


def max_fitting_budget(model: ModelSpec, hw: HardwareProfile, reserve_gib: float = RESERVE_GIB) -> int:
    free = hw.gpu_memory_bytes - model.non_expert_bytes - reserve_gib * GIB
    return max(0, min(model.num_experts, int(free // (model.num_moe_layers * model.expert_bytes))))


def _budgets(study: StudySpec, spec: ModelSpec, hw: HardwareProfile) -> dict[int, list[float]]:
    """Budget -> the fractions asked that give it (none for a study's own ``budgets``)."""
    if study.budgets:
        if max(study.budgets) > spec.num_experts:
            raise TideError(f"study {study.name}: budget {max(study.budgets)} exceeds the {spec.num_experts} "
                            f"routed experts of {spec.name}")
        return {b: [] for b in study.budgets}
    cap = max_fitting_budget(spec, hw, study.reserve_gib)
    by_budget: dict[int, list[float]] = {}
    for f in study.fractions:
        b = min(max(1, int(f * spec.num_experts)), cap)
        if b >= 1:
            by_budget.setdefault(b, []).append(f)
    return by_budget


def _gens(study: StudySpec) -> tuple[int | None, ...]:
    return study.gen_length if len(study.gen_length) > 1 else (None,)


def grid_points(study: StudySpec, traces: Mapping[TraceKey, Any] | None = None) -> list[Point]:
    """model x hardware x budget x gen_length x mode; a study of trace files has the modes of its ``traces``."""
    modes = tuple(dict.fromkeys(mode for _, mode, _ in traces or {})) if study.traces else study.modes
    points: list[Point] = []
    for m in study.models:
        spec = ModelSpec.load(m)
        for h in study.hardware:
            for b, fs in _budgets(study, spec, HardwareProfile.load(h)).items():
                capped = any(int(f * spec.num_experts) > b for f in fs)
                points += [Point(m, h, b, tuple(fs), capped, mode, g) for g in _gens(study) for mode in modes]
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


def make_traces(study: StudySpec, out: Path) -> dict[TraceKey, list[Replay]]:
    """(model, mode, gen_length) -> its traces, written to ``out/traces``: the study's trace files (those of one
    mode its draws), or ``study.seeds`` synthetic draws per model, gen_length and mode (``sim.spread``)."""
    if study.traces:
        return _trace_files(study, out)
    from traces.synthetic_draws import draw_trace

    given = {k: getattr(study, k) for k in ("block_length", "prompt_length", "tokens_per_forward", "eos_stop")}
    overrides = {k: v for k, v in given.items() if v is not None}
    paths: dict[TraceKey, list[Replay]] = {}
    for m in study.models:
        spec = ModelSpec.load(m)
        for gen in _gens(study):
            for mode in study.modes:
                for draw in range(study.seeds):
                    trace = draw_trace(spec, mode, study.seed, draw, gen_length=gen or study.gen_length[0],
                                       **overrides)
                    parts = [spec.name] * (len(study.models) > 1) + [mode] + [str(gen)] * bool(gen)
                    name = "-".join(parts) + (f"-draw{draw}" if study.seeds > 1 else "")
                    path = str(write_trace(trace, out / "traces" / f"{name}.npz"))
                    paths.setdefault((m, mode, gen), []).append(Replay(name, path, draw))
    return paths


def _trace_files(study: StudySpec, out: Path) -> dict[TraceKey, list[Replay]]:
    (model,) = study.models
    spec = ModelSpec.load(model)
    paths: dict[TraceKey, list[Replay]] = {}
    for f in study.traces:
        trace = read_trace(f, model=spec)
        name = Path(f).stem
        if any(r.name == name for rs in paths.values() for r in rs):
            raise TideError(f"two traces named {name!r}; rename one")
        group = paths.setdefault((model, trace.mode, None), [])
        group.append(Replay(name, str(write_trace(trace, out / "traces" / f"{name}.npz")), len(group)))
    return paths


def policy_grid(policies: Sequence[str], taus: Sequence[int]) -> list[tuple[str, dict[str, Any]]]:
    """(policy, params) pairs from policy specs (``name`` or ``name(k=v, ...)``): a policy whose tau is a sweep
    knob and not given runs once per tau, every other spec once, as written."""
    grid: list[tuple[str, dict[str, Any]]] = []
    for text in dict.fromkeys(policies):
        name, params = parse_policy(text)
        if sweeps_tau(name) and "tau" not in params:
            grid += [(name, {**params, "tau": t}) for t in sorted(set(taus))]
        else:
            grid.append((name, params))
    unique = dict.fromkeys((n, tuple(sorted(p.items()))) for n, p in grid)  # a spec given twice runs once
    return [(n, dict(p)) for n, p in unique]


def study_tasks(study: StudySpec, points: Sequence[Point], traces: Mapping[TraceKey, list[Replay]],
                executor: dict[str, Any] | None = None, per_trace: bool = False) -> list[Task]:
    """Every (point, draw, policy) run; ``executor``: an ExecutorProfile dict (None: the default, tide-moe). A
    study's rows are named by their grid point and tagged with it; ``per_trace`` (explore's one setting) names
    them by their trace and tags only a synthetic draw."""
    tasks = []
    payloads = {m: model_payload(ModelSpec.load(m)) for m in {p.model for p in points}}
    profiles = {h: HardwareProfile.load(h).to_dict() for h in {p.hardware for p in points}}
    policies = policy_grid(study.policies, study.tau)
    for p in points:
        tags = {**p.tags(), "paper_setting": paper_setting(p, points, study)}
        for rp in traces[(p.model, p.mode, p.gen_length)]:
            name, row_tags = (p.label, {**tags, "draw": rp.draw}) if not per_trace else (
                rp.name, {} if study.traces else {"draw": rp.draw})
            tasks += [Task(rp.path, name, payloads[p.model], profiles[p.hardware], p.budget, pol, params, row_tags,
                           executor=executor) for pol, params in policies]
    return tasks


# ---- tables ----------------------------------------------------------------------------------------------------
def ratio_columns(ratios: Sequence[Sequence[str]], labels: Mapping[str, str] | None = None
                  ) -> list[tuple[str, str, str, str]]:
    """(key, numerator policy, denominator, header) per ratio and policy of its numerator's role. A denominator
    is "base" (the best baseline), "bound" or a role: its best policy, named by it when alone, else by ``labels``
    (or "best <role>")."""
    out = []
    for num, den, *note in ratios:
        alone = with_role(den)[0] if len(with_role(den)) == 1 else None
        name = alone or (labels or {}).get(den, den if den in ("base", "bound") else f"best {den}")
        key = (alone or den).replace("-", "_")
        out += [(f"{p.replace('-', '_')}_vs_{key}", p, den, f"{p} / {name}" + "".join(f" ({n})" for n in note))
                for p in with_role(num)]
    return out


def tau_key(policy: str) -> str:
    """The headline's key for the taus of ``policy`` (a policy of a TAU_ROLES role): its best tau if swept."""
    return f"{policy.replace('-', '_')}_{'best_tau' if sweeps_tau(policy) else 'tau'}"


def _draw_headline(rs: Sequence[SimRecord], ratios: Sequence[Sequence[str]]) -> dict[str, Any]:
    """One grid point in one draw: each policy's tokens/s (tau policies at their best tau), the best baseline,
    the bound, the ratios and the taus."""
    best = {p: spread.best(rs, p) for p in POLICIES}
    tput = {p: (r.tokens_per_s if r else None) for p, r in best.items()}
    base = spread.best_baseline(rs)
    out: dict[str, Any] = {**tput, "baseline": base.tokens_per_s if base else None, "bound": spread.bound_of(rs),
                           "baseline_policy": base.policy if base else None}
    for key, p, den, _ in ratio_columns(ratios):
        y = {"base": out["baseline"], "bound": out["bound"]}.get(den) or max(
            (tput[q] for q in with_role(den) if tput[q]), default=None)
        out[key] = tput[p] / y if tput[p] and y else None
    for p in with_role(*TAU_ROLES):
        out[tau_key(p)] = best[p].policy_report.get("chosen_tau", best[p].tau) if best[p] else None
    return out


def headline(rows: Sequence[SimRecord], stat: str = "median",
             ratios: Sequence[Sequence[str]] = RATIOS) -> list[dict[str, Any]]:
    """Per grid point, over the draws (``sim.spread``; a row's draw is ``tags["draw"]``, default 0): the ``stat``
    (median or mean) and ``<column>_range`` [min, max] of the tokens/s of the best baseline (a policy of a
    ``BASELINE_ROLES`` role; ``baseline_policy`` names it), of each policy (tau policies at their best tau), of the
    bound (``sim.bound``: no policy is faster) and of ``ratios`` (``TableSpec.ratios``), each ratio taken within a
    draw. ``<policy>_best_tau`` / ``<policy>_tau`` list each draw's tau for the refreshing roles; ``recommended``
    is the causal policy (the ceiling only where the point's budget is every expert) with the highest median
    tokens/s, and ``recommended_wins`` the share of draws in which it is the fastest."""
    out = []
    aggregate: Callable[[np.ndarray], Any] = np.mean if stat == "mean" else np.median
    for point in dict.fromkeys(r.tags["point"] for r in rows):
        rs = [r for r in rows if r.tags["point"] == point]
        draws = sorted({spread.draw_of(r) for r in rs})
        per = [_draw_headline([r for r in rs if spread.draw_of(r) == d], ratios) for d in draws]
        first = rs[0]
        budget = next((r.budget for r in rs if role_of(r.policy) != "ceiling"), None)  # the ceiling's: every expert
        best, wins = spread.recommend(rs, lambda r, budget=budget: spread.eligible(r, r.budget == budget))
        gen = f", {first.tags['gen_length']} tokens" if "gen_length" in first.tags else ""
        line: dict[str, Any] = {"point": point, "model": first.tags["model"], "hardware": first.tags["hardware"],
                                "budget": budget, "paper_setting": bool(first.tags.get("paper_setting")),
                                "mode": first.mode + gen,
                                "draws": len(draws)}
        for key in ("baseline", *POLICIES, "bound", *(c[0] for c in ratio_columns(ratios))):
            known = np.array([h[key] for h in per if h[key] is not None], dtype=float)
            line[key] = float(aggregate(known)) if known.size == len(per) else None
            line[f"{key}_range"] = [float(known.min()), float(known.max())] if known.size == len(per) else None
        bases = [h["baseline_policy"] for h in per]
        line["baseline_policy"] = max(set(bases), key=bases.count)
        line.update({tau_key(p): [h[tau_key(p)] for h in per] for p in with_role(*TAU_ROLES)})
        line["recommended"], line["recommended_wins"] = (best.label if best else None), wins
        out.append(line)
    return out


def _taus(v: Sequence[Any]) -> str:
    """Each draw's tau, distinct values joined by '/' ('–' when none; a per-layer list as its min-max)."""
    shown = dict.fromkeys(f"{min(t)}-{max(t)}" if isinstance(t, list) else str(t) for t in v if t is not None)
    return "/".join(shown) or "–"


def columns(spec: TableSpec) -> list[tuple[str, str | None, Callable[[dict[str, Any]], str]]]:
    """(header, headline key of a figure or None, cell of a headline line) of each column of ``spec``."""
    def f(h: dict[str, Any], key: str, fmt: str = ".1f", unit: str = "") -> str:
        v, r = h.get(key), h.get(f"{key}_range")
        if v is None:
            return "–"
        if r is None or h["draws"] < spec.ranges_from:
            return format(v, fmt) + unit
        return f"{format(v, fmt)}{unit} [{format(r[0], fmt)}-{format(r[1], fmt)}]"

    def setting(h: dict[str, Any]) -> str:
        return f"{h['model']} {h['hardware']}" + (" **paper**" if h["paper_setting"] and not spec.paper_only else "")

    cols: list[tuple[str, str | None, Callable[[dict[str, Any]], str]]] = [{
        "executor": ("executor", None, lambda h: h["executor"]), "B": ("B", None, lambda h: str(h["budget"])),
        "setting": ("setting", None, setting), "mode": ("mode", None, lambda h: h["mode"])}[c] for c in spec.lead]
    for c in spec.columns:
        if c in ("base", "bound"):
            cols.append(("best baseline", "baseline", lambda h: f"{f(h, 'baseline')} ({h['baseline_policy'] or '–'})")
                        if c == "base" else ("bound", "bound", lambda h: f(h, "bound")))
        elif c == "recommended":
            cols.append(("recommended (wins)", None, lambda h: "–" if not h["recommended"] else
                         f"{h['recommended']} ({100 * h['recommended_wins']:.0f}%)"))
        for key, _, _, label in ratio_columns(spec.ratios, spec.labels) if c == "ratios" else ():
            cols.append((label, None, lambda h, key=key: f(h, key, ".2f", "x")))
        for p in with_role(c):
            taus = spec.taus and c in TAU_ROLES
            label = p + (" (best τ)" if sweeps_tau(p) else " (τ)" if taus else "")
            cols.append((label, p, lambda h, p=p, taus=taus: f(h, p)
                         + (f" ({_taus(h.get(tau_key(p)) or [])})" if taus else "")))
    return cols


def markdown_table(lines: Sequence[dict[str, Any]], spec: TableSpec = TABLES["headline"]) -> str:
    """Headline lines as markdown, the columns of ``spec``: figures with their [min-max] over draws (from
    ``spec.ranges_from`` draws); only the paper's setting where ``spec.paper_only``."""
    cols = columns(spec)
    head = "| " + " | ".join(c[0] for c in cols) + " |\n|" + "---|" * len(cols) + "\n"
    shown = [h for h in lines if h["paper_setting"] or not spec.paper_only]
    return head + "\n".join("| " + " | ".join(c[2](h) for c in cols) + " |" for h in shown) + "\n"


def study_table(results: Mapping[str, Sequence[SimRecord]], spec: TableSpec) -> str:
    """The table of ``spec`` over every executor's rows (``results``: executor name -> rows)."""
    lines = [{**h, "executor": x} for x, rows in results.items() for h in headline(rows, spec.stat, spec.ratios)]
    return markdown_table(lines, spec)
