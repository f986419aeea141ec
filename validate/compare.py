"""``python -m validate.compare``: replay measured runs in the simulator and compare, policy by policy.

    python -m validate.compare RUN... [--hardware PROFILE.json] [--model M] [--out DIR]

RUN: a ``python -m runtime.bench`` output folder (or its runtime_results.json), or a runtime.generate ``METRICS.json
TRACE.npz`` pair (validate.runs). Each run's trace is replayed under the same policy, parameters and budget with the
profile calibrated on the same machine (``--hardware``; default: the profile.json beside the first run) and the
executor profile calibrated with it (``profile.executor.json`` beside it, with the measured decide() times; else the
``tide-moe`` preset), see validate.replay. Reported (validate.stats): measured against simulated tokens/s and
per-step time with the signed error, the work counters (which must be equal: any difference is flagged as a bug and
the exit status is 1), Kendall tau of the policy rankings and whether the best policy agrees, errors by policy /
mode / step kind, and where the simulated time goes.

Verdict, first in the console, table.md and report.html (``verdict`` in compare.json): ``counters: equal (N
runs)`` or which differ; ``timings: compared``, or ``timings: not comparable`` with each reason (:func:`judge`):
a profile for another device type than the runs (a CPU run against a GPU preset), a profile that is not a
validate.calibrate one (a preset's datasheet figures: a run priced with one and compared without --hardware),
a profile calibrated on another GPU or CPU, a starved calibration or run (offload.cpu_share below 0.8). Then no
timing target is scored and no ranking is made: the work counters are the whole check. Exit status 1 when the
counters differ, else 0 (timings that are not comparable are stated, not an error).

Output: a console table, ``compare.json``, ``table.md`` and ``report.html`` (plotly) in ``--out`` (default
runs/compare-<time>). Hold-out: the profile comes from micro-benchmarks (validate.calibrate); the runs are
only compared with, never fed to, the simulator; the report states which data calibrated and which validated.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from offload.cli import Parser
from offload.cpu_share import STARVED_BELOW, starved
from offload.errors import TideError, run_cli
from offload.executor import ExecutorProfile, executor_for
from offload.hardware import HARDWARE_PRESETS, HardwareProfile
from offload.model_spec import ModelSpec
from offload import provenance as results_page
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
    p.add_argument("--publish", default=None, metavar="PAGE.md",
                   help="also write table.md as a results page with its provenance: command, date, commit, "
                        "machine, load (offload/provenance.py; the pages under docs/results/)")
    return p.parse_args(argv)


FALLBACK_PRESET = "h100-pcie5"  # what sim.explore prices with by default


def _profile_path(a: argparse.Namespace, runs: Sequence[Run]) -> tuple[str, str | None]:
    """(profile to replay with, how it was chosen when it is not one the user named). Order: --hardware;
    profile.json beside the first run; the profile the runs' decisions were priced with (runtime.generate
    --hardware, or the policy file's); the simulator's default preset. The last two still check the work
    counters exactly (the same decisions); whether the timings compare is the verdict's (:func:`judge`)."""
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
    return source, (f"no --hardware and no {guess}, so "
                    + ("the profile the runs were priced with" if source != FALLBACK_PRESET else "the simulator's default"))


@dataclass(frozen=True)
class Verdict:
    """What a comparison may conclude, said first: whether the work counters are equal (they must be), and
    whether the timings were compared at all, with every reason they were not (:func:`judge`)."""

    runs: int
    differ: tuple[str, ...]   # runs whose counters differ from the simulator's
    reasons: tuple[str, ...]  # why the timings are not comparable (none: they were compared)
    profile: str
    unmeasured: int = 0       # runs whose CPU share was not recorded (older records, a GPU run without it)

    @property
    def comparable(self) -> bool:
        return not self.reasons

    def lines(self) -> list[str]:
        n = f"{self.runs} run{'' if self.runs == 1 else 's'}"
        out = [f"counters: equal ({n})" if not self.differ else
               f"counters: DIFFER for {len(self.differ)} of {n} ({_listed(self.differ)}): a bug, the runtime and "
               f"the simulator did not do the same work"]
        if self.comparable:
            share = (f"every run got at least {STARVED_BELOW:.0%} of the CPU" if not self.unmeasured else
                     f"{self.unmeasured} of {n} without a recorded CPU share")
            out.append(f"timings: compared (simulated with {self.profile}, a validate.calibrate profile of the runs' "
                       f"machine; {share})")
        elif len(self.reasons) == 1:
            out.append(f"timings: not comparable \u2014 {self.reasons[0]}")
        else:
            out.append("timings: not comparable:")
            out += [f"  - {r}" for r in self.reasons]
        if not self.comparable:
            out.append("  so no timing is scored against a target and no policy ranking is made; the work "
                       "counters above are the check")
        return out

    def to_json(self) -> dict[str, Any]:
        return {"counters": {"equal": not self.differ, "runs": self.runs, "differ": list(self.differ)},
                "timings": {"comparable": self.comparable, "reasons": list(self.reasons), "profile": self.profile},
                "text": self.lines()}


