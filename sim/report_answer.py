"""The answer a report leads with (plotly-free): the recommended policy placed in its setting, its predicted
tokens/s over the trace draws, its speedup over the best baseline and its share of the bound, and the caveat
when a hardware profile is an uncalibrated preset. ``sim.report`` draws it; the figures are in ``sim.spread``'s
terms (per draw, tau policies at their best tau)."""
from __future__ import annotations

import html
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from offload.errors import TideError
from offload.hardware import HARDWARE_PRESETS
from offload.policies import BASELINE_ROLES, role_of
from offload.results import SimRecord
from sim import spread

BOUND_LABEL = "bound: no policy is faster"
POLICY_FILE = "recommended-policy.json"  # sim.explore's, beside report.html


def clairvoyant_label(label: str) -> str:
    """A clairvoyant policy's label (the oracle's), spelled out as what the runtime cannot execute."""
    return f"{label} (clairvoyant heuristic, not executable)"


def baseline_throughput(rows: list[SimRecord], trace: str, budget: int | None) -> float | None:
    """The best baseline's tokens/s in ``trace`` at ``budget`` (falls back to the trace's only budget)."""
    base = [r for r in rows if r.trace == trace and role_of(r.policy) in BASELINE_ROLES]
    same = [r for r in base if r.budget == budget]
    if not same and len({r.budget for r in base}) == 1:
        same = base
    return max((r.tokens_per_s for r in same if r.tokens_per_s > 0), default=None)


def speedups(rows: list[SimRecord]) -> list[float | None]:
    """Each row's tokens/s over the best baseline of its trace and budget (None where there is none)."""
    out: list[float | None] = []
    for r in rows:
        base = baseline_throughput(rows, r.trace, r.budget)
        out.append(r.tokens_per_s / base if base else None)
    return out


@dataclass(frozen=True)
class Setting:
    """One (grid point, mode, budget) over its trace draws: each policy's ``sim.spread.Spread`` (best tau per
    draw) and each draw's bound, in tokens/s."""

    name: str
    rows: tuple[SimRecord, ...]
    spreads: tuple[spread.Spread, ...]
    bounds: np.ndarray

    def base_policy(self) -> str | None:
        """The baseline with the highest median tokens/s (None: no baseline among the rows)."""
        base = [s for s in self.spreads if role_of(s.policy) in BASELINE_ROLES]
        return max(base, key=lambda s: float(np.median(s.tokens_per_s))).policy if base else None

    def base_tokens_per_s(self) -> np.ndarray:
        """Each draw's best baseline tokens/s (nan where a draw has none)."""
        draws = sorted({spread.draw_of(r) for r in self.rows})
        bases = (spread.best_baseline(r for r in self.rows if spread.draw_of(r) == d) for d in draws)
        return np.array([b.tokens_per_s if b else float("nan") for b in bases])

    def bound_vs_base(self) -> np.ndarray:
        base = self.base_tokens_per_s()
        return self.bounds / base if self.bounds.size == base.size else np.array([])


def settings(rows: Sequence[SimRecord]) -> list[Setting]:
    """The rows split by grid point (``tags["point"]``), mode and budget; the all-gpu ceiling (which keeps every
    expert) joins each budget of its point and mode."""
    out = []
    for point in dict.fromkeys(r.tags.get("point") for r in rows):
        for mode in dict.fromkeys(r.mode for r in rows if r.tags.get("point") == point):
            rs = [r for r in rows if r.tags.get("point") == point and r.mode == mode]
            budgets = list(dict.fromkeys(r.budget for r in rs if role_of(r.policy) != "ceiling")) or [None]
            for b in budgets:
                grp = [r for r in rs if role_of(r.policy) == "ceiling" or b is None or r.budget == b]
                # a study's point label names its mode already
                name = " · ".join(str(x) for x in (point, mode) if x is not None and (x == point or str(x) not in str(point)))
                name += f" · B={b}" if len(budgets) > 1 else ""
                out.append(Setting(name, tuple(grp), tuple(spread.spreads(grp)), spread.bound_per_draw(grp)))
    return out


