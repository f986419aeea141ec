"""One self-contained HTML report of a set of simulated runs (plotly; the only module that imports it).

``write_report(path, rows, config, recommended=(row, predicted))`` writes a single HTML file with plotly.js
embedded (it opens offline in any browser), atomically. Each row is an :class:`offload.results.SimRecord`
(``sim.sweep``'s rows). The report leads with the answer; in order:

  answer      the recommended policy (``sim.explore.recommend``: the fastest policy the runtime can execute, by
              median tokens/s over the trace draws) with its predicted tokens/s, [min-max] over draws and share
              of draws won, its speedup over the best baseline (a policy of a BASELINE_ROLES role), its share of the
              bound (``sim.bound``: no policy within the GPU expert budget is faster) and the command that runs it
              (the policy file by its absolute path); a one-line caveat when the hardware profile is an
              uncalibrated preset; and (a) the speedup chart: each policy at its best tau over the best baseline,
              the recommended one highlighted, the oracle (clairvoyant, not executable) and the bound marked, the
              all-gpu ceiling labelled as outside the budget (it keeps every expert, so it may pass the bound)
  charts      (b) throughput (tokens/s) against tau per policy; policies without tau are horizontal reference
              lines, as is tide-opt where the tau it chose lies outside the swept range
              (c) GPU hit ratio (share of token-assignments computed on the GPU) against tau
              (d) bytes moved over the host link: H2D weights, H2D activations, D2H activations
              (e) resource utilisation: busy time / simulated time of the GPU, CPU, H2D and D2H engines
              then any extra ``sections`` (e.g. the sensitivity tornado chart)
  table       every row's headline metrics, the recommended policy's rows in bold, the oracle and the bound labelled
  config      the resolved configuration, collapsed (<details>)

Without ``recommended`` the report derives it from the rows (causal policies other than the all-gpu ceiling);
rows of several settings (a study's grid points, ``tags["point"]``) have no single answer: the lead points to the
per-setting table passed as ``intro_html``.

Every chart has its section heading and a note on what it draws (HTML, which wraps), a short title at its top
left and its legend to the right of its panels, clear of every title; bar values are written horizontally. The
page is checked in headless Chromium by tests/sim/test_report_browser.py (benchmarks/report_screenshot.py).
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from offload.policies import BASELINE_ROLES, role_of, with_role
from offload.errors import TideError
from offload.results import RESOURCES, SimRecord
from offload.atomic_io import atomic_write_text
from sim import spread
from sim.report_answer import (BOUND_LABEL, POLICY_FILE, Answer, Setting, answer, clairvoyant_label,
                               baseline_throughput, lead_html, settings, speedups)

SECTION_TITLES = {
    "throughput": "Throughput vs refresh interval tau",
    "speedup": "Speedup over the best baseline (cpu-route, static or fetch-lru)",
    "hit_ratio": "GPU hit ratio vs tau",
    "bytes": "Bytes moved over the host link",
    "utilisation": "Resource utilisation",
}
_LETTERS = {"speedup": "a", "throughput": "b", "hit_ratio": "c", "bytes": "d", "utilisation": "e"}  # reading order
#: what each chart draws, under its heading (HTML wraps it: a figure title would be cut off at the chart's edge)
SECTION_NOTES = {
    "speedup": "Each policy at its best tau, in tokens/s over the best baseline of the same trace and budget; "
               "bars: the median over the trace draws, whiskers: their [min–max]. Dashed line: the bound "
               "(sim.bound) for the GPU expert budget: no policy that keeps at most that many experts per layer on the "
               "GPU is faster. all-gpu keeps every expert on the GPU, outside the budget: the ceiling, not a policy "
               "within the budget, so its bar may pass the bound. The oracle reads future routing: a clairvoyant "
               "heuristic the runtime cannot execute.",
    "throughput": "Generated (committed) tokens/s against tau, one panel per trace. Dashed: policies without tau "
                  "(tide-opt: the tau it chose, where outside the sweep); dotted: the all-gpu ceiling. The buttons "
                  "switch the y axes to a log scale.",
    "hit_ratio": "Share of the routed token-assignments computed on the GPU, in %.",
    "bytes": "Per policy, stacked: H2D weights + H2D activations + D2H activations, in GB (1e9 B).",
    "utilisation": "Busy time / simulated time of the GPU, CPU, H2D and D2H engines, in %.",
}
_FIXED_COLOURS = ("#222222", "#d62728", "#8c564b", "#ff7f0e")  # the ceiling's, then the baselines' (_Layout)
_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
_BYTE_PARTS = (("H2D weights", "#1f77b4"), ("H2D activations", "#aec7e8"), ("D2H activations", "#ff9896"))
_RESOURCE_COLOURS = {"gpu": "#2ca02c", "cpu": "#d62728", "h2d": "#1f77b4", "d2h": "#ff7f0e"}
_BAR_COLOURS = {"recommended": "#1a9850", "clairvoyant": "#bdbdbd", "baseline": "#fdae61", "ceiling": "#555555",
                "other": "#74add1"}
_GB = 1e9
_PANEL_H = 380
_MAX_COLS = 3
_LEAD_COLS = 2
_BAR_H = 30
_LEGEND = {"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top", "tracegroupgap": 4}
_MAX_TAU_TICKS = 16


# ---- row helpers ----------------------------------------------------------------------------------------
def _bytes(r: SimRecord) -> tuple[float, float, float]:
    """H2D weights, H2D activations, D2H activations."""
    c = r.counters
    return c.h2d_weight_bytes, c.h2d_bytes - c.h2d_weight_bytes, c.d2h_bytes


def swept(r: SimRecord) -> bool:
    """Whether the row's tau is a swept parameter (tide(tau=4)), not one the policy chose itself (tide-opt)."""
    return r.tau is not None and "tau" in r.params