def _listed(names: Sequence[str], most: int = 3) -> str:
    names = list(names)
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _is_calibrated(profile: HardwareProfile) -> bool:
    """Made by validate.calibrate (its calibration record says so), not a preset or a hand-written file."""
    return "validate.calibrate" in str(profile.calibration.get("method", ""))


def judge(profile: HardwareProfile, source: str, chosen: str | None, runs: Sequence[Run],
          rows: Sequence[dict[str, Any]]) -> tuple[Verdict, list[str]]:
    """The verdict, and the warnings that do not stop a comparison. The timings are not comparable when the
    profile is for another device type than a run (a CPU run against a GPU profile), when it is not a
    validate.calibrate profile (a preset's datasheet figures), when it was calibrated on another GPU (GPU runs)
    or CPU model (CPU runs), when its calibration or a run was starved (offload.cpu_share below STARVED_BELOW)."""
    reasons: list[str] = []
    warnings: list[str] = []
    name = source
    on_cpu = [r.name for r in runs if r.record.device == "cpu"]
    on_gpu = [r.name for r in runs if r.record.device != "cpu"]
    if not profile.single_device and on_cpu:
        reasons.append(f"the profile {name} is for a GPU machine, but {_listed(on_cpu)} ran on the CPU (--device cpu)")
    if profile.single_device and on_gpu:
        reasons.append(f"the profile {name} is of a CPU (single_device), but {_listed(on_gpu)} ran on a GPU")
    cal = profile.calibration
    if not _is_calibrated(profile):
        what = "a preset of datasheet figures" if source in HARDWARE_PRESETS else "not a validate.calibrate profile"
        device = "cpu" if on_cpu and not on_gpu else "cuda" if on_gpu and not on_cpu else "cpu|cuda"
        reasons.append(f"the profile {name} is {what}, not a calibration of this machine"
                       + (f" ({chosen})" if chosen else "")
                       + f"; python -m validate.calibrate --device {device} --out profile.json writes one (pass it "
                         f"as --hardware, or keep it beside the run)")
    else:
        env = profile.environment
        for key, device in (("gpu", "cuda"), ("cpu", "cpu")):
            other = sorted({f"{r.environment[key]!r}" for r in runs if r.environment.get(key) and env.get(key)
                            and r.environment[key] != env[key] and r.record.device == device})
            if other:
                reasons.append(f"the profile was calibrated on {key} {env[key]!r}, the runs ran on {', '.join(other)}")
        for run in runs:  # the host CPU of a GPU run: its CPU experts; named, not disqualifying
            renv = run.environment
            if run.record.device != "cpu" and env.get("cpu") and renv.get("cpu") and env["cpu"] != renv["cpu"]:
                warnings.append(f"{run.name}: cpu {renv['cpu']!r} differs from the profile's {env['cpu']!r}")
        by_table = cal.get("cpu_share_by_table") or {}
        busy = [k for k, v in by_table.items() if isinstance(v, (int, float)) and starved(v)]
        whole = cal.get("cpu_share")
        if busy or (isinstance(whole, (int, float)) and starved(whole)):
            reasons.append(f"the profile's calibration was starved ({_listed(busy) if busy else 'as a whole'} got less "
                           f"than {STARVED_BELOW:.0%} of the CPU): recalibrate on an idle machine")
    low = [(r["run"], r["cpu_share"]) for r in rows if starved(r.get("cpu_share"))]
    if low:
        reasons.append(f"the machine was busy during {_listed([f'{n} (CPU share {s:.2f})' for n, s in low])}: "
                       f"below {STARVED_BELOW} the measured times hold other processes' work; rerun on an idle machine")
    differ = tuple(r["run"] for r in rows if r["counter_mismatch"])
    unmeasured = sum(r.get("cpu_share") is None for r in rows)
    return (Verdict(runs=len(rows), differ=differ, reasons=tuple(reasons), profile=name, unmeasured=unmeasured),
            sorted(set(warnings)))


