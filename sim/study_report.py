"""The study's headline section for the HTML report (plotly; imported only when a report is written).

One grouped bar chart: the median tokens/s over trace draws of each policy (best tau where it applies) at every
grid point, with its [min, max] over draws as an error bar, log scale, the paper's setting marked; and the
headline table (``sim.study.headline``) as HTML, each figure a median with its range, and the recommended policy
with the share of draws it wins.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import plotly.graph_objects as go

from sim.study import columns
from sim.study_spec import TABLES


def _bars(fig: go.Figure, lines: Sequence[dict[str, Any]], labels: list[str]) -> None:
    for name, key, _ in columns(TABLES["headline"]):
        ys = [h.get(key) for h in lines] if key else []
        if all(y is None for y in ys):  # not a figure, or no run of it
            continue
        lo = [(y - h[f"{key}_range"][0]) if y is not None and h.get(f"{key}_range") else 0.0 for y, h in zip(ys, lines)]
        hi = [(h[f"{key}_range"][1] - y) if y is not None and h.get(f"{key}_range") else 0.0 for y, h in zip(ys, lines)]
        fig.add_bar(name=name, x=labels, y=ys, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                    hovertemplate="%{x}<br>" + name + ": %{y:.1f} tokens/s (median over draws)<extra></extra>")


def headline_html(lines: Sequence[dict[str, Any]]) -> str:
    fig = go.Figure()
    labels = [("★ " if h["paper_setting"] else "") + h["point"] for h in lines]
    _bars(fig, lines, labels)
    draws = max((h.get("draws", 1) for h in lines), default=1)
    # a short title (the section's paragraph says what the bars and whiskers are): a long one was cut off
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="tokens/s (log)", height=560,
                      margin=dict(b=260, t=60), title={"text": "Throughput per grid point (★ = the paper's setting)",
                                                       "x": 0.0, "xanchor": "left", "xref": "container",
                                                       "pad": {"l": 12}})
    div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}, div_id="fig-study")
    cols = columns(TABLES["headline"])  # the markdown table's, the paper's setting starred
    cells = [[html.escape(cell(h)).replace(" **paper**", " ★") for _, _, cell in cols] for h in lines]
    table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(c[0])}</th>" for c in cols) + "</tr></thead><tbody>"
             + "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in cells) + "</tbody></table>")
    return (f'<section id="study"><h2>Study headline</h2><p>Each figure: the median over {draws} synthetic trace '
            f"draw(s) with its [min–max] (the chart's bars and whiskers, tokens/s on a log scale); ratios are taken "
            f"within a draw.</p>{div}\n{table}</section>")
