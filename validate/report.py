"""The HTML report of ``validate.compare`` (plotly, embedded: one self-contained file, written atomically).

Sections:
  provenance   which data calibrated the profile (micro-benchmarks, their held-out errors) and which validated
  (a) tokens/s measured and simulated per policy, one panel per mode (on device=cpu also tokens per CPU second:
      the contention-free measurement, see validate.stats)
  (b) signed tokens/s error per run, and the summed step time error per step kind (regimes)
  (c) per-step time series, measured and simulated, one run at a time (menu)
  (d) where the time goes: simulated seconds per kind of work, and the measured split into forward passes and
      the time between them (sampler, bookkeeping); simulated busy time per resource in the table
  tables       per-run errors and work counters (mismatches in red), rankings, targets
Led by validate.compare's verdict (counters equal or not; timings compared or not comparable, and why). When the
timings are not comparable the report holds the verdict, each run's measurement and work counters, and the
provenance: no figure, no error or ranking table (and no plotly.js). No table is rendered without rows: an
uncalibrated profile's missing held-out errors and machine, or a missing ranking, are said in a sentence.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import plotly
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from offload.atomic_io import atomic_write_text
from offload.trace import KIND_NAMES

_COLOURS = {"measured": "#444444", "simulated": "#1f77b4"}
_WHAT_COLOURS = {"dense": "#2ca02c", "experts_gpu": "#98df8a", "experts_cpu": "#d62728", "weights_h2d": "#1f77b4",
                 "prefetch_h2d": "#aec7e8", "act_d2h": "#ff7f0e", "act_h2d": "#ffbb78", "step": "#7f7f7f"}


def _div(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False)


def throughput_figure(rows: list[dict[str, Any]]) -> go.Figure:
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    fig = make_subplots(rows=1, cols=len(modes), subplot_titles=[f"mode: {m}" for m in modes])
    series = [("measured", "measured_tokens_per_s"), ("simulated", "simulated_tokens_per_s")]
    if all(r.get("measured_cpu_tokens_per_s") for r in rows):
        series.insert(1, ("measured per CPU second", "measured_cpu_tokens_per_s"))
    for j, mode in enumerate(modes, start=1):
        sel = [r for r in rows if r["mode"] == mode]
        for name, key in series:
            fig.add_trace(go.Bar(x=[r["label"] for r in sel], y=[r[key] for r in sel], name=name,
                                 marker_color=_COLOURS.get(name, "#999999"), legendgroup=name, showlegend=j == 1),
                          row=1, col=j)
    fig.update_layout(title="Throughput per policy: measured vs simulated (tokens/s)", barmode="group", height=420)
    return fig


def error_figure(rows: list[dict[str, Any]], by_kind: Mapping[str, Any]) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.7, 0.3],
                        subplot_titles=["tokens/s error per run (simulated - measured) / measured", "by step kind"])
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        fig.add_trace(go.Bar(x=[r["run"] for r in sel], y=[100 * r["tps_error"] for r in sel], name=mode), row=1, col=1)
        if all(r.get("tps_error_cpu") is not None for r in sel):
            fig.add_trace(go.Bar(x=[r["run"] for r in sel], y=[100 * r["tps_error_cpu"] for r in sel],
                                 name=f"{mode} (per CPU second)"), row=1, col=1)
    fig.add_trace(go.Bar(x=list(by_kind), y=[100 * v["error"] for v in by_kind.values()], name="step time error",
                         marker_color="#7f7f7f"), row=1, col=2)
    for y in (-5, 5):
        fig.add_hline(y=y, line_dash="dot", line_color="#999999", row=1, col=1)
    fig.update_yaxes(title_text="error (%)")
    fig.update_layout(title="Error by regime (dotted: the GPU target of 5 %)", height=460)
    return fig


def steps_figure(series: Mapping[str, tuple[np.ndarray, ...]]) -> go.Figure:
    """One run at a time: measured (wall; per CPU second where recorded) and simulated step times."""
    fig = go.Figure()
    names = list(series)
    owner: list[int] = []
    for i, name in enumerate(names):
        meas, sim, kind, cpu = series[name]
        text = [KIND_NAMES.get(int(k), str(k)) for k in kind]
        lines = [("measured", meas), ("simulated", sim)] + ([("measured CPU time", cpu)] if cpu is not None else [])
        for key, y in lines:
            fig.add_trace(go.Scatter(y=1e3 * np.asarray(y), mode="lines+markers", name=key, visible=i == 0,
                                     line_color=_COLOURS.get(key, "#ff7f0e"), marker_size=4, text=text,
                                     hovertemplate="step %{x}: %{y:.3f} ms (%{text})"))
            owner.append(i)
    buttons = [{"label": n, "method": "update",
                "args": [{"visible": [o == i for o in owner]}, {"title": f"Per-step time: {n}"}]}
               for i, n in enumerate(names)]
    fig.update_layout(title=f"Per-step time: {names[0] if names else ''}", xaxis_title="step", yaxis_title="ms",
                      height=440, updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15}])
    return fig


def breakdown_figure(rows: list[dict[str, Any]]) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=["simulated: seconds per kind of work", "measured: forwards vs between forwards"])
    x = [r["run"] for r in rows]
    whats = [w for w in _WHAT_COLOURS if any(r["simulated_by_what_s"].get(w, 0) > 0 for r in rows)]
    for w in whats:
        fig.add_trace(go.Bar(x=x, y=[r["simulated_by_what_s"].get(w, 0.0) for r in rows], name=w,
                             marker_color=_WHAT_COLOURS[w]), row=1, col=1)
    for part, colour in (("forward", "#444444"), ("between_forwards", "#bbbbbb")):
        fig.add_trace(go.Bar(x=x, y=[r["measured_breakdown_s"][part] for r in rows], name=f"measured {part}",
                             marker_color=colour), row=2, col=1)
    fig.update_yaxes(title_text="s")
    fig.update_layout(title="Where the time goes", barmode="stack", height=640)
    return fig


def _table(header: list[str], body: list[list[str]], marked: set[int] | None = None) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join(f"<tr{' class=miss' if marked and i in marked else ''}>" + "".join(f"<td>{c}</td>" for c in row)
                  + "</tr>" for i, row in enumerate(body))
    return f"<table><tr>{th}</tr>{trs}</table>"


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:+.1f}%"


def _counters(r: Mapping[str, Any]) -> str:
    """A run's work counters, a differing one in red with both values."""
    return "; ".join((f"<b style='color:#c00'>{k}: {v['measured']} vs {v['simulated']}</b>"
                      if v["measured"] != v["simulated"] else f"{k}: {v['measured']}") for k, v in r["counters"].items())


