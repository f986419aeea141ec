"""``python -m validate.compare``: replay measured runs in the simulator and compare, policy by policy.

    python -m validate.compare RUN... [--hardware PROFILE.json] [--model M] [--out DIR]

RUN: a ``python -m runtime.bench`` output folder (or its runtime_results.json), or a runtime.generate
``METRICS.json TRACE.npz`` pair (validate.runs). Each run's trace is replayed under the same policy,
parameters and budget with the profile calibrated on the same machine (``--hardware``; default: the
profile.json beside the first run), see validate.replay. Reported (validate.stats): measured against simulated
tokens/s and per-step time with the signed error, the work counters (which must be equal: any difference
is flagged as a bug and the exit status is 1), Kendall tau of the policy rankings and whether the best policy
agrees, errors by policy / mode / step kind, and where the simulated time goes.

Output: a console table, ``compare.json``, ``table.md`` and ``report.html`` (plotly) in ``--out`` (default
runs/compare-<time>). Hold-out: the profile comes from micro-benchmarks (validate.calibrate); the runs are
only compared with, never fed to, the simulator; the report states which data calibrated and which validated.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

from offload.cli import Parser
from offload.errors import TideError, run_cli
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.atomic_io import atomic_write_text
from validate.replay import replay
from validate.runs import RESULTS, Run, load_runs
from validate.stats import run_row, summarise


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m validate.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="RUN", help=f"results folder, {RESULTS}, or METRICS.json TRACE.npz")
    p.add_argument("--hardware", default=None, help="calibrated profile (default: profile.json beside the first run)")
    p.add_argument("--model", default=None, help="model preset or config.json (default: the profile's model record)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<time>)")
    return p.parse_args(argv)


FALLBACK_PRESET = "h100-pcie5"  # what sim.explore prices with by default


def _profile_path(a: argparse.Namespace, runs: Sequence[Run]) -> tuple[str, str | None]:
    """(profile to replay with, a note when it is not a calibration of the runs' machine). Order: --hardware;
    profile.json beside the first run; the profile the runs' decisions were priced with (runtime.generate
    --hardware, or the policy file's); the simulator's default preset. The last two still check the work
    counters exactly (the same decisions), but their timings validate nothing about this machine."""
    if a.hardware:
        return a.hardware, None
    first = Path(a.runs[0])
    guess = (first if first.is_dir() else first.parent) / "profile.json"
    if guess.is_file():
        return str(guess), None
    priced = {r.record.priced_with for r in runs}
    if len(priced) > 1:
        raise TideError(f"the runs were priced with different hardware profiles ({', '.join(sorted(priced))}): "
                        f"pass --hardware")
    source = priced.pop() or FALLBACK_PRESET
    return source, (f"no calibrated profile (none at {guess}, no --hardware): replaying with {source}, "
                    f"{'the profile the runs decided with' if source != FALLBACK_PRESET else 'the default preset'}; "
                    f"the work counters are checked exactly, the timings are not a validation of this machine "
                    f"(python -m validate.calibrate writes a profile)")


def machine_warnings(profile: HardwareProfile, runs: Sequence[Run]) -> list[str]:
    """Runs that look as if they came from another machine than the profile (not an error: named)."""
    env = profile.environment
    out = []
    for run in runs:
        renv = run.environment
        for key in ("gpu", "cpu"):
            if env.get(key) and renv.get(key) and env[key] != renv[key]:
                out.append(f"{run.name}: {key} {renv[key]!r} differs from the profile's {env[key]!r}")
        if (run.record.device == "cpu") != profile.single_device:
            out.append(f"{run.name}: device {run.record.device} but the profile is single_device={profile.single_device}")
    return sorted(set(out))


def provenance(profile: HardwareProfile, path: Path, runs: Sequence[Run]) -> dict[str, Any]:
    cal = profile.calibration
    return {
        "calibrated_by": {"profile": str(path), "method": cal.get("method", "unknown (not made by validate.calibrate)"),
                          "environment": dict(profile.environment), "tables": sorted(profile.tables),
                          "holdout": {k: {"median_abs_rel_error": v.get("median_abs_rel_error"),
                                          "max_abs_rel_error": v.get("max_abs_rel_error")}
                                      for k, v in (cal.get("holdout") or {}).items() if v}},
        "validated_by": sorted({r.source for r in runs}),
        "given_to_simulator": "each run's trace (routing counts, step shapes), policy name and parameters, budget, dtype",
        "never_given_to_simulator": "measured times, tokens/s, hit ratios, queue times, counters",
    }


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:+.1f}%"


def print_console(rows: list[dict[str, Any]], summary: dict[str, Any], warnings: list[str]) -> None:
    w = max(12, *(len(r["run"]) for r in rows)) + 2
    cpu = any(r["tps_error_cpu"] is not None for r in rows)
    print(f"{'run':<{w}}{'meas tok/s':>11}{'sim tok/s':>11}{'error':>9}{'meas ms/step':>14}{'sim ms/step':>13}"
          f"{'error':>9}{'step mape':>11}" + (f"{'cpu share':>11}{'error(cpu)':>12}" if cpu else "") + "  counters")
    for r in rows:
        extra = (f"{_num(r['cpu_share']):>11}{_pct(r['tps_error_cpu']):>12}" if cpu else "")
        print(f"{r['run']:<{w}}{r['measured_tokens_per_s']:>11.2f}{r['simulated_tokens_per_s']:>11.2f}"
              f"{_pct(r['tps_error']):>9}{1e3 * r['measured_step_mean_s']:>14.3f}{1e3 * r['simulated_step_mean_s']:>13.3f}"
              f"{_pct(r['step_error']):>9}{100 * r['step_mape']:>10.1f}%{extra}  "
              + ("equal" if not r["counter_mismatch"] else "MISMATCH " + ", ".join(
                  f"{k} {v['measured']}!={v['simulated']}" for k, v in r["counter_mismatch"].items())))
    o = summary["overall"]
    print(f"\n|tokens/s error|: median {100 * o['median_abs_tps_error']:.1f}%, max {100 * o['max_abs_tps_error']:.1f}% "
          f"over {o['runs']} runs (mean signed {_pct(o['mean_signed_tps_error'])})")
    if "median_abs_tps_error_cpu" in o:
        print(f"contention-free (tokens per CPU second, device=cpu, 1 thread): median {100 * o['median_abs_tps_error_cpu']:.1f}%, "
              f"max {100 * o['max_abs_tps_error_cpu']:.1f}% (mean signed {_pct(o['mean_signed_tps_error_cpu'])})")
    for title, ranks in (("ranking", summary["rankings"]), ("ranking (CPU time)", summary["rankings_cpu"])):
        for name, rk in ranks.items():
            tau = "-" if rk["kendall_tau"] is None else f"{rk['kendall_tau']:.2f}"
            print(f"{title} {name}: Kendall tau {tau}; best measured {rk['best_measured']}, simulated "
                  f"{rk['best_simulated']} ({'same' if rk['same_best'] else 'DIFFERENT'})")
    for what in ("by_mode", "by_policy"):
        print(f"{what.replace('_', ' ')}: " + "; ".join(f"{k} {100 * v['median_abs_tps_error']:.1f}%"
                                                        for k, v in summary[what].items()))
    print("by step kind: " + "; ".join(f"{k} {_pct(v['error'])}" for k, v in summary["by_step_kind"].items()))
    print("targets (GPU): " + ", ".join(f"{k}: {'met' if v else ('-' if v is None else 'MISSED')}"
                                         for k, v in summary["targets"].items()))
    for msg in warnings:
        print(f"warning: {msg}")
    if summary["counter_mismatches"]:
        print(f"BUG: work counters differ for {len(summary['counter_mismatches'])} run(s): the runtime and the "
              "simulator did not do the same work")


def markdown(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The per-run table as markdown (for READMEs and result notes)."""
    cpu = any(r["tps_error_cpu"] is not None for r in rows)
    head = ["run", "measured tok/s", "simulated tok/s", "error (wall)"] + (["CPU share", "error per CPU second"] if cpu else [])
    lines = ["| " + " | ".join(head) + " | work counters |", "|" + "---|" * (len(head) + 1)]
    for r in rows:
        cells = [r["run"], f"{r['measured_tokens_per_s']:.1f}", f"{r['simulated_tokens_per_s']:.1f}", _pct(r["tps_error"])]
        if cpu:
            cells += [_num(r["cpu_share"]), _pct(r["tps_error_cpu"])]
        cells.append("equal" if not r["counter_mismatch"] else "**differ**")
        lines.append("| " + " | ".join(cells) + " |")
    o = summary["overall"]
    lines.append(f"\n|error|: median {100 * o['median_abs_tps_error']:.1f}%, max {100 * o['max_abs_tps_error']:.1f}%"
                 + (f"; per CPU second: median {100 * o['median_abs_tps_error_cpu']:.1f}%, max "
                    f"{100 * o['max_abs_tps_error_cpu']:.1f}%" if "median_abs_tps_error_cpu" in o else ""))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    runs = load_runs(a.runs)
    source, note = _profile_path(a, runs)
    if note:
        print(f"note: {note}")
    profile = HardwareProfile.load(source)
    ppath = Path(source)
    model = ModelSpec.load(a.model) if a.model else None
    replays = [replay(r, profile, model) for r in runs]
    rows = [run_row(rep) for rep in replays]
    summary = summarise(rows)
    warnings = machine_warnings(profile, runs)
    result = {"provenance": provenance(profile, ppath, runs), "profile": profile.name, "summary": summary,
              "runs": rows, "warnings": warnings}
    out = Path(a.out) if a.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(result, indent=1, default=_json_default) + "\n")
    atomic_write_text(out / "table.md", markdown(rows, summary))
    from validate.report import write_report  # plotly only here: calibrate and the runtime never need it

    series = {r["run"]: (rep.run.step_s, rep.result.step_times_s, rep.run.trace.kind,
                         rep.run.step_cpu_s if r["tps_error_cpu"] is not None else None) for r, rep in zip(rows, replays)}
    write_report(out / "report.html", result, series)
    print_console(rows, summary, warnings)
    print(f"wrote {out / 'compare.json'}, {out / 'table.md'} and {out / 'report.html'}")
    return 1 if summary["counter_mismatches"] else 0


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


if __name__ == "__main__":
    run_cli(main)
