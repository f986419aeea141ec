"""One self-contained HTML report of a set of simulated runs (plotly; the only module that imports it).

``write_report(path, rows, config)`` writes a single HTML file with plotly.js embedded (it opens offline in any
browser), atomically. Each row is an :class:`offload.results.SimRecord` (``sim.sweep``'s rows). Sections, one figure each, one subplot per trace where that helps:

  (a) throughput (tokens/s) against tau per policy; policies without tau are horizontal reference lines
  (b) speedup of each policy at its best tau over the best baseline (cpu-route, static, fetch-lru)
  (c) GPU hit ratio (share of token-assignments computed on the GPU) against tau
  (d) bytes moved over the host link: H2D weights, H2D activations, D2H activations
  (e) resource utilisation: busy time / simulated time of the GPU, CPU, H2D and D2H engines

plus a header with the resolved configuration and a summary table of every row's headline metrics.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from offload.policies import BASELINES
from offload.errors import TideError
from offload.results import RESOURCES, SimRecord
from offload.atomic_io import atomic_write_text

CEILING = "all-gpu"
SECTION_TITLES = {
    "throughput": "Throughput vs refresh interval tau",
    "speedup": "Speedup over the best baseline (cpu-route, static or fetch-lru)",
    "hit_ratio": "GPU hit ratio vs tau",
    "bytes": "Bytes moved over the host link",
    "utilisation": "Resource utilisation",
}
_POLICY_ORDER = {CEILING: 0, "cpu-route": 1, "static": 2, "fetch-lru": 3}
_FIXED_COLOURS = {CEILING: "#222222", "cpu-route": "#d62728", "static": "#8c564b", "fetch-lru": "#ff7f0e"}
_PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f")
_BYTE_PARTS = (("H2D weights", "#1f77b4"), ("H2D activations", "#aec7e8"), ("D2H activations", "#ff9896"))
_RESOURCE_COLOURS = {"gpu": "#2ca02c", "cpu": "#d62728", "h2d": "#1f77b4", "d2h": "#ff7f0e"}
_GB = 1e9
_PANEL_H = 380
_MAX_COLS = 3


# ---- row helpers ----------------------------------------------------------------------------------------
def _bytes(r: SimRecord) -> tuple[float, float, float]:
    """H2D weights, H2D activations, D2H activations."""
    c = r.counters
    return c.h2d_weight_bytes, c.h2d_bytes - c.h2d_weight_bytes, c.d2h_bytes


class _Layout:
    """Series naming, colours and panel placement shared by every figure."""

    def __init__(self, rows: list[SimRecord]) -> None:
        self.traces = list(dict.fromkeys(r.trace for r in rows))
        index = {t: i for i, t in enumerate(self.traces)}
        self.rows = sorted(rows, key=lambda r: (index[r.trace], _POLICY_ORDER.get(r.policy, 3), r.policy, r.budget,
                                                -1 if r.tau is None else r.tau, r.label))
        budgets = {r.budget for r in rows if r.policy != CEILING}
        self.multi_budget = len(budgets) > 1
        self.taus = sorted({r.tau for r in rows if r.tau is not None})
        self.colours: dict[str, str] = {}
        free = 0
        for name in dict.fromkeys(self.series(r) for r in self.rows):
            if name in _FIXED_COLOURS:
                self.colours[name] = _FIXED_COLOURS[name]
            else:
                self.colours[name] = _PALETTE[free % len(_PALETTE)]
                free += 1
        self.cols = min(len(self.traces), _MAX_COLS)
        self.nrows = math.ceil(len(self.traces) / self.cols)

    def series(self, r: SimRecord) -> str:
        return f"{r.policy} B={r.budget}" if self.multi_budget and r.policy != CEILING else r.policy

    def in_trace(self, trace: str) -> list[SimRecord]:
        return [r for r in self.rows if r.trace == trace]

    def cell(self, i: int) -> dict[str, int]:
        return {"row": i // self.cols + 1, "col": i % self.cols + 1}

    def subplots(self, **kw: Any) -> go.Figure:
        return make_subplots(rows=self.nrows, cols=self.cols, subplot_titles=[f"trace: {t}" for t in self.traces],
                             horizontal_spacing=0.08, vertical_spacing=min(0.3, 0.5 / self.nrows) if self.nrows > 1 else 0.2,
                             **kw)

    def tau_span(self) -> list[float]:
        if not self.taus:
            return [0.5, 2.0]
        lo, hi = self.taus[0], self.taus[-1]
        return [lo, hi] if hi > lo else [lo / 2, lo * 2]


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


def _finish(fig: go.Figure, lay: _Layout, title: str, extra_height: int = 0, **layout: Any) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.0, "xanchor": "left"}, template="plotly_white",
                      height=_PANEL_H * lay.nrows + 120 + extra_height, margin={"t": 110, "l": 70, "r": 30, "b": 60},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.06, "x": 0.0}, **layout)
    return fig


# ---- speedups -------------------------------------------------------------------------------------------
def baseline_throughput(rows: list[SimRecord], trace: str, budget: int | None) -> float | None:
    """The best baseline's tokens/s in ``trace`` at ``budget`` (falls back to the trace's only budget)."""
    base = [r for r in rows if r.trace == trace and r.policy in BASELINES]
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


# ---- figures ------------------------------------------------------------------------------------------------
def _vs_tau(lay: _Layout, value: Callable[[SimRecord], float], title: str, ytitle: str, hover_fmt: str) -> go.Figure:
    fig = lay.subplots()
    shown: set[str] = set()
    span = lay.tau_span()
    for i, trace in enumerate(lay.traces):
        rows = lay.in_trace(trace)
        groups = list(dict.fromkeys(lay.series(r) for r in rows))
        for name in groups:
            grp = [r for r in rows if lay.series(r) == name]
            tau_rows = sorted((r for r in grp if r.tau is not None), key=lambda r: r.tau)
            colour = lay.colours[name]
            if tau_rows:
                fig.add_trace(go.Scatter(
                    x=[r.tau for r in tau_rows], y=[value(r) for r in tau_rows], mode="lines+markers",
                    name=name, legendgroup=name, showlegend=name not in shown, line={"color": colour, "width": 2},
                    marker={"size": 8}, text=[r.label for r in tau_rows],
                    hovertemplate="%{text}<br>tau=%{x}<br>" + hover_fmt + "<extra>" + html.escape(trace) + "</extra>"),
                    **lay.cell(i))
                shown.add(name)
            for r in (r for r in grp if r.tau is None):
                y = value(r)
                fig.add_trace(go.Scatter(
                    x=span, y=[y, y], mode="lines", name=name, legendgroup=name, showlegend=name not in shown,
                    line={"color": colour, "width": 2, "dash": "dot" if r.policy == CEILING else "dash"},
                    text=[r.label] * 2,
                    hovertemplate="%{text} (no tau)<br>" + hover_fmt + "<extra>" + html.escape(trace) + "</extra>"),
                    **lay.cell(i))
                shown.add(name)
    tick = {"tickvals": lay.taus, "ticktext": [str(t) for t in lay.taus]} if lay.taus else {}
    fig.update_xaxes(type="log", title_text="refresh interval tau (denoising steps)", **tick)
    fig.update_yaxes(title_text=ytitle, rangemode="tozero")
    return _finish(fig, lay, title)


def throughput_figure(lay: _Layout) -> go.Figure:
    fig = _vs_tau(lay, lambda r: r.tokens_per_s,
                  f"(a) {SECTION_TITLES['throughput']}: generated tokens/s; dashed: policies without tau, dotted: all-gpu ceiling",
                  "throughput (tokens/s)", "%{y:.2f} tokens/s")
    _log_toggle(fig)
    return fig


def hit_ratio_figure(lay: _Layout) -> go.Figure:
    fig = _vs_tau(lay, lambda r: 100.0 * r.counters.hit_ratio,
                  f"(c) {SECTION_TITLES['hit_ratio']}: % of routed token-assignments computed on the GPU",
                  "GPU hit ratio (%)", "%{y:.1f} %")
    fig.update_yaxes(range=[0, 102])
    return fig


def speedup_figure(lay: _Layout) -> go.Figure:
    fig = go.Figure()
    ups = dict(zip(map(id, lay.rows), speedups(lay.rows)))
    series = list(dict.fromkeys(lay.series(r) for r in lay.rows))
    for name in series:
        xs, ys, text, hover = [], [], [], []
        for trace in lay.traces:
            grp = [r for r in lay.in_trace(trace) if lay.series(r) == name and ups[id(r)] is not None]
            if not grp:
                continue
            best = max(grp, key=lambda r: r.tokens_per_s)
            xs.append(trace)
            ys.append(ups[id(best)])
            text.append(f"{ups[id(best)]:.2f}×")
            detail = "<br>".join(f"{html.escape(r.label)}: {ups[id(r)]:.3f}×" for r in grp)
            hover.append(f"best: {html.escape(best.label)}<br>{detail}")
        if xs:
            fig.add_trace(go.Bar(x=xs, y=ys, name=name, marker_color=lay.colours[name], text=text,
                                 textposition="outside", hovertext=hover, hoverinfo="text+name"))
    fig.add_hline(y=1.0, line_dash="dot", line_color="#555555", annotation_text="best baseline = 1×",
                  annotation_position="top right")
    fig.update_layout(barmode="group", xaxis_title="trace", yaxis_title="speedup (× tokens/s of the best baseline)",
                      title={"text": f"(b) {SECTION_TITLES['speedup']}: each policy at its best tau, per trace",
                             "x": 0.0, "xanchor": "left"},
                      template="plotly_white", height=_PANEL_H + 140, margin={"t": 110, "l": 70, "r": 30, "b": 60},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.04, "x": 0.0})
    fig.update_yaxes(rangemode="tozero")
    _log_toggle(fig)
    if not fig.data:
        fig.add_annotation(text="no baseline (cpu-route, static, fetch-lru) among the results", showarrow=False,
                           x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


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
    return _finish(fig, lay, f"(d) {SECTION_TITLES['bytes']} per policy, stacked: H2D weights + H2D activations + D2H activations",
                   extra_height=60, barmode="stack")


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
    return _finish(fig, lay, f"(e) {SECTION_TITLES['utilisation']}: busy time / simulated time of GPU, CPU, H2D, D2H",
                   extra_height=60, barmode="group")


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


def summary_table(lay: _Layout) -> str:
    ups = speedups(lay.rows)
    best_per_trace: dict[str, int] = {}
    for idx, r in enumerate(lay.rows):
        if r.policy == CEILING:
            continue
        cur = best_per_trace.get(r.trace)
        if cur is None or r.tokens_per_s > lay.rows[cur].tokens_per_s:
            best_per_trace[r.trace] = idx
    best = set(best_per_trace.values())
    head = "".join(f"<th>{html.escape(c)}</th>" for c in _TABLE_COLS)
    body = []
    for idx, (r, up) in enumerate(zip(lay.rows, ups)):
        w, a, d = _bytes(r)
        cells = [html.escape(r.trace), html.escape(r.mode), html.escape(r.label), _fmt(r.budget, "d"),
                 _fmt(r.tokens_per_s, ".2f"), _fmt(r.sim_time_s, ".3f"), _fmt(up, ".3f"),
                 _fmt(100 * r.counters.hit_ratio, ".1f"), _fmt(w / _GB, ".3f"), _fmt(a / _GB, ".3f"), _fmt(d / _GB, ".3f"),
                 _fmt(r.counters.promotions, "d"), *(_fmt(100 * r.utilisation.get(res, 0.0), ".1f") for res in RESOURCES),
                 _fmt(r.steps, "d"), _fmt(r.wall_s, ".3f")]
        cls = ' class="best"' if idx in best else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>\n' + "\n".join(body)
            + "\n</tbody></table>\n<p class=\"note\">Bold: the fastest policy per trace other than the all-gpu "
            "ceiling. Speedup: tokens/s over the best baseline (cpu-route, static, fetch-lru) at the same trace and budget.</p>")


_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
pre { background: #f6f8fa; padding: 12px; border-radius: 6px; overflow: auto; max-height: 420px; font-size: 12px; }
table.summary { border-collapse: collapse; font-size: 12px; }
table.summary th, table.summary td { border: 1px solid #ddd; padding: 3px 6px; text-align: right; }
table.summary th { background: #f0f0f0; position: sticky; top: 0; }
table.summary td:nth-child(-n+3) { text-align: left; }
table.summary tr.best td { font-weight: bold; background: #eef7ee; }
p.note, p.meta { color: #555; font-size: 13px; }
"""