def _share(r: Mapping[str, Any]) -> str:
    return "-" if r.get("cpu_share") is None else f"{r['cpu_share']:.2f}"


def run_table(rows: list[dict[str, Any]]) -> str:
    body = []
    for r in rows:
        busy = ", ".join(f"{k} {v:.3f}" for k, v in r["simulated_busy_s"].items())
        body.append([html.escape(r["run"]), f"{r['measured_tokens_per_s']:.2f}", f"{r['simulated_tokens_per_s']:.2f}",
                     _pct(r["tps_error"]), f"{1e3 * r['measured_step_mean_s']:.3f}", f"{1e3 * r['simulated_step_mean_s']:.3f}",
                     _pct(r["step_error"]), f"{100 * r['step_mape']:.1f}%", _share(r), _pct(r.get("tps_error_cpu")), busy,
                     _counters(r)])
    missed = {i for i, r in enumerate(rows) if abs(r["tps_error"]) > 0.10}  # beyond the GPU target's maximum
    return _table(["run", "meas tok/s", "sim tok/s", "error", "meas ms/step", "sim ms/step", "error", "median step |err|",
                   "CPU share", "error per CPU second", "simulated busy s", "work counters (measured vs simulated)"], body,
                  missed)


def _verdict(v: Mapping[str, Any]) -> str:
    """The verdict block that leads the report (validate.compare.Verdict.to_json: its lines, bullets indented)."""
    ok = v["counters"]["equal"] and v["timings"]["comparable"]
    out, bullets = [], []
    for line in [*v["text"], ""]:
        if line.startswith("  - "):
            bullets.append(f"<li>{html.escape(line[4:])}</li>")
            continue
        if bullets:
            out.append(f"<ul>{''.join(bullets)}</ul>")
            bullets = []
        if line.startswith("  "):
            out.append(f"<p>{html.escape(line.strip())}</p>")
        elif line:
            out.append(f"<p><b>{html.escape(line)}</b></p>")
    return f"<div class='verdict {'ok' if ok else 'no'}'>{''.join(out)}</div>"


def _provenance(prov: Mapping[str, Any]) -> str:
    """Where the profile came from: its held-out errors and machine when it has them, a sentence when not."""
    cal = prov["calibrated_by"]
    holdout = (_table(["table", "held-out median |err|", "max |err|"],
                      [[html.escape(k), _pct(v["median_abs_rel_error"]).lstrip("+"), _pct(v["max_abs_rel_error"]).lstrip("+")]
                       for k, v in cal["holdout"].items()])
               if cal["holdout"] else "<p>No held-out errors: the profile records no calibration by validate.calibrate.</p>")
    env = cal["environment"]
    machine = (_table(["machine", ""], [[html.escape(str(k)), html.escape(str(v))] for k, v in env.items()])
               if env else "<p>No machine recorded: the profile was not measured on one.</p>")
    tables = html.escape(", ".join(cal["tables"])) if cal["tables"] else "none (roofline figures only)"
    return (f"<h2>Provenance (hold-out)</h2><p><b>Calibrated by</b> {html.escape(cal['method'])}: profile "
            f"<code>{html.escape(cal['profile'])}</code>, tables {tables}. <b>Validated by</b> "
            f"{html.escape(', '.join(prov['validated_by']))}. Given to the simulator: "
            f"{html.escape(prov['given_to_simulator'])}; never: {html.escape(prov['never_given_to_simulator'])}.</p>"
            f"{machine}{holdout}")


