"""How much the answer hangs on guessed figures: each uncertain figure at both ends of its range.

A roofline hardware profile and the ``tide-reference`` executor carry guessed figures, each with a plausible
``[low, high]`` range (``offload.hardware.RANGE_FIGURES``, ``ExecutorProfile.ranges``) and a source. For every such
figure f and each end v of its range, :func:`sensitivity` reruns the run's tasks with f = v (everything else as
given; ``sim.sweep.run_tasks``, so in parallel) and recomputes, as ``sim.explore`` does:

  recommendation   the causal, eligible (policy, mode) with the highest median tokens/s (``sim.spread.recommend``)
  headline ratio   R = median over draws of  tps(recommended) / max_{b in BASELINES} tps(b)   (same mode and draw)
  paper ratio      P = the same for tide-opt in the base recommendation's mode (the paper's tide-opt / best baseline)

and per figure the relative changes  d_end = R(f = end) / R_base - 1  (likewise for P), its swing
max(|d_low|, |d_high|), and whether the recommended (policy, mode) differs at either end (a flip). A figure is
flagged when it flips the recommendation or moves R or P by more than ``threshold`` (10%).

Runs are bounded: only the draw-0 trace of each mode (``draws``), only tasks that can change R, P or the
recommendation (causal policies; all-gpu only where it may be recommended), and no run for an end equal to the
figure's value (that end is the base run). So the cost is at most 2 x figures x (kept tasks) runs.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from offload.atomic_io import atomic_write_text
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.policies import POLICIES, role_of, with_role
from offload.results import SimRecord
from sim import spread
from sim.sweep import Task, run_tasks

THRESHOLD = 0.10   # |relative change| of a ratio that flags a figure
PAPER_POLICY = with_role("paper")[0]  # the paper's method (tide-opt), whose ratio P is
EXECUTOR_PREFIX = "executor."  # labels of executor figures, so they never collide with hardware paths


@dataclass(frozen=True)
class Figure:
    """One uncertain figure: ``owner`` 'hardware' or 'executor', its dotted ``path`` there, value and range."""

    owner: str
    path: str
    value: float
    low: float
    high: float
    source: str = ""

    @property
    def label(self) -> str:
        return self.path if self.owner == "hardware" else EXECUTOR_PREFIX + self.path


@dataclass(frozen=True)
class Outcome:
    """What a set of rows recommends, and the two ratios (nan where a side is missing)."""

    policy: str
    mode: str
    label: str            # the recommended row's label (its tau), as the console shows it
    ratio: float          # R: recommended / best baseline, median over draws
    paper: float          # P: tide-opt / best baseline in the base recommendation's mode

    @property
    def choice(self) -> tuple[str, str]:
        return self.policy, self.mode


@dataclass(frozen=True)
class FigureSwing:
    """One figure's effect: the outcome at each end of its range against the base outcome."""

    figure: Figure
    base: Outcome
    low: Outcome
    high: Outcome

    @staticmethod
    def _rel(x: float, base: float) -> float:
        return x / base - 1.0 if np.isfinite(x) and np.isfinite(base) and base > 0 else float("nan")

    @property
    def deltas(self) -> tuple[float, float]:
        """(d_low, d_high) = R(end) / R_base - 1."""
        return self._rel(self.low.ratio, self.base.ratio), self._rel(self.high.ratio, self.base.ratio)

    @property
    def paper_deltas(self) -> tuple[float, float]:
        return self._rel(self.low.paper, self.base.paper), self._rel(self.high.paper, self.base.paper)

    @property
    def swing(self) -> float:
        """max(|d_low|, |d_high|) of the headline ratio (0 where undefined)."""
        return float(np.nanmax(np.abs([*self.deltas, 0.0])))

    @property
    def paper_swing(self) -> float:
        return float(np.nanmax(np.abs([*self.paper_deltas, 0.0])))

    @property
    def flips(self) -> tuple[bool, bool]:
        """Whether the recommended (policy, mode) differs from the base one at the low / high end."""
        return self.low.choice != self.base.choice, self.high.choice != self.base.choice

    def flagged(self, threshold: float = THRESHOLD) -> bool:
        return any(self.flips) or self.swing > threshold or self.paper_swing > threshold

    def to_dict(self, threshold: float = THRESHOLD) -> dict[str, Any]:
        f = self.figure
        return {"figure": f.label, "owner": f.owner, "path": f.path, "value": f.value, "low": f.low, "high": f.high,
                "source": f.source, "low_end": asdict(self.low), "high_end": asdict(self.high),
                "ratio_delta": list(self.deltas), "paper_delta": list(self.paper_deltas), "swing": self.swing,
                "paper_swing": self.paper_swing, "flips": list(self.flips), "flagged": self.flagged(threshold)}


