"""The reports of ``sim.sensitivity``: the HTML section (a plotly tornado chart and the flagged figures), and
``sim.explore --sensitivity``'s run of it (console table, ``sensitivity.json``, that section).

Two panels share the figure axis, sorted by the headline swing (largest at the top): the relative change of the
headline ratio R (recommended / best baseline) and of the paper's ratio P (tide-opt / best baseline) when one
figure sits at the low or the high end of its range,

  d_end = R(f = end) / R_base - 1      (a bar from 0 to d_end, one colour per end),

with the +-threshold lines and a marker where the recommendation flips at that end.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from offload.results import SimRecord
from sim.sensitivity import PAPER_POLICY, FigureSwing, Sensitivity, sensitivity, write_sensitivity
from sim.sweep import Task

SECTION_KEY = "sensitivity"
SECTION_TITLE = "Sensitivity to the guessed hardware and executor figures"
_END_COLOURS = {"low": "#1f77b4", "high": "#ff7f0e"}
_ROW_H = 26


def _pct(v: float) -> float | None:
    return 100 * v if np.isfinite(v) else None


def tornado_figure(result: Sensitivity) -> go.Figure:
    """Horizontal bars, per figure and end, of the change of R (left) and P (right), in percent."""
    rows = list(reversed(result.rows))  # plotly draws the first category at the bottom: largest swing on top
    names = [r.figure.label for r in rows]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[f"headline: recommended / best baseline<br>(base {result.base.ratio:.2f}x)",
                                        f"paper: {PAPER_POLICY} / best baseline<br>(base {result.base.paper:.2f}x)"])
    fig.update_annotations(font_size=14)  # two short lines each: side by side in a narrow window
    for col, deltas in ((1, lambda r: r.deltas), (2, lambda r: r.paper_deltas)):
        for k, end in enumerate(("low", "high")):
            x = [_pct(deltas(r)[k]) for r in rows]
            hover = [_hover(r, end) for r in rows]
            fig.add_trace(go.Bar(y=names, x=x, orientation="h", name=f"{end} end", marker_color=_END_COLOURS[end],
                                 legendgroup=end, showlegend=col == 1, hovertext=hover, hoverinfo="text"),
                          row=1, col=col)
        flips = [(r.figure.label, _pct(deltas(r)[k]) or 0.0, end) for r in rows
                 for k, end in enumerate(("low", "high")) if r.flips[k]]
        if flips:
            fig.add_trace(go.Scatter(y=[f[0] for f in flips], x=[f[1] for f in flips], mode="markers+text",
                                     marker={"symbol": "x", "size": 11, "color": "#d62728"}, text=["flip"] * len(flips),
                                     textposition="middle right", name="recommendation flips",
                                     showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
        for sign in (-1, 1):
            fig.add_vline(x=100 * sign * result.threshold, line_dash="dot", line_color="#999", row=1, col=col)
    fig.update_xaxes(title_text="change of the ratio (%)", zeroline=True, zerolinecolor="#444")
    # the legend to the right of the panels, from their top down: above them it ran into the panel titles
    fig.update_layout(barmode="overlay", template="plotly_white", height=max(300, 140 + _ROW_H * len(rows)),
                      margin={"t": 70, "l": 230, "r": 20, "b": 60},
                      legend={"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"})
    return fig


def _hover(r: FigureSwing, end: str) -> str:
    o, v = (r.low, r.figure.low) if end == "low" else (r.high, r.figure.high)
    return (f"{html.escape(r.figure.label)} = {v:g} ({end} end; value {r.figure.value:g})<br>"
            f"recommended {html.escape(o.label)} in {html.escape(o.mode)}: {o.ratio:.2f}x the best baseline<br>"
            f"{PAPER_POLICY}: {o.paper:.2f}x")


def sensitivity_section(result: Sensitivity) -> tuple[str, str, str]:
    """(key, title, body HTML) for ``sim.report.write_report``'s ``sections``: the tornado chart and a note."""
    div = tornado_figure(result).to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False},
                                         default_width="100%", div_id="fig-sensitivity")
    b = result.base
    flagged = [r for r in result.rows if r.flagged(result.threshold)]
    # a source shared by several figures (a profile's one line on all its ranges) is written once, after the list
    shared = [src for src in dict.fromkeys(r.figure.source for r in flagged)
              if src and sum(r.figure.source == src for r in flagged) > 1]
    items = "".join(
        f"<li><b>{html.escape(r.figure.label)}</b> ({r.figure.low:g}-{r.figure.high:g}, value {r.figure.value:g}): "
        f"headline {r.low.ratio:.2f}x / {r.high.ratio:.2f}x at low / high"
        + "".join(f"; <b>flips</b> to {html.escape(o.label)} in {html.escape(o.mode)} at the {end} end"
                  for end, o, x in (("low", r.low, r.flips[0]), ("high", r.high, r.flips[1])) if x)
        + (f"<br><span class='note'>{html.escape(r.figure.source)}</span>"
           if r.figure.source and r.figure.source not in shared else "") + "</li>"
        for r in flagged)
    items += "".join(f"<li class='note'>Source: {html.escape(src)}</li>" for src in shared)
    note = (f"<p class=\"note\">Recommended {html.escape(b.label)} in {html.escape(b.mode)} mode at {b.ratio:.2f}x the "
            f"best baseline ({PAPER_POLICY} {b.paper:.2f}x), on the draw-0 trace of each mode. Each uncertain figure of "
            f"the hardware profile and the executor was set to each end of its range, one at a time "
            f"({result.runs} extra runs, {result.seconds:.0f} s). Flagged: a flip of the recommendation, or a ratio "
            f"moved by more than {100 * result.threshold:.0f}% (dotted lines).</p>")
    body = note + div + (f"<p class=\"note\">Flagged figures:</p><ul class=\"note\">{items}</ul>" if flagged
                         else "<p class=\"note\">No figure flips the recommendation or moves a ratio by more than "
                              f"{100 * result.threshold:.0f}%.</p>")
    return SECTION_KEY, SECTION_TITLE, body


def explore_sensitivity(tasks: Sequence[Task], rows: Sequence[SimRecord], all_gpu_allowed: bool, out: Path,
                        jobs: int | None = None, progress: bool = True, ray: str | None = None,
                        report: bool = True) -> list[tuple[str, str, str]]:
    """``sim.explore --sensitivity``: run it on the explore run's tasks (its rows as the base), print the table,
    write ``sensitivity.json``, and return the report's extra section (none with ``report`` false)."""
    result = sensitivity(tasks, all_gpu_allowed, base_rows=rows, workers=jobs, progress=progress, ray_address=ray)
    write_sensitivity(Path(out) / "sensitivity.json", result)
    print(result.table() + f"\n(sensitivity.json in {out}/)\n")
    return [sensitivity_section(result)] if report else []


__all__ = ["tornado_figure", "sensitivity_section", "explore_sensitivity", "SECTION_KEY", "SECTION_TITLE"]