def counters_table(rows: list[dict[str, Any]]) -> str:
    """Per run: what was measured and the work counters, for a comparison whose timings are not comparable."""
    body = []
    for r in rows:
        body.append([html.escape(r["run"]), f"{r['measured_tokens_per_s']:.2f}", _share(r), _counters(r)])
    return _table(["run", "measured tok/s", "CPU share", "work counters (measured vs simulated)"], body,
                  {i for i, r in enumerate(rows) if r["counter_mismatch"]})


_STYLE = """<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left} .warn{color:#c00} tr.miss{background:#fde8e8}
.verdict{border:2px solid;padding:0.5em 1em;margin:1em 0} .verdict.ok{border-color:#2ca02c;background:#eef8ee}
.verdict.no{border-color:#d62728;background:#fdf0f0} .verdict p{margin:0.3em 0}</style>"""


def render(result: Mapping[str, Any], series: Mapping[str, tuple[np.ndarray, ...]]) -> str:
    rows, summary, prov = result["runs"], result["summary"], result["provenance"]
    verdict = result["verdict"]
    warn = "".join(f"<p class=warn>warning: {html.escape(w)}</p>" for w in result.get("warnings", []))
    bug = ("<p class=warn><b>BUG: the work counters differ for " + html.escape(", ".join(summary["counter_mismatches"]))
           + ": the runtime and the simulator did not do the same work.</b></p>") if summary["counter_mismatches"] else ""
    head = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>tide-moe validation</title>"""
    title = f"<h1>Simulated vs measured: {html.escape(result['profile'])}</h1>{_verdict(verdict)}{bug}{warn}"
    if not verdict["timings"]["comparable"]:  # no figure, no timing table: plotly.js is not even embedded
        return (f"{head}{_STYLE}</head><body>{title}<h2>Runs</h2><p>The timings are not compared (above); "
                f"what each run measured and its work counters:</p>{counters_table(rows)}{_provenance(prov)}"
                f"</body></html>")
    ranks = [(k, v) for k, v in summary["rankings"].items()]
    ranks += [(f"{k} (per CPU second)", v) for k, v in summary.get("rankings_cpu", {}).items()]
    rank = (_table(["group", "Kendall tau", "best measured", "best simulated", "measured order", "simulated order"],
                   [[html.escape(k), "-" if v["kendall_tau"] is None else f"{v['kendall_tau']:.2f}",
                     html.escape(v["best_measured"]), html.escape(v["best_simulated"]),
                     html.escape(" > ".join(v["measured_order"])), html.escape(" > ".join(v["simulated_order"]))]
                    for k, v in ranks])
            if ranks else "<p>No ranking: no two runs differ in policy alone (same mode, budget and device).</p>")
    targets = ", ".join(f"{k}: {'met' if v else ('-' if v is None else '<b>missed</b>')}" for k, v in summary["targets"].items())
    o = summary["overall"]
    figs = [throughput_figure(rows), error_figure(rows, summary["by_step_kind"]), steps_figure(series),
            breakdown_figure(rows)]
    cpu_note = (f"; per CPU second (contention-free, device=cpu): median {100 * o['median_abs_tps_error_cpu']:.1f}%, "
                f"max {100 * o['max_abs_tps_error_cpu']:.1f}%" if "median_abs_tps_error_cpu" in o else "")
    return f"""{head}
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
{_STYLE}
</head><body>{title}
{_provenance(prov)}
<h2>Summary</h2><p>|tokens/s error| median {100 * o['median_abs_tps_error']:.1f}%, max {100 * o['max_abs_tps_error']:.1f}%
over {o['runs']} runs{cpu_note}. Targets: {targets}.</p>{rank}
{''.join(_div(f) for f in figs)}
<h2>Runs</h2><p>Rows in red miss the GPU target (|error| &gt; 10 %): their simulated busy time per resource is
in the table, the simulated and measured split of their time in figure (d). A measured per-resource breakdown
needs the expert store to time its phases (not recorded yet).</p>{run_table(rows)}</body></html>"""


def write_report(path: str | Path, result: Mapping[str, Any], series: Mapping[str, tuple[np.ndarray, ...]]) -> None:
    """``series``: run name -> (measured step s, simulated step s, step kinds, measured step CPU s or None)."""
    atomic_write_text(path, render(result, series))