@dataclass(frozen=True)
class Sensitivity:
    """Every figure's swing, largest first, with the base outcome and what the analysis cost."""

    base: Outcome
    rows: tuple[FigureSwing, ...]
    runs: int               # extra simulations run (ends equal to the figure's value reuse the base)
    tasks: int              # tasks per variant (draw-0 traces x eligible policy runs)
    seconds: float
    threshold: float = THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "base": asdict(self.base), "runs": self.runs,
                "tasks_per_variant": self.tasks, "seconds": self.seconds,
                "flagged": [r.figure.label for r in self.rows if r.flagged(self.threshold)],
                "figures": [r.to_dict(self.threshold) for r in self.rows]}

    def table(self) -> str:
        """A console table, one line per figure, largest swing first."""
        b = self.base
        head = (f"sensitivity: recommended {b.label} in {b.mode} mode at {_x(b.ratio)} the best baseline "
                f"({PAPER_POLICY} {_x(b.paper)}) on the draw-0 trace of each mode; {len(self.rows)} uncertain figures at both ends of their ranges, "
                f"{self.runs} runs in {self.seconds:.1f} s; flagged: a flip of the recommendation or a ratio moved "
                f"by more than {100 * self.threshold:.0f}%")
        lines = [head, f"  {'figure':<34}{'value':>9}{'low':>9}{'high':>9}{'ratio low':>16}{'ratio high':>16}"
                       f"{'swing':>7}{PAPER_POLICY + ' low/high':>20}  flag"]
        for r in self.rows:
            f, (dl, dh), (pl, ph), (fl, fh) = r.figure, r.deltas, r.paper_deltas, r.flips
            flag = [f"FLIP {end}: {o.label} in {o.mode}" for end, o, x in (("low", r.low, fl), ("high", r.high, fh)) if x]
            if r.swing > self.threshold or r.paper_swing > self.threshold:
                flag.insert(0, f">{100 * self.threshold:.0f}%")
            lines.append(f"  {f.label:<34}{f.value:>9.4g}{f.low:>9.4g}{f.high:>9.4g}"
                         f"{_ratio(r.low.ratio, dl):>16}{_ratio(r.high.ratio, dh):>16}{_pct(r.swing):>7}"
                         f"{_pct(pl, signed=True) + '/' + _pct(ph, signed=True):>20}  {'; '.join(flag)}")
        return "\n".join(lines)


def _x(v: float) -> str:
    return f"{v:.2f}x" if np.isfinite(v) else "n/a (no run)"


def _pct(x: float, signed: bool = False) -> str:
    return "nan" if not np.isfinite(x) else f"{100 * x:+.0f}%" if signed else f"{100 * x:.0f}%"


def _ratio(x: float, d: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.2f}x ({_pct(d, signed=True)})"


# ---- figures ------------------------------------------------------------------------------------------------
def _hardware_source(hw: HardwareProfile, path: str) -> str:
    """The profile's source line that names ``path`` first (free text: the best pointer there is)."""
    return next((s for s in hw.sources if s.startswith(path)), next((s for s in hw.sources if path in s), ""))


def uncertain_figures(hardware: Mapping[str, Any], executor: Mapping[str, Any] | None) -> list[Figure]:
    """Every figure with a range: the hardware profile's, then the executor's (None: the default executor)."""
    hw = HardwareProfile.from_dict(hardware)
    out = [Figure("hardware", p, float(hw.figure(p)), lo, hi, _hardware_source(hw, p)) for p, (lo, hi) in hw.ranges.items()]
    if executor is not None:
        x = ExecutorProfile.from_dict(executor)
        for p, (lo, hi) in x.ranges.items():
            field, _, sub = p.partition(".")
            v = x.decide_us.get(sub, x.decide_default_us) if field == "decide_us" and sub else getattr(x, field)
            out.append(Figure("executor", p, float(v), lo, hi, x.sources.get(p, x.sources.get(field, ""))))
    return out


def executor_with(executor: Mapping[str, Any], path: str, value: float) -> dict[str, Any]:
    """The executor dict with the figure at ``path`` (a field, or ``decide_us.<policy>``) set to ``value``; the
    result goes through ``ExecutorProfile.from_dict``, so a value it refuses is its one-line error."""
    d = json.loads(json.dumps(executor))  # a deep copy: tasks share the dict
    field, _, sub = path.partition(".")
    if field == "decide_us" and sub:
        d.setdefault("decide_us", {})[sub] = float(value)
    else:
        d[field] = type(d.get(field, value))(value)  # staging_slots stays an integer
    return ExecutorProfile.from_dict(d, origin=f"executor with {path} = {value:g}").to_dict()


@lru_cache(maxsize=256)
def _hardware_with(hardware_json: str, path: str, value: float) -> str:
    return json.dumps(HardwareProfile.from_dict(json.loads(hardware_json)).with_figure(path, value).to_dict())


def varied(task: Task, figure: Figure, value: float) -> Task:
    """``task`` with ``figure`` set to ``value``."""
    if figure.owner == "hardware":
        return replace(task, hardware=json.loads(_hardware_with(json.dumps(task.hardware, sort_keys=True),
                                                                figure.path, value)))
    if task.executor is None:
        raise TideError(f"{figure.label}: the task runs the default executor, which has no such figure")
    return replace(task, executor=executor_with(task.executor, figure.path, value))