def render_report(rows: list[SimRecord], config: dict[str, Any], title: str = "tide-moe simulation report",
                  intro_html: str = "", sections: Sequence[tuple[str, str, str]] = ()) -> str:
    """The report as one HTML document (plotly.js embedded once); ``intro_html`` goes before the sections
    (already-escaped HTML, e.g. a study's headline table); ``sections``: extra (key, title, body HTML) sections
    after the figures (e.g. ``sim.sensitivity_report``'s tornado chart; body HTML already escaped)."""
    if not rows:
        raise TideError("no results to report")
    lay = _Layout(list(rows))
    figures = [("throughput", throughput_figure(lay)), ("speedup", speedup_figure(lay)),
               ("hit_ratio", hit_ratio_figure(lay)), ("bytes", bytes_figure(lay)),
               ("utilisation", utilisation_figure(lay))]
    letters = "abcde"
    parts = []
    for n, (key, fig) in enumerate(figures):
        div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False},
                          default_width="100%", div_id=f"fig-{key}")
        parts.append(f'<section id="{key}"><h2>({letters[n]}) {html.escape(SECTION_TITLES[key])}</h2>\n{div}</section>')
    parts += [f'<section id="{html.escape(k)}"><h2>{html.escape(t)}</h2>\n{body}</section>' for k, t, body in sections]
    cfg = html.escape(json.dumps(config, indent=2, default=str, sort_keys=False))
    toc = " · ".join([f'<a href="#{k}">{html.escape(SECTION_TITLES[k])}</a>' for k, _ in figures]
                     + [f'<a href="#{html.escape(k)}">{html.escape(t)}</a>' for k, t, _ in sections])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{len(rows)} runs over {len(lay.traces)} trace(s): {html.escape(", ".join(lay.traces))}.
Generated with plotly {html.escape(plotly.__version__)}; self-contained (plotly.js embedded).</p>
<p class="meta">{toc} · <a href="#summary">Summary</a> · <a href="#config">Configuration</a></p>
{intro_html}
<section id="config"><h2>Configuration</h2><pre>{cfg}</pre></section>
<section id="summary"><h2>Summary</h2>
{summary_table(lay)}</section>
{chr(10).join(parts)}
</body></html>
"""


def write_report(path: str | Path, rows: list[SimRecord], config: dict[str, Any],
                 title: str = "tide-moe simulation report", intro_html: str = "",
                 sections: Sequence[tuple[str, str, str]] = ()) -> Path:
    """Write the report to ``path`` atomically; returns the path written."""
    path = Path(path)
    atomic_write_text(path, render_report(rows, config, title, intro_html, sections))
    return path


__all__ = ["write_report", "render_report", "speedups", "baseline_throughput", "SECTION_TITLES"]
