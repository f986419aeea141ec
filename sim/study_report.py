"""The study's headline section for the HTML report (plotly; imported only when a report is written).

One grouped bar chart: tokens/s of each policy (best tau where it applies) at every grid point, log scale, the
paper's setting marked; and the headline table (``sim.study.headline``) as HTML.
"""
from __future__ import annotations

import html
from typing import Any, Sequence

import plotly.graph_objects as go

POLICY_COLUMNS = (("baseline", "best baseline"), ("static", "static"), ("tide", "tide (best τ)"), ("tide-opt", "tide-opt"),
                  ("riptide", "riptide"), ("oracle", "oracle"), ("all-gpu", "all-gpu"))


def headline_html(lines: Sequence[dict[str, Any]]) -> str:
    fig = go.Figure()
    labels = [("★ " if h["paper_setting"] else "") + h["point"] for h in lines]
    for key, name in POLICY_COLUMNS:
        ys = [h.get(key) for h in lines]
        if any(y is not None for y in ys):
            fig.add_bar(name=name, x=labels, y=ys, hovertemplate="%{x}<br>" + name + ": %{y:.1f} tokens/s<extra></extra>")
    fig.update_layout(barmode="group", yaxis_type="log", yaxis_title="tokens/s (log)", height=560,
                      margin=dict(b=260), title="Throughput per grid point (★ = the paper's setting)")
    div = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}, div_id="fig-study")
    cols = ["setting", "B", "mode", *[n for _, n in POLICY_COLUMNS], "tide-opt τ", "tide-opt / base",
            "tide-opt / static", "riptide / tide-opt", "riptide / oracle"]

    def cell(v: Any, spec: str = ".1f") -> str:
        return "–" if v is None else html.escape(format(v, spec) if not isinstance(v, str) else v)

    rows = []
    for h in lines:
        vals = [("★ " if h["paper_setting"] else "") + f"{h['model']} {h['hardware']}", str(h["budget"]), h["mode"],
                *[cell(h.get(k)) for k, _ in POLICY_COLUMNS], cell(h.get("tide_opt_tau") if isinstance(h.get("tide_opt_tau"), int) else None, "d"),
                cell(h.get("tide_opt_vs_base"), ".2f"), cell(h.get("tide_opt_vs_static"), ".2f"),
                cell(h.get("riptide_vs_tide_opt"), ".2f"),
                cell(h.get("riptide_vs_oracle"), ".2f")]
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    return f'<section id="study"><h2>Study headline</h2>{div}\n{table}</section>'