# ---- outcomes -----------------------------------------------------------------------------------------------
def outcome(rows: Sequence[SimRecord], eligible: Callable[[SimRecord], bool], paper_mode: str | None = None) -> Outcome:
    """The recommendation of ``rows`` (``sim.spread.recommend``, as ``sim.explore.recommend``), R and P.

    P is tide-opt's median ratio to the best baseline in ``paper_mode`` (default: the recommended mode)."""
    best, _ = spread.recommend(rows, eligible)
    if best is None:
        raise TideError("sensitivity: nothing to recommend (no causal policy that keeps to the budget)")
    labels = [r.label for r in best.rows]
    mode = best.mode if paper_mode is None else paper_mode
    paper = next((s for s in spread.spreads(rows) if s.mode == mode and s.policy == PAPER_POLICY), None)
    return Outcome(best.policy, best.mode, max(set(labels), key=labels.count), _median(best.vs_base),
                   float("nan") if paper is None else _median(paper.vs_base))


def _median(v: Sequence[float]) -> float:
    v = np.asarray(v, dtype=float)
    return float(np.median(v)) if v.size and np.all(np.isfinite(v)) else float("nan")


def _kept(task: Task, all_gpu_allowed: bool, draws: Sequence[int]) -> bool:
    """A task whose row can change R, P or the recommendation, on a kept draw."""
    cls = POLICIES.get(task.policy)
    useful = cls is not None and cls.causal and (role_of(task.policy) != "ceiling" or all_gpu_allowed)
    return useful and int(task.tags.get("draw", 0)) in set(draws)


# ---- the analysis -------------------------------------------------------------------------------------------
def sensitivity(tasks: Sequence[Task], all_gpu_allowed: bool, base_rows: Sequence[SimRecord] | None = None,
                draws: Sequence[int] = (0,), threshold: float = THRESHOLD, workers: int | None = None,
                progress: bool = False, ray_address: str | None = None) -> Sensitivity:
    """Each uncertain figure of the tasks' hardware profile and executor at both ends of its range.

    ``base_rows``: the rows the tasks already gave, in task order (``run_tasks``'s), reused as the base; None:
    the base is run here. All tasks must share one hardware profile and one executor (``sim.explore``'s do)."""
    t0 = time.perf_counter()
    if base_rows is not None and len(base_rows) != len(tasks):
        raise TideError(f"sensitivity: {len(base_rows)} base rows for {len(tasks)} tasks")
    pairs = [(t, None if base_rows is None else base_rows[i]) for i, t in enumerate(tasks)
             if _kept(t, all_gpu_allowed, draws)]
    if not pairs:
        raise TideError(f"sensitivity: no runnable policy run on trace draw(s) {', '.join(map(str, draws))}")
    kept = [t for t, _ in pairs]
    if len({json.dumps(t.hardware, sort_keys=True) for t in kept}) > 1 or \
            len({json.dumps(t.executor, sort_keys=True) for t in kept}) > 1:
        raise TideError("sensitivity: the tasks use more than one hardware profile or executor (a study grid); "
                        "run it on one explore run")
    eligible = partial(spread.eligible, ceiling=all_gpu_allowed)  # as sim.explore.recommend's
    base_list = [r for _, r in pairs] if base_rows is not None else run_tasks(kept, workers, progress, ray_address)
    base = outcome(base_list, eligible)
    figures = uncertain_figures(kept[0].hardware, kept[0].executor)
    # one batch of every (figure, end) that differs from the figure's value: run_tasks spreads it over the workers
    variants = [(f, end, v) for f in figures for end, v in (("low", f.low), ("high", f.high)) if v != f.value]
    batch = [varied(t, f, v) for f, _, v in variants for t in kept]
    rows = run_tasks(batch, workers, progress, ray_address) if batch else []
    n = len(kept)
    ends: dict[tuple[str, str], Outcome] = {}
    for i, (f, end, _) in enumerate(variants):
        ends[(f.label, end)] = outcome(rows[i * n:(i + 1) * n], eligible, paper_mode=base.mode)
    swings = [FigureSwing(f, base, ends.get((f.label, "low"), base), ends.get((f.label, "high"), base))
              for f in figures]
    # largest headline swing first, flips before equal swings, then the paper ratio's swing
    swings.sort(key=lambda s: (-s.swing, not any(s.flips), -s.paper_swing, s.figure.label))
    return Sensitivity(base, tuple(swings), len(batch), n, time.perf_counter() - t0, threshold)


def _no_nan(obj: Any) -> Any:
    """JSON has no NaN: an undefined ratio (no baseline or no tide-opt run) is written as null."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def write_sensitivity(path: str | Path, result: Sensitivity) -> Path:
    """``sensitivity.json`` (atomically)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(_no_nan(result.to_dict()), indent=1, allow_nan=False) + "\n")
    return path


__all__ = ["Figure", "Outcome", "FigureSwing", "Sensitivity", "uncertain_figures", "executor_with", "varied",
           "outcome", "sensitivity", "write_sensitivity", "THRESHOLD"]
