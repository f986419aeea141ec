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

POLICY_COLUMNS = (("baseline", "best baseline"), ("static", "static"), ("tide", "tide (best τ)"), ("tide-opt", "tide-opt"),
                  ("riptide", "riptide"), ("oracle", "oracle (clairvoyant heuristic)"), ("bound", "bound (no policy faster)"),
                  ("all-gpu", "all-gpu"))
RATIO_COLUMNS = (("tide_opt_vs_base", "tide-opt / base"), ("tide_opt_vs_static", "tide-opt / static"),
                 ("riptide_vs_tide_opt", "riptide / tide-opt"), ("riptide_vs_oracle", "riptide / oracle"),
                 ("riptide_vs_bound", "riptide / bound"))


def _bars(fig: go.Figure, lines: Sequence[dict[str, Any]], labels: list[str]) -> None:
    for key, name in POLICY_COLUMNS:
        ys = [h.get(key) for h in lines]
        if all(y is None for y in ys):
            continue
        lo = [(y - h[f"{key}_range"][0]) if y is not None and h.get(f"{key}_range") else 0.0 for y, h in zip(ys, lines)]
        hi = [(h[f"{key}_range"][1] - y) if y is not None and h.get(f"{key}_range") else 0.0 for y, h in zip(ys, lines)]
        fig.add_bar(name=name, x=labels, y=ys, error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                    hovertemplate="%{x}<br>" + name + ": %{y:.1f} tokens/s (median over draws)<extra></extra>")


def _cell(h: dict[str, Any], key: str, spec: str) -> str:
    v, r = h.get(key), h.get(f"{key}_range")
    if v is None:
        return "–"
    text = format(v, spec)
    if r is not None and h.get("draws", 1) > 1:
        text += f" [{format(r[0], spec)}–{format(r[1], spec)}]"
    return html.escape(text)


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
    cols = ["setting", "B", "mode", *[n for _, n in POLICY_COLUMNS], "tide-opt τ", *[n for _, n in RATIO_COLUMNS],
            "recommended (share of draws won)"]
    rows = []
    for h in lines:
        taus = sorted({str(t) for t in h.get("tide_opt_tau") or [] if t is not None})
        vals = [html.escape(("★ " if h["paper_setting"] else "") + f"{h['model']} {h['hardware']}"), str(h["budget"]),
                html.escape(h["mode"]), *[_cell(h, k, ".1f") for k, _ in POLICY_COLUMNS],
                html.escape("/".join(taus) or "–"), *[_cell(h, k, ".2f") for k, _ in RATIO_COLUMNS],
                html.escape(f"{h['recommended']} ({100 * h['recommended_wins']:.0f}%)" if h["recommended"] else "–")]
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in vals) + "</tr>")
    table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr></thead><tbody>"
             + "".join(rows) + "</tbody></table>")
    return (f'<section id="study"><h2>Study headline</h2><p>Each figure: the median over {draws} synthetic trace '
            f"draw(s) with its [min–max] (the chart's bars and whiskers, tokens/s on a log scale); ratios are taken "
            f"within a draw.</p>{div}\n{table}</section>")