@dataclass(frozen=True)
class Answer:
    """The recommendation the report leads with: its row, its setting and (policy) spread, the predicted figures
    (``sim.explore.recommend``'s: tokens_per_s, its min and max, wins_share, trace_draws)."""

    row: SimRecord
    setting: Setting
    spread: spread.Spread
    predicted: Mapping[str, float]

    def vs_base(self) -> np.ndarray:
        return np.array([v for v in self.spread.vs_base if np.isfinite(v)])

    def vs_bound(self) -> np.ndarray:
        b = self.setting.bounds
        return self.spread.tokens_per_s / b if b.size == len(self.spread.rows) else np.array([])


def answer(all_settings: Sequence[Setting],
           recommended: tuple[SimRecord, Mapping[str, float]] | None = None) -> Answer | None:
    """The report's answer: ``recommended`` (a row and its predicted figures) placed in its setting, else, for
    rows of one grid point (every explore run), the fastest causal policy other than the all-gpu ceiling by median
    tokens/s over the draws (``sim.spread.recommend``); None for rows of several grid points (a study: one answer
    per point) or with nothing eligible."""
    if recommended is not None:
        row, predicted = recommended
    else:
        rows = list({id(r): r for st in all_settings for r in st.rows}.values())
        if len({r.tags.get("point") for r in rows}) != 1:
            return None
        found = spread.recommendation(rows, spread.eligible)
        if found is None:
            return None
        row, predicted = found
    st = next((st for st in all_settings if any(r is row for r in st.rows)), None)
    st = st or next((st for st in all_settings if row in st.rows), None)
    if st is None:
        raise TideError(f"the recommended run {row.label} ({row.trace}) is not among the report's rows")
    return Answer(row, st, next(s for s in st.spreads if s.policy == row.policy), dict(predicted))


def is_calibrated(hardware: Any) -> bool:
    """Whether a hardware profile (its ``to_dict()``, or a name) holds measured figures: ``validate.calibrate``
    writes measured ``tables`` and a ``calibration`` record; the presets have neither, only ``sources`` and
    ``ranges``. A preset's name is uncalibrated; any other name (a file not inlined) is taken as calibrated."""
    if isinstance(hardware, Mapping):
        return bool(hardware.get("tables")) or bool(hardware.get("calibration"))
    if isinstance(hardware, str):
        return hardware.lower() not in HARDWARE_PRESETS
    return True


def _hardware_profiles(config: Mapping[str, Any]) -> list[Any]:
    """The hardware profiles a configuration names: explore's ``hardware``, a study's ``study.hardware``."""
    if "hardware" in config:
        return [config["hardware"]]
    study = config.get("study")
    return list(study.get("hardware") or []) if isinstance(study, Mapping) else []


def _profile_name(hardware: Any) -> str:
    return str(hardware.get("name", "?")) if isinstance(hardware, Mapping) else str(hardware)


def caveat_html(config: Mapping[str, Any]) -> str:
    """One line when a hardware profile is an uncalibrated preset ("" when every one was measured)."""
    presets = [_profile_name(h) for h in _hardware_profiles(config) if not is_calibrated(h)]
    if not presets:
        return ""
    which = (f"the hardware profile ({html.escape(presets[0])}) is an uncalibrated preset, its" if len(presets) == 1
             else f"the hardware profiles ({html.escape(', '.join(presets))}) are uncalibrated presets, their")
    return (f'<p class="caveat" id="caveat">⚠ Estimates: {which} figures taken from datasheets and published '
            f"measurements with ranges; "
            f"measure this machine with <code>python -m validate.calibrate</code> and see which figures move the "
            f"answer with <code>python -m sim.explore --sensitivity</code>.</p>")