def provenance(profile: HardwareProfile, path: Path, runs: Sequence[Run]) -> dict[str, Any]:
    cal = profile.calibration
    return {
        "calibrated_by": {"profile": str(path),
                          "method": cal.get("method") or ("none: a preset of datasheet figures" if str(path) in
                                                          HARDWARE_PRESETS else "unknown (not made by validate.calibrate)"),
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


def _counters_cell(r: dict[str, Any]) -> str:
    return "equal" if not r["counter_mismatch"] else "MISMATCH " + ", ".join(
        f"{k} {v['measured']}!={v['simulated']}" for k, v in r["counter_mismatch"].items())


def print_console(verdict: Verdict, rows: list[dict[str, Any]], summary: dict[str, Any], warnings: list[str]) -> None:
    """The verdict first; the timing comparison only when the timings are comparable."""
    for line in verdict.lines():
        print(line)
    print()
    w = max(12, *(len(r["run"]) for r in rows)) + 2
    if not verdict.comparable:  # what was measured, and the counters; nothing set against the simulated times
        print(f"{'run':<{w}}{'meas tok/s':>11}{'cpu share':>11}  counters")
        for r in rows:
            print(f"{r['run']:<{w}}{r['measured_tokens_per_s']:>11.2f}{_num(r['cpu_share']):>11}  {_counters_cell(r)}")
    else:
        _print_timings(rows, summary, w)
    for msg in warnings:
        print(f"warning: {msg}")
    if summary["counter_mismatches"]:
        print(f"BUG: work counters differ for {len(summary['counter_mismatches'])} run(s): the runtime and the "
              "simulator did not do the same work")


def _print_timings(rows: list[dict[str, Any]], summary: dict[str, Any], w: int) -> None:
    cpu = any(r["tps_error_cpu"] is not None for r in rows)
    print(f"{'run':<{w}}{'meas tok/s':>11}{'sim tok/s':>11}{'error':>9}{'meas ms/step':>14}{'sim ms/step':>13}"
          f"{'error':>9}{'step mape':>11}{'cpu share':>11}" + (f"{'error(cpu)':>12}" if cpu else "") + "  counters")
    for r in rows:
        extra = f"{_pct(r['tps_error_cpu']):>12}" if cpu else ""
        print(f"{r['run']:<{w}}{r['measured_tokens_per_s']:>11.2f}{r['simulated_tokens_per_s']:>11.2f}"
              f"{_pct(r['tps_error']):>9}{1e3 * r['measured_step_mean_s']:>14.3f}{1e3 * r['simulated_step_mean_s']:>13.3f}"
              f"{_pct(r['step_error']):>9}{100 * r['step_mape']:>10.1f}%{_num(r['cpu_share']):>11}{extra}  "
              + _counters_cell(r))
    o = summary["overall"]
    print(f"\n|tokens/s error|: median {100 * o['median_abs_tps_error']:.1f}%, max {100 * o['max_abs_tps_error']:.1f}% "
          f"over {o['runs']} runs (mean signed {_pct(o['mean_signed_tps_error'])})")
    if "median_abs_tps_error_cpu" in o:
        print(f"contention-free (tokens per CPU second, device=cpu, 1 thread): median {100 * o['median_abs_tps_error_cpu']:.1f}%, "
              f"max {100 * o['max_abs_tps_error_cpu']:.1f}% (mean signed {_pct(o['mean_signed_tps_error_cpu'])})")
    ranked = False
    for title, ranks in (("ranking", summary["rankings"]), ("ranking (CPU time)", summary["rankings_cpu"])):
        for name, rk in ranks.items():
            ranked = True
            tau = "-" if rk["kendall_tau"] is None else f"{rk['kendall_tau']:.2f}"
            print(f"{title} {name}: Kendall tau {tau}; best measured {rk['best_measured']}, simulated "
                  f"{rk['best_simulated']} ({'same' if rk['same_best'] else 'DIFFERENT'})")
    if not ranked:
        print("ranking: none (no two runs that differ in policy alone)")
    for what in ("by_mode", "by_policy"):
        print(f"{what.replace('_', ' ')}: " + "; ".join(f"{k} {100 * v['median_abs_tps_error']:.1f}%"
                                                        for k, v in summary[what].items()))
    if summary["by_step_kind"]:
        print("by step kind: " + "; ".join(f"{k} {_pct(v['error'])}" for k, v in summary["by_step_kind"].items()))
    print("targets (GPU): " + ", ".join(f"{k}: {'met' if v else ('-' if v is None else 'MISSED')}"
                                         for k, v in summary["targets"].items()))


def markdown(verdict: Verdict, rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """The verdict, then the per-run table as markdown (for READMEs and result notes)."""
    text = "\n".join(f"- {line[4:]}" if line.startswith("  - ") else f"\n{line.strip()}" if line.startswith("  ")
                     else f"**{line}**  " for line in verdict.lines())
    if not verdict.comparable:
        head = ["run", "measured tok/s", "CPU share", "work counters"]
        body = [[r["run"], f"{r['measured_tokens_per_s']:.1f}", _num(r["cpu_share"]),
                 "equal" if not r["counter_mismatch"] else "**differ**"] for r in rows]
        return text + "\n\n" + _md_table(head, body)
    cpu = any(r["tps_error_cpu"] is not None for r in rows)
    head = ["run", "measured tok/s", "simulated tok/s", "error (wall)", "CPU share"] + (["error per CPU second"] if cpu else [])
    body = []
    for r in rows:
        cells = [r["run"], f"{r['measured_tokens_per_s']:.1f}", f"{r['simulated_tokens_per_s']:.1f}", _pct(r["tps_error"]),
                 _num(r["cpu_share"])]
        if cpu:
            cells.append(_pct(r["tps_error_cpu"]))
        body.append(cells + ["equal" if not r["counter_mismatch"] else "**differ**"])
    o = summary["overall"]
    return (text + "\n\n" + _md_table(head + ["work counters"], body)
            + f"\n|error|: median {100 * o['median_abs_tps_error']:.1f}%, max {100 * o['max_abs_tps_error']:.1f}%"
            + (f"; per CPU second: median {100 * o['median_abs_tps_error_cpu']:.1f}%, max "
               f"{100 * o['max_abs_tps_error_cpu']:.1f}%" if "median_abs_tps_error_cpu" in o else "") + "\n")


def _md_table(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(row) + " |" for row in body]) + "\n"


def counters_only(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a comparison whose timings are not comparable: the counter check alone."""
    mism = [r["run"] for r in rows if r["counter_mismatch"]]
    return {"counter_mismatches": mism, "targets": {"exact_counters": not mism}}


def main(argv: Sequence[str] | None = None) -> int:
    began = results_page.start("python -m validate.compare", argv)
    a = parse_args(argv)
    runs = load_runs(a.runs)
    source, chosen = _profile_path(a, runs)
    profile = HardwareProfile.load(source)
    xname = executor_for(source)
    executor = ExecutorProfile.load(xname)
    model = ModelSpec.load(a.model) if a.model else None
    replays = [replay(r, profile, model, executor) for r in runs]
    rows = [run_row(rep) for rep in replays]
    verdict, warnings = judge(profile, source, chosen, runs, rows)
    summary = summarise(rows) if verdict.comparable else counters_only(rows)
    result = {"verdict": verdict.to_json(), "provenance": provenance(profile, Path(source), runs), "profile": profile.name,
              "executor": xname, "summary": summary, "runs": rows,
              "warnings": warnings}
    out = Path(a.out) if a.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(result, indent=1, default=_json_default) + "\n")
    atomic_write_text(out / "table.md", markdown(verdict, rows, summary))
    from validate.report import write_report  # plotly only here: calibrate and the runtime never need it

    series = {r["run"]: (rep.run.step_s, rep.result.step_times_s, rep.run.trace.kind,
                         rep.run.step_cpu_s if r["tps_error_cpu"] is not None else None) for r, rep in zip(rows, replays)}
    write_report(out / "report.html", result, series)
    print_console(verdict, rows, summary, warnings)
    print(f"wrote {out / 'compare.json'}, {out / 'table.md'} and {out / 'report.html'}")
    if a.publish:
        note = (f"The runtime's runs in {', '.join(f'`{r}`' for r in a.runs)} replayed in the simulator under the "
                f"profile `{source}` ({profile.name}). The runs' own machine and CPU share are in their records; the "
                "load below is the comparison's.")
        results_page.write_page(a.publish, "The simulator against the runtime", markdown(verdict, rows, summary),
                                began, note)
        print(f"wrote {a.publish}")
    return 1 if summary["counter_mismatches"] else 0


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


if __name__ == "__main__":
    run_cli(main)