def chose_tau(r: SimRecord) -> bool:
    """Whether the row's tau is the one the policy chose for itself (tide-opt)."""
    return r.tau is not None and "tau" not in r.params


def display_label(r: SimRecord) -> str:
    """The row's label, a clairvoyant policy's (the oracle's) spelled out as not executable."""
    return clairvoyant_label(r.label) if role_of(r.policy) == "clairvoyant" else r.label


class _Layout:
    """Series naming, colours and panel placement shared by every figure."""

    def __init__(self, rows: list[SimRecord]) -> None:
        self.traces = list(dict.fromkeys(r.trace for r in rows))
        index = {t: i for i, t in enumerate(self.traces)}
        # the ceiling first, then the baselines (registry order), each with a colour of its own; the rest by name
        fixed = with_role("ceiling") + with_role(*BASELINE_ROLES)
        rank, fixed_colours = {p: i for i, p in enumerate(fixed)}, dict(zip(fixed, _FIXED_COLOURS))
        self.rows = sorted(rows, key=lambda r: (index[r.trace], rank.get(r.policy, len(fixed) - 1), r.policy, r.budget,
                                                -1 if r.tau is None else r.tau, r.label))
        budgets = {r.budget for r in rows if role_of(r.policy) != "ceiling"}
        self.multi_budget = len(budgets) > 1
        self.taus = sorted({int(r.tau) for r in rows if swept(r)})  # the swept range only (not tide-opt's choice)
        self.colours: dict[str, str] = {}
        free = 0
        for name in dict.fromkeys(self.series(r) for r in self.rows):
            if name in fixed_colours:
                self.colours[name] = fixed_colours[name]
            else:
                self.colours[name] = _PALETTE[free % len(_PALETTE)]
                free += 1
        self.cols = min(len(self.traces), _MAX_COLS)
        self.nrows = math.ceil(len(self.traces) / self.cols)

    def series(self, r: SimRecord) -> str:
        return f"{r.policy} B={r.budget}" if self.multi_budget and role_of(r.policy) != "ceiling" else r.policy

    def in_trace(self, trace: str) -> list[SimRecord]:
        return [r for r in self.rows if r.trace == trace]

    def cell(self, i: int) -> dict[str, int]:
        return {"row": i // self.cols + 1, "col": i % self.cols + 1}

    def subplots(self, **kw: Any) -> go.Figure:
        """The panels, one per trace, titled by it (14 px, broken onto two lines past 34 characters: a study's
        long trace names ran off the chart's edge in a narrow window)."""
        fig = make_subplots(rows=self.nrows, cols=self.cols,
                            subplot_titles=[_panel_title(f"trace: {t}", 34) for t in self.traces],
                            horizontal_spacing=0.08, vertical_spacing=min(0.3, 0.5 / self.nrows) if self.nrows > 1 else 0.2,
                            **kw)
        fig.update_annotations(font_size=14)
        return fig

    def tau_span(self) -> list[float]:
        if not self.taus:
            return [0.5, 2.0]
        lo, hi = self.taus[0], self.taus[-1]
        return [lo, hi] if hi > lo else [lo / 2, lo * 2]

    def in_swept_range(self, tau: float) -> bool:
        return bool(self.taus) and self.taus[0] <= tau <= self.taus[-1]


def _log_toggle(fig: go.Figure, log: bool = False) -> None:
    """Buttons that switch every y axis between linear and log scale (the all-gpu ceiling can dwarf the rest)."""
    axes = [k for k in fig.layout if k.startswith("yaxis")] or ["yaxis"]
    def args(kind: str) -> dict[str, Any]:
        return {f"{a}.type": kind for a in axes} | {f"{a}.autorange": True for a in axes}
    fig.update_layout(updatemenus=[{
        "type": "buttons", "direction": "left", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom",
        "pad": {"b": 40}, "showactive": True, "active": 1 if log else 0,
        "buttons": [{"label": "linear y", "method": "relayout", "args": [args("linear")]},
                    {"label": "log y", "method": "relayout", "args": [args("log")]}]}])


def _title(key: str) -> dict[str, Any]:
    """A figure's title: its letter and section title, short enough for any panel width, at the top left of the
    figure (above the subplot titles and beside the scale buttons; the legend is to the right of the panels)."""
    return {"text": f"({_LETTERS[key]}) {html.escape(SECTION_TITLES[key])}", "x": 0.0, "xanchor": "left",
            "xref": "container", "y": 1.0, "yanchor": "top", "yref": "container", "pad": {"t": 12, "l": 12}}


def _finish(fig: go.Figure, lay: _Layout, key: str, extra_height: int = 0, **layout: Any) -> go.Figure:
    fig.update_layout(title=_title(key), template="plotly_white",
                      height=_PANEL_H * lay.nrows + 120 + extra_height, margin={"t": 110, "l": 70, "r": 20, "b": 60},
                      legend=_LEGEND, **layout)
    return fig


def tau_axis(taus: Sequence[int], max_ticks: int = _MAX_TAU_TICKS) -> dict[str, Any]:
    """Axis settings for swept taus: integer ticks only (tickmode array) and never crowded. A geometric sweep
    (1 2 4 8 16 ...) gets a log axis with ticks at least 1/8 of it apart, any other a linear one with every
    tau that is a multiple of a 1-2-5 step above the first, the step the smallest giving <= ``max_ticks``."""
    taus = sorted({int(t) for t in taus})
    if not taus:
        return {}
    lo, hi = taus[0], taus[-1]
    log = hi / lo >= 8 and len(taus) <= 2 + math.log2(hi / lo)
    if log:
        gap = math.log10(hi / lo) / 8
        ticks = [lo]
        for t in taus[1:]:
            if math.log10(t / ticks[-1]) >= gap:
                ticks.append(t)
    else:
        step = next(m * 10 ** e for e in range(12) for m in (1, 2, 5) if (hi - lo) / (m * 10 ** e) + 1 <= max_ticks)
        ticks = [t for t in taus if (t - lo) % step == 0]
    axis: dict[str, Any] = {"type": "log" if log else "linear", "tickmode": "array", "tickvals": ticks,
                            "ticktext": [str(t) for t in ticks]}
    if not log:
        axis["range"] = [lo - 0.5, hi + 0.5] if hi > lo else [lo - 1, lo + 1]
    return axis


# ---- speedups -------------------------------------------------------------------------------------------
# ---- figures ------------------------------------------------------------------------------------------------
def _hline(fig: go.Figure, lay: _Layout, i: int, r: SimRecord, y: float, name: str, shown: set[str],
           hover_fmt: str, trace: str) -> None:
    """A row without a swept tau as a horizontal reference line over the swept range; tide-opt's carries the
    tau it chose in its name and as a label at its right end."""
    label = f"{r.policy} (chose tau={r.tau})" if chose_tau(r) else name
    fig.add_trace(go.Scatter(
        x=lay.tau_span(), y=[y, y], mode="lines+text" if chose_tau(r) else "lines", name=label, legendgroup=name,
        showlegend=label not in shown, text=["", label] if chose_tau(r) else [r.label] * 2,
        textposition="top left", line={"color": lay.colours[name], "width": 2,
                                       "dash": "dot" if role_of(r.policy) == "ceiling" else "dash"},
        hovertemplate=html.escape(label) + "<br>" + hover_fmt + "<extra>" + html.escape(trace) + "</extra>"),
        **lay.cell(i))
    shown.add(label)


def _vs_tau(lay: _Layout, value: Callable[[SimRecord], float], key: str, ytitle: str, hover_fmt: str) -> go.Figure:
    fig = lay.subplots()
    shown: set[str] = set()
    for i, trace in enumerate(lay.traces):
        rows = lay.in_trace(trace)
        for name in dict.fromkeys(lay.series(r) for r in rows):
            grp = [r for r in rows if lay.series(r) == name]
            tau_rows = sorted((r for r in grp if swept(r)), key=lambda r: r.tau)
            points = sorted(tau_rows + [r for r in grp if chose_tau(r) and lay.in_swept_range(r.tau)],
                            key=lambda r: r.tau)
            if points:
                chosen = not tau_rows  # tide-opt alone: a marker at the tau it chose
                fig.add_trace(go.Scatter(
                    x=[r.tau for r in points], y=[value(r) for r in points],
                    mode="markers" if chosen else "lines+markers", name=name, legendgroup=name,
                    showlegend=name not in shown, line={"color": lay.colours[name], "width": 2},
                    marker={"size": 12 if chosen else 8, "symbol": "diamond" if chosen else "circle"},
                    text=[r.label + (f" (chose tau={r.tau})" if chose_tau(r) else "") for r in points],
                    hovertemplate="%{text}<br>tau=%{x}<br>" + hover_fmt + "<extra>" + html.escape(trace) + "</extra>"),
                    **lay.cell(i))
                shown.add(name)
            for r in grp:
                if r.tau is None or (chose_tau(r) and not lay.in_swept_range(r.tau)):
                    _hline(fig, lay, i, r, value(r), name, shown, hover_fmt, trace)
    fig.update_xaxes(title_text="refresh interval tau (denoising steps)", **tau_axis(lay.taus))
    fig.update_yaxes(title_text=ytitle, rangemode="tozero")
    return _finish(fig, lay, key)


def throughput_figure(lay: _Layout) -> go.Figure:
    fig = _vs_tau(lay, lambda r: r.tokens_per_s, "throughput", "throughput (tokens/s)", "%{y:.2f} tokens/s")
    _log_toggle(fig)
    return fig


def hit_ratio_figure(lay: _Layout) -> go.Figure:
    fig = _vs_tau(lay, lambda r: 100.0 * r.counters.hit_ratio, "hit_ratio", "GPU hit ratio (%)", "%{y:.1f} %")
    fig.update_yaxes(range=[0, 102])
    return fig


def _bar_kind(s: spread.Spread, ans: Answer | None, st: Setting) -> str:
    if ans is not None and st is ans.setting and s.policy == ans.spread.policy:
        return "recommended"
    role = role_of(s.policy)
    return role if role in ("clairvoyant", "ceiling") else "baseline" if role in BASELINE_ROLES else "other"


def _budget_of(st: Setting) -> int | None:
    """The setting's GPU expert budget (experts per layer), that of its policies other than the all-gpu ceiling."""
    budgets = {r.budget for r in st.rows if role_of(r.policy) != "ceiling" and r.budget is not None}
    return next(iter(budgets)) if len(budgets) == 1 else None


def _bar_name(s: spread.Spread, kind: str, st: Setting | None = None) -> str:
    if kind == "ceiling":
        experts = max((r.budget for r in s.rows if r.budget is not None), default=None)
        every = f"all {experts} experts" if experts else "every expert"
        return f"{s.label} ({every}: outside the budget)"
    return {"clairvoyant": clairvoyant_label(s.label), "recommended": f"★ {s.label} (recommended)"}.get(kind, s.label)


def _axis_refs(fig: go.Figure, cell: dict[str, int]) -> tuple[str, str]:
    """The x and y axis names ("x2", "y2") of a subplot cell, for annotations placed in data coordinates."""
    sub = fig.get_subplot(cell["row"], cell["col"])
    return sub.xaxis.plotly_name.replace("axis", ""), sub.yaxis.plotly_name.replace("axis", "")


def _speedup_panel(fig: go.Figure, st: Setting, ans: Answer | None, cell: dict[str, int]) -> None:
    """One setting's horizontal bars (median over draws, [min-max] as whiskers, fastest on top, each bar's value
    written horizontally right of its whisker), the 1x best-baseline line and the bound's line, labelled with
    what it bounds: the policies within the setting's GPU expert budget (all-gpu, which keeps every expert, is
    outside it and may pass it). One trace per bar: a bar's colour, hatching and outline are its own (plotly
    warns on a per-bar colour array with a hatching pattern)."""
    bars = [s for s in st.spreads if np.isfinite(s.vs_base).all()]
    bars.sort(key=lambda s: float(np.median(s.vs_base)))
    med = [float(np.median(s.vs_base)) for s in bars]
    kinds = [_bar_kind(s, ans, st) for s in bars]
    names = [html.escape(_bar_name(s, k, st)) for s, k in zip(bars, kinds)]
    whiskers = max(len(s.rows) for s in bars) > 1
    for s, m, k, name in zip(bars, med, kinds, names):
        err = {"type": "data", "symmetric": False, "color": "#444", "array": [float(max(s.vs_base)) - m],
               "arrayminus": [m - float(min(s.vs_base))]}
        fig.add_trace(go.Bar(
            y=[name], x=[m], orientation="h", showlegend=False, name=name, error_x=err if whiskers else None,
            marker={"color": _BAR_COLOURS[k], "pattern": {"shape": "/" if k == "clairvoyant" else ""},
                    "line": {"color": "#000", "width": 2 if k == "recommended" else 0}},
            hovertext=f"{html.escape(s.label)}: {spread.median_range(s.vs_base, '.3f')}× the best baseline; "
                      f"{spread.median_range(s.tokens_per_s, '.1f')} tokens/s", hoverinfo="text"), **cell)
    # each bar's median, horizontal and at full size, right of its whisker, on white over the lines it crosses
    # (as plotly's inside text, a short bar's was squeezed and turned)
    xref, yref = _axis_refs(fig, cell)
    for s, m, name in zip(bars, med, names):
        fig.add_annotation(x=float(max(s.vs_base)), y=name, xref=xref, yref=yref, text=f"{m:.2f}×", showarrow=False,
                           xanchor="left", xshift=3, font={"size": 12, "color": "#222"},
                           bgcolor="rgba(255,255,255,0.85)", borderpad=1)
    fig.update_yaxes(categoryorder="array", categoryarray=names, **cell)
    def on_white() -> dict[str, str]:  # a line's label over the other line it may cross (a new dict: plotly fills it in)
        return {"bgcolor": "rgba(255,255,255,0.85)"}

    fig.add_vline(x=1.0, line_dash="dot", line_color="#555", annotation_text="best baseline = 1×",
                  annotation_position="bottom right", annotation=on_white(), **cell)
    bound = st.bound_vs_base()
    right = max(max(s.vs_base) for s in bars)
    if bound.size and np.isfinite(bound).all():
        b = float(np.median(bound))
        budget = _budget_of(st)
        within = f" (B={budget})" if budget is not None else ""
        # two short lines: one long one ran into the next panel's in a narrow window
        label = f"{BOUND_LABEL}<br>within the budget{within}: {b:.2f}×"
        # the label on the side of the line with room for it: right of a line in the left half of the axis
        side = "top right" if b < 0.5 * max(right, b) else "top left"
        right = max(right, b)
        fig.add_vline(x=b, line_dash="dash", line_color="#000", line_width=2, **cell, annotation_text=label,
                      annotation_position=side, annotation=on_white())
    # free room below the bars for the 1x line's label and above them for the bound's (two lines)
    fig.update_yaxes(range=[-1.4, len(bars) - 0.5 + 1.4], **cell)
    fig.update_xaxes(range=[0, 1.18 * max(right, 1.0)], **cell)


def speedup_figure(all_settings: Sequence[Setting], ans: Answer | None = None) -> go.Figure:
    """(a) each policy at its best tau over the best baseline, one panel per setting (mode, budget, grid point):
    the recommended bar highlighted, the oracle hatched and labelled, the bound a dashed line."""
    shown = [st for st in all_settings if any(np.isfinite(s.vs_base).all() for s in st.spreads)]
    if not shown:
        fig = go.Figure()
        fig.add_annotation(text="no baseline (cpu-route, static, fetch-lru) among the results", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
        fig.update_layout(title=_title("speedup"), height=200, template="plotly_white", margin={"t": 50})
        return fig
    cols = min(len(shown), _LEAD_COLS)
    nrows = math.ceil(len(shown) / cols)
    titles = [_panel_title(st.name) for st in shown]
    lines = max(t.count("<br>") + 1 for t in titles)
    npol = max(len(st.spreads) for st in shown)
    # in pixels: each panel's bars and free rows; between rows, the x ticks and title of one row and the
    # subplot title of the next (a fraction of the figure, they overlapped once the figure grew)
    panel, gap, top, bottom = _BAR_H * (npol + 2) + 55, 80 + 18 * lines, 62 + 18 * lines, 50
    height = nrows * panel + (nrows - 1) * gap + top + bottom
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=titles, horizontal_spacing=0.28 if cols > 1 else 0.0,
                        vertical_spacing=gap / (height - top - bottom) if nrows > 1 else 0.0)
    for i, st in enumerate(shown):
        _speedup_panel(fig, st, ans, {"row": i // cols + 1, "col": i % cols + 1})
    fig.update_xaxes(title_text="× tokens/s of the best baseline", title_standoff=6)
    fig.update_yaxes(automargin=True)
    fig.update_layout(title=_title("speedup"), template="plotly_white", height=height, bargap=0.25,
                      barmode="overlay", margin={"t": top, "l": 10, "r": 30, "b": bottom})
    return fig


def _panel_title(name: str, width: int = 48) -> str:
    """A subplot title, escaped and broken onto two lines at a " · " or space when longer than ``width``
    characters (a title wider than its panel runs into the next one or off the chart)."""
    if len(name) <= width:
        return html.escape(name)
    cut = max(name.rfind(" · ", 0, width), name.rfind(" ", 0, width))
    if cut <= 0:
        return html.escape(name)
    head, tail = name[:cut], name[cut:].lstrip(" ·")
    return html.escape(head) + "<br>" + html.escape(tail)


def bytes_figure(lay: _Layout) -> go.Figure:
    fig = lay.subplots()
    for i, trace in enumerate(lay.traces):
        rows = lay.in_trace(trace)
        labels = [r.label for r in rows]
        parts = list(zip(*(_bytes(r) for r in rows)))
        for (name, colour), vals in zip(_BYTE_PARTS, parts):
            fig.add_trace(go.Bar(x=labels, y=[v / _GB for v in vals], name=name, legendgroup=name, showlegend=i == 0,
                                 marker_color=colour,
                                 hovertemplate="%{x}<br>" + name + ": %{y:.3f} GB<extra>" + html.escape(trace) + "</extra>"),
                          **lay.cell(i))
    fig.update_xaxes(title_text="policy", tickangle=-35)
    fig.update_yaxes(title_text="bytes moved (GB, 1e9 B)")
    _log_toggle(fig)
    return _finish(fig, lay, "bytes", extra_height=60, barmode="stack")


def utilisation_figure(lay: _Layout) -> go.Figure:
    fig = lay.subplots()
    for i, trace in enumerate(lay.traces):
        rows = lay.in_trace(trace)
        labels = [r.label for r in rows]
        for res in RESOURCES:
            fig.add_trace(go.Bar(x=labels, y=[100.0 * r.utilisation.get(res, 0.0) for r in rows], name=res.upper(),
                                 legendgroup=res, showlegend=i == 0, marker_color=_RESOURCE_COLOURS.get(res),
                                 hovertemplate="%{x}<br>" + res.upper() + " busy %{y:.1f} % of simulated time<extra>"
                                 + html.escape(trace) + "</extra>"),
                          **lay.cell(i))
    fig.update_xaxes(title_text="policy", tickangle=-35)
    fig.update_yaxes(title_text="utilisation (% of simulated time)", range=[0, 105])
    return _finish(fig, lay, "utilisation", extra_height=60, barmode="group")


def figures(rows: Sequence[SimRecord],
            recommended: tuple[SimRecord, Mapping[str, float]] | None = None) -> dict[str, go.Figure]:
    """Every figure of the report by section key (SECTION_TITLES), the speedup chart first."""
    lay = _Layout(list(rows))
    sts = settings(lay.rows)
    return _figures(lay, sts, answer(sts, recommended))


def _figures(lay: _Layout, sts: Sequence[Setting], ans: Answer | None) -> dict[str, go.Figure]:
    return {"speedup": speedup_figure(sts, ans), "throughput": throughput_figure(lay),
            "hit_ratio": hit_ratio_figure(lay), "bytes": bytes_figure(lay), "utilisation": utilisation_figure(lay)}


# ---- HTML ---------------------------------------------------------------------------------------------------
_TABLE_COLS = ("trace", "mode", "policy", "budget (experts/layer)", "throughput (tokens/s)", "sim time (s)",
               "speedup vs best baseline (×)", "GPU hit ratio (%)", "H2D weights (GB)", "H2D act. (GB)", "D2H (GB)",
               "promotions", "GPU util (%)", "CPU util (%)", "H2D util (%)", "D2H util (%)", "host util (%)", "steps",
               "replay wall (s)")


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "–"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return html.escape(str(v))


def _bold_rows(lay: _Layout, ans: Answer | None) -> set[int]:
    """ids of the rows in bold: the recommended policy's (one per trace draw); without an answer (several
    settings), each trace's fastest causal run other than the all-gpu ceiling."""
    if ans is not None:
        return {id(r) for r in ans.spread.rows}
    per_trace = [[r for r in lay.in_trace(t) if spread.eligible(r)] for t in lay.traces]
    return {id(max(rs, key=lambda r: r.tokens_per_s)) for rs in per_trace if rs}


def _row_cells(r: SimRecord, up: float | None) -> list[str]:
    w, a, d = _bytes(r)
    return [html.escape(r.trace), html.escape(r.mode), html.escape(display_label(r)), _fmt(r.budget, "d"),
            _fmt(r.tokens_per_s, ".2f"), _fmt(r.sim_time_s, ".3f"), _fmt(up, ".3f"),
            _fmt(100 * r.counters.hit_ratio, ".1f"), _fmt(w / _GB, ".3f"), _fmt(a / _GB, ".3f"), _fmt(d / _GB, ".3f"),
            _fmt(r.counters.promotions, "d"), *(_fmt(100 * r.utilisation.get(res, 0.0), ".1f") for res in RESOURCES),
            _fmt(r.steps, "d"), _fmt(r.wall_s, ".3f")]


def _bound_row(rows: list[SimRecord], trace: str) -> str:
    """The trace's bound (``sim.bound``, on the budget's rows) as a labelled table row ("" when not computed)."""
    r = spread.bound_row(rows)
    if r is None:
        return ""
    base = baseline_throughput(rows, trace, r.budget)
    bound = r.bound_tokens_per_s or 0.0
    cells = [html.escape(trace), html.escape(r.mode), html.escape(BOUND_LABEL), _fmt(r.budget, "d"),
             _fmt(bound, ".2f"), _fmt(r.bound_s, ".3f"), _fmt(bound / base if base else None, ".3f")]
    cells += ["–"] * (len(_TABLE_COLS) - len(cells))
    return '<tr class="bound">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def summary_table(lay: _Layout, ans: Answer | None = None) -> str:
    """Every row's headline metrics per trace, the recommended policy's rows in bold, the oracle labelled as not
    executable, and each trace's bound as a last row."""
    ups = dict(zip(map(id, lay.rows), speedups(lay.rows)))
    bold = _bold_rows(lay, ans)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _TABLE_COLS)
    body = []
    for trace in lay.traces:
        rows = lay.in_trace(trace)
        for r in rows:
            cls = "best" if id(r) in bold else "oracle" if role_of(r.policy) == "clairvoyant" else ""
            body.append(f'<tr class="{cls}">' if cls else "<tr>")
            body[-1] += "".join(f"<td>{c}</td>" for c in _row_cells(r, ups[id(r)])) + "</tr>"
        body.append(_bound_row(rows, trace))
    what = ("the recommended policy (the fastest the runtime can execute, by median tokens/s over the trace draws)"
            if ans is not None
            else "the fastest policy the runtime can execute per trace, other than the all-gpu ceiling")
    return (f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(b for b in body if b)
            + f'\n</tbody></table>\n<p class="note">Bold: {what}. The oracle reads future routing: a clairvoyant '
              f"heuristic, not executable. The bound (sim.bound): no policy is faster on that trace, budget and "
              f"machine. Speedup: tokens/s over the best baseline (cpu-route, static, fetch-lru) at the same trace "
              f"and budget.</p>")


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 16px 24px; color: #222; }
h1 { margin: 0 0 4px 0; font-size: 24px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
section.answer { border: 1px solid #b7dfc0; background: #f3fbf4; border-radius: 8px; padding: 4px 16px; margin: 8px 0; }
p.answer { font-size: 19px; margin: 8px 0 4px 0; } b.recommended { color: #1a6b37; }
p.facts { font-size: 15px; margin: 4px 0; }
p.caveat { background: #fff6e0; border-left: 4px solid #f0ad4e; padding: 6px 10px; font-size: 14px; margin: 6px 0; }
pre { background: #f6f8fa; padding: 12px; border-radius: 6px; overflow: auto; max-height: 420px; font-size: 12px; }
details > summary { cursor: pointer; font-size: 18px; font-weight: bold; margin-top: 36px; }
table.summary { border-collapse: collapse; font-size: 12px; }
table.summary th, table.summary td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
table.summary th { background: #f0f0f0; position: sticky; top: 0; }
table.summary td:nth-child(-n+3) { text-align: left; }
table.summary tr.best td { font-weight: bold; background: #eef7ee; }
table.summary tr.oracle td { color: #777; font-style: italic; }
table.summary tr.bound td { color: #000; background: #f4f4f4; border-top: 2px solid #999; }
p.note, p.meta { color: #555; font-size: 13px; margin: 4px 0; }
"""


def _figure_section(key: str, fig: go.Figure) -> str:
    div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False},
                      default_width="100%", div_id=f"fig-{key}")
    return (f'<section id="{key}"><h2>({_LETTERS[key]}) {html.escape(SECTION_TITLES[key])}</h2>\n'
            f'<p class="note">{html.escape(SECTION_NOTES[key])}</p>\n{div}</section>')


def render_report(rows: list[SimRecord], config: dict[str, Any], title: str = "tide-moe simulation report",
                  intro_html: str = "", sections: Sequence[tuple[str, str, str]] = (),
                  recommended: tuple[SimRecord, Mapping[str, float]] | None = None,
                  policy_file: str | Path | None = None) -> str:
    """The report as one HTML document (plotly.js embedded once), leading with the answer: the recommended
    policy (``recommended``: ``sim.explore.recommend``'s row and predicted figures; derived from the rows when
    None), the caveat and the speedup chart; then ``intro_html`` (already-escaped HTML, e.g. a study's headline
    table), the charts, ``sections`` (extra (key, title, body HTML) sections, e.g. ``sim.sensitivity_report``'s
    tornado chart; body HTML already escaped), the table, and the configuration collapsed. ``policy_file``: the
    recommended-policy file the "Run it" line names (an absolute path works wherever the reader stands)."""
    if not rows:
        raise TideError("no results to report")
    lay = _Layout(list(rows))
    sts = settings(lay.rows)
    ans = answer(sts, recommended)
    figs = _figures(lay, sts, ans)
    lead_chart = _figure_section("speedup", figs.pop("speedup"))
    charts = [_figure_section(k, f) for k, f in figs.items()]
    charts += [f'<section id="{html.escape(k)}"><h2>{html.escape(t)}</h2>\n{body}</section>' for k, t, body in sections]
    first = [lead_chart] if ans is not None else []  # a study's answer is its intro table: the chart follows it
    rest = [] if ans is not None else [lead_chart]
    cfg = html.escape(json.dumps(config, indent=2, default=str, sort_keys=False))
    toc = " · ".join([f'<a href="#{k}">{html.escape(SECTION_TITLES[k])}</a>' for k in ("speedup", *figs)]
                     + [f'<a href="#{html.escape(k)}">{html.escape(t)}</a>' for k, t, _ in sections]
                     + ['<a href="#summary">Summary</a>', '<a href="#config">Configuration</a>'])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>
<body>
<h1>{html.escape(title)}</h1>
{lead_html(ans, sts, config, policy_file)}
{chr(10).join(first)}
{intro_html}
<p class="meta">{len(rows)} runs over {len(lay.traces)} trace(s): {html.escape(", ".join(lay.traces))}.
Generated with plotly {html.escape(plotly.__version__)}; self-contained (plotly.js embedded). {toc}</p>
{chr(10).join(rest + charts)}
<section id="summary"><h2>Summary</h2>
{summary_table(lay, ans)}</section>
<details id="config"><summary>Configuration</summary><pre>{cfg}</pre></details>
</body></html>
"""


def write_report(path: str | Path, rows: list[SimRecord], config: dict[str, Any],
                 title: str = "tide-moe simulation report", intro_html: str = "",
                 sections: Sequence[tuple[str, str, str]] = (),
                 recommended: tuple[SimRecord, Mapping[str, float]] | None = None) -> Path:
    """Write the report to ``path`` atomically; returns the path written. ``recommended``: the row and predicted
    figures ``sim.explore.recommend`` returns (see :func:`render_report`); its "Run it" line names the
    recommended-policy.json beside ``path`` (``sim.explore`` writes it first) by its absolute path."""
    path = Path(path)
    policy = path.resolve().parent / POLICY_FILE
    atomic_write_text(path, render_report(rows, config, title, intro_html, sections, recommended=recommended,
                                          policy_file=policy if policy.is_file() else None))
    return path


__all__ = ["write_report", "render_report", "figures", "speedups", "baseline_throughput", "settings", "answer",
           "tau_axis", "SECTION_TITLES", "BOUND_LABEL"]