def _ratio_text(v: np.ndarray, what: str, pct: bool = False) -> str:
    """``v``'s median (as x or %) and, over several draws, its [min–max], before ``what``."""
    if v.size == 0:
        return ""
    scale, spec, unit = (100.0, ".0f", "%") if pct else (1.0, ".2f", "×")
    text = f"{format(scale * float(np.median(v)), spec)}{unit}"
    if v.size > 1:
        text += f" [{format(scale * float(v.min()), spec)}–{format(scale * float(v.max()), spec)}{unit}]"
    return f"{text} {'of ' if pct else ''}{what}"


def run_it_html(policy_file: str | Path | None) -> str:
    """The command that runs the recommended policy in the runtime: the policy file by its absolute path (it works
    from the repository root or anywhere else), or, without one, from the run directory."""
    if policy_file is not None:
        cmd = f"python -m runtime.generate --policy {shlex.quote(str(Path(policy_file).resolve()))}"
        where = ""
    else:
        cmd = f"cd RUN_DIR && python -m runtime.generate --policy {POLICY_FILE}"
        where = f" (RUN_DIR: the run directory, where sim.explore wrote this report and {POLICY_FILE})"
    return (f'<p class="meta" id="run-it">Run it: <code>{html.escape(cmd)}</code>{html.escape(where)}; the fastest '
            f"policy the runtime can execute, by median tokens/s over the trace draws.</p>")


def answer_html(ans: Answer, policy_file: str | Path | None = None) -> str:
    """The recommended policy, its predicted tokens/s (median [min-max] over draws, share of draws won), its
    speedup over the best baseline and its share of the bound (which bounds the policies within the GPU expert
    budget), and the command that runs it (``policy_file``: see :func:`run_it_html`)."""
    p, st = ans.predicted, ans.setting
    draws = int(p.get("trace_draws", 1))
    spread_text = ""
    if draws > 1:
        spread_text = (f" (median of {draws} trace draws, range {p['tokens_per_s_min']:.1f}–"
                       f"{p['tokens_per_s_max']:.1f}; fastest in {100 * p.get('wins_share', 0.0):.0f}% of them)")
    base = st.base_policy()
    base_tps = st.base_tokens_per_s()
    facts = []
    if base is not None and np.isfinite(base_tps).all():
        facts.append(_ratio_text(ans.vs_base(), f"the best baseline ({html.escape(base)}, "
                                                 f"{float(np.median(base_tps)):.1f} tokens/s)"))
    if st.bounds.size:
        facts.append(_ratio_text(ans.vs_bound(), f"the bound ({float(np.median(st.bounds)):.1f} tokens/s: no policy "
                                                  f"within the budget is faster)", pct=True))
    for s in (s for s in st.spreads if role_of(s.policy) == "clairvoyant"):
        facts.append(f"the {html.escape(s.policy)}'s {float(np.median(s.tokens_per_s)):.1f} tokens/s reads future "
                     f"routing: a clairvoyant heuristic the runtime cannot execute")
    return (f'<p class="answer">Recommended: <b class="recommended">{html.escape(ans.row.label)}</b> in '
            f"{html.escape(ans.row.mode)} mode — <b>{p['tokens_per_s']:.1f} tokens/s</b> predicted"
            f"{spread_text}.</p>\n"
            + (f'<p class="facts">{"; ".join(facts)}.</p>' if facts else "")
            + "\n" + run_it_html(policy_file))


def lead_html(ans: Answer | None, all_settings: Sequence[Setting], config: Mapping[str, Any],
              policy_file: str | Path | None = None) -> str:
    """The report's first screen, before any chart: the answer (or where to find it) and the caveat."""
    if ans is not None:
        body = answer_html(ans, policy_file)
    elif len(all_settings) > 1:
        body = (f'<p class="answer">No single recommended policy: these runs cover {len(all_settings)} settings; the '
                f"recommended policy of each (the fastest the runtime can execute) is in the table below.</p>")
    else:
        body = ('<p class="answer">Nothing is recommended: no run of a policy the runtime can execute within the '
                "budget (the oracle is clairvoyant; all-gpu keeps every expert).</p>")
    return f'<section id="answer" class="answer">\n{body}\n{caveat_html(config)}\n</section>'
