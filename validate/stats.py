"""Measured against simulated: errors, counter checks, rankings, regimes, targets.

Per run (signed relative errors, simulated against measured):
  tps_error      = (tps_sim - tps_meas) / tps_meas
  step_error     = (mean step_sim - mean step_meas) / mean step_meas       (mean over the run's steps)
  step_mape      = median over steps of |step_sim[s] - step_meas[s]| / step_meas[s]
  cpu_share      = the share of the CPU the run got (offload.cpu_share; for older device=cpu records
                   cpu_s / (wall_s x threads)): with one torch thread, the share of the wall time the runtime
                   actually ran; other processes took the rest
  tps_error_cpu  = the same error against tokens / cpu_s, the contention-free throughput (device=cpu, one
                   thread only: there the process CPU time is the time the serial device worked); the simulated
                   profile comes from medians of short samples, which preemption rarely hits
  counters       = the work counters (offload.results.Counters), which must be equal: any difference is a bug
                   in the runtime or the simulator, flagged, and ``validate.compare`` exits 1
Across runs, per group of runs that differ only in policy (same mode, budget, device) and over all runs:
  Kendall tau (scipy.stats.kendalltau, tau-b) between measured and simulated tokens/s, and whether the
  fastest policy is the same (``rankings``; on device=cpu with one thread also ``rankings_cpu``, measured by
  tokens per CPU second). Regimes: mean/median/max |tps_error| by policy, by mode and by step kind
  (denoise, commit, prefill: the summed step times of each kind, measured against simulated).
GPU targets (the validation goals): median |tps_error| <= 5 %, max <= 10 %, identical rankings, exact counters.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np

from offload.trace import KIND_NAMES
from validate.replay import Replay

TARGETS = {"median_abs_tps_error": 0.05, "max_abs_tps_error": 0.10}


def _rel(sim: float, meas: float) -> float:
    return (sim - meas) / meas if meas > 0 else float("nan")


def contention_free(run: Any) -> bool:
    """Whether tokens / cpu_s is the contention-free throughput (see the module docstring)."""
    return run.record.device == "cpu" and run.threads == 1 and run.record.cpu_s is not None and run.record.cpu_s > 0


def run_row(rep: Replay) -> dict[str, Any]:
    run, rec, res = rep.run, rep.run.record, rep.result
    meas, sim = run.step_s, res.step_times_s
    cf = contention_free(run)
    cpu_tps = rec.generated_tokens / rec.cpu_s if cf else None
    cpu_steps = run.step_cpu_s if cf and run.step_cpu_s is not None else None
    per_step = np.abs(sim - meas) / np.maximum(meas, 1e-12)
    simulated = asdict(res.counters)
    counters = {k: {"measured": v, "simulated": simulated[k]} for k, v in asdict(rec.counters).items()}
    kinds = {}
    for code, name in KIND_NAMES.items():
        sel = run.trace.kind == code
        if sel.any():
            kinds[name] = {"steps": int(sel.sum()), "measured_s": float(meas[sel].sum()),
                           "simulated_s": float(sim[sel].sum()), "error": _rel(float(sim[sel].sum()), float(meas[sel].sum()))}
    return {
        "run": run.name, "source": run.source, "policy": rec.policy, "params": rec.params, "label": rec.label,
        "mode": rec.mode, "budget": rec.budget, "device": rec.device, "dtype": rec.dtype, "steps": int(meas.size),
        "step_source": run.step_kind, "generated_tokens": rec.generated_tokens,
        "measured_tokens_per_s": rec.tokens_per_s, "simulated_tokens_per_s": res.tokens_per_s,
        "tps_error": _rel(res.tokens_per_s, rec.tokens_per_s),
        "measured_wall_s": rec.wall_s, "simulated_time_s": res.sim_time_s,
        "measured_step_mean_s": float(meas.mean()), "simulated_step_mean_s": float(sim.mean()),
        "step_error": _rel(float(sim.mean()), float(meas.mean())), "step_mape": float(np.median(per_step)),
        "cpu_share": run.cpu_share,
        "measured_cpu_tokens_per_s": cpu_tps,
        "tps_error_cpu": None if cpu_tps is None else _rel(res.tokens_per_s, cpu_tps),
        "step_error_cpu": None if cpu_steps is None else _rel(float(sim.mean()), float(cpu_steps.mean())),
        "step_mape_cpu": None if cpu_steps is None else
        float(np.median(np.abs(sim - cpu_steps) / np.maximum(cpu_steps, 1e-12))),
        "counters": counters, "by_step_kind": kinds,
        "counter_mismatch": {k: v for k, v in counters.items() if v["measured"] != v["simulated"]},
        "measured_breakdown_s": {"forward": float(run.forward_s.sum()),
                                 "between_forwards": float(max(0.0, rec.wall_s - run.forward_s.sum()))},
        "simulated_busy_s": dict(res.busy_s), "simulated_by_what_s": rep.by_what, "serial_accounting": rep.serial,
    }


def ranking(rows: Sequence[dict[str, Any]], key: str = "measured_tokens_per_s") -> dict[str, Any]:
    """Kendall tau of measured (``key``) vs simulated tokens/s over ``rows`` and whether the best one agrees."""
    meas = np.array([r[key] for r in rows])
    sim = np.array([r["simulated_tokens_per_s"] for r in rows])
    labels = [r["label"] if len({x["mode"] for x in rows}) == 1 else r["run"] for r in rows]
    out: dict[str, Any] = {"runs": labels, "measured_order": [labels[i] for i in np.argsort(-meas, kind="stable")],
                           "simulated_order": [labels[i] for i in np.argsort(-sim, kind="stable")],
                           "best_measured": labels[int(np.argmax(meas))], "best_simulated": labels[int(np.argmax(sim))]}
    out["same_best"] = out["best_measured"] == out["best_simulated"]
    out["identical"] = out["measured_order"] == out["simulated_order"]
    if len(rows) >= 2:
        from scipy.stats import kendalltau  # compare runs on the CPU machine, which has scipy

        tau = kendalltau(meas, sim)
        out["kendall_tau"] = None if np.isnan(tau.statistic) else float(tau.statistic)
        out["p_value"] = None if np.isnan(tau.pvalue) else float(tau.pvalue)
    else:
        out["kendall_tau"] = out["p_value"] = None
    return out


def _errors(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    e = np.abs([r["tps_error"] for r in rows])
    s = np.array([r["tps_error"] for r in rows])
    out = {"runs": len(rows), "median_abs_tps_error": float(np.median(e)), "max_abs_tps_error": float(e.max()),
           "mean_signed_tps_error": float(s.mean())}
    c = np.array([r["tps_error_cpu"] for r in rows if r.get("tps_error_cpu") is not None])
    if c.size:
        out.update(median_abs_tps_error_cpu=float(np.median(np.abs(c))), max_abs_tps_error_cpu=float(np.abs(c).max()),
                   mean_signed_tps_error_cpu=float(c.mean()))
    return out


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple, list] = defaultdict(list)
    for r in rows:
        groups[(r["mode"], r["budget"], r["device"])].append(r)
    rankings = {f"{m} budget={b} {d}": ranking(g) for (m, b, d), g in groups.items() if len(g) >= 2}
    if len(groups) > 1:
        rankings["all runs"] = ranking(rows)
    rankings_cpu = {}
    if rows and all(r.get("measured_cpu_tokens_per_s") for r in rows):  # contention-free (device=cpu, 1 thread)
        key = "measured_cpu_tokens_per_s"
        rankings_cpu = {f"{m} budget={b} {d}": ranking(g, key) for (m, b, d), g in groups.items() if len(g) >= 2}
        if len(groups) > 1:
            rankings_cpu["all runs"] = ranking(rows, key)
    by_policy: dict[str, list] = defaultdict(list)
    by_mode: dict[str, list] = defaultdict(list)
    kinds: dict[str, list] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        by_policy[r["label"]].append(r)
        by_mode[r["mode"]].append(r)
        for name, k in r["by_step_kind"].items():
            kinds[name][0] += k["measured_s"]
            kinds[name][1] += k["simulated_s"]
    overall = _errors(rows)
    mism = [r["run"] for r in rows if r["counter_mismatch"]]
    same_rank = all(v["identical"] for v in rankings.values()) if rankings else None
    targets = {"median_abs_tps_error<=5%": overall["median_abs_tps_error"] <= TARGETS["median_abs_tps_error"],
               "max_abs_tps_error<=10%": overall["max_abs_tps_error"] <= TARGETS["max_abs_tps_error"],
               "identical_rankings": same_rank, "exact_counters": not mism}
    return {"overall": overall, "rankings": rankings, "rankings_cpu": rankings_cpu, "counter_mismatches": mism,
            "targets": targets,
            "by_policy": {k: _errors(v) for k, v in by_policy.items()},
            "by_mode": {k: _errors(v) for k, v in by_mode.items()},
            "by_step_kind": {k: {"measured_s": m, "simulated_s": s, "error": _rel(s, m)} for k, (m, s) in kinds.items()}}
