"""``python -m sim.explore``: what-if studies over policies, refresh interval tau and GPU expert budget.

One runner (``sim.study``): a plain run is the one-point study its options describe, ``--study`` a grid of them
(``sim.study_spec``: models, hardware, budgets, modes, generation lengths, executors, synthetic or recorded
traces, and the table that sums it up). With no arguments it runs the default study: LLaDA2.0-mini on the H100/PCIe
5 preset, 128 of 256 experts per layer resident, under the ``tide-moe`` executor, three synthetic trace draws of
each of ``prefix-recompute`` and ``block-cache`` (gen length 1024 with EOS stop, block 32; ``sim.spread``), every
policy, tau from 1 to 16. It
prints the medians and [min-max] over draws with the bound (``sim.bound``) and writes a run directory:

  config.json               the resolved configuration (the run as a study, model, hardware profile, executor, budget)
  results.json              one row per (trace, policy, tau): counters, timing, utilisation, the bound
  report.html               self-contained plotly report, leading with the recommendation
  recommended-policy.json   the fastest policy the runtime can execute within the budget, with its parameters,
                            the model, hardware and mode (``runtime.generate --policy``)
  traces/*.npz              the traces replayed (synthetic ones are generated here, seeded)
  timeline.json             with --timeline: Chrome-trace timeline of the recommended run (Perfetto)
  sensitivity.json          with --sensitivity: each guessed figure at both ends of its range (``sim.sensitivity``)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offload import provenance
from offload.atomic_io import atomic_write_text
from offload.budget import fits
from offload.cli import Parser, add_budget, add_executor, add_generation, add_hardware, add_model, budget_from
from offload.cli import given_options, refuse
from offload.errors import TideError, run_cli
from offload.executor import ExecutorProfile, executor_for
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import POLICIES, RUNNABLE, make_policy, policy_from_text, role_of, sweeps_tau
from offload.policies.policy_file import PolicyChoice, write_policy_file
from offload.results import SimRecord, from_json, to_json
from offload.trace_io import read_trace
from sim import spread
from sim.study import (Point, Replay, TraceKey, grid_points, headline, make_traces, markdown_table, policy_grid,
                       study_table, study_tasks)
from sim.study_spec import MAX_SEEDS, TABLES, StudySpec, check_seeds, load_study
from sim.sweep import Task, run_task, run_tasks, task_row

# options a run would not use: refused rather than silently ignored
SYNTHETIC_FLAGS = ("modes", "gen_length", "block_length", "prompt_length", "tokens_per_forward", "seed", "seeds")
NOT_IN_STUDY = ("model", "hardware", "trace", "modes", "block_length", "prompt_length", "tokens_per_forward",
                "gpu_experts_per_layer", "gpu_memory_gb", "timeline")
# a sweep estimated to take longer than this says so before it starts (how many runs, about how long)
ESTIMATE_ABOVE_S = 30.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The options, with ``given``: the set of options given on the command line (for refusing ignored ones)."""
    p = _parser()
    a = p.parse_args(argv)
    a.given = given_options(p, argv)
    return a


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m sim.explore", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(p, default="llada2.0-mini")
    add_hardware(p, default="h100-pcie5")
    add_executor(p)
    p.add_argument("--trace", nargs="+", metavar="FILE", help="replay these trace files instead of synthetic ones; "
                   "the first one's header gives the model (a preset) and the budget (a runtime run's) unless "
                   "--model or a budget option is given")
    g = p.add_argument_group("synthetic traces")
    add_generation(g, gen_length=1024, steps=False, modes="many", seed_help="synthetic traces: seed")
    g.add_argument("--tokens-per-forward", type=float, default=None, help="synthetic traces: mean tokens committed "
                   "per denoising step (default: the model's published figure)")
    g.add_argument("--seeds", type=int, default=3, help="synthetic trace draws per mode: draw 0 the calibrated "
                   "generator with --seed, draw i seed + i with the generator's uncertain parameters drawn within "
                   "their tolerance; results as medians with their [min-max] over draws, and the recommendation's "
                   f"share of wins (default 3, at most {MAX_SEEDS}: each draw replays every policy; a study's own "
                   "default: its file's seeds)")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), help=f"policies to run: name or name(k=v, ...), "
                   f"e.g. tide(tau=4) riptide(prefetch=false) ({', '.join(POLICIES)}; default: all of them); a tide "
                   f"without tau is swept over --tau; the oracle is simulated, never recommended")
    add_budget(p, default="a recorded trace's own, else 128, or half the experts of a model with fewer than 256")
    p.add_argument("--tau", type=int, nargs="+", default=list(range(1, 17)),
                   help="refresh intervals a tau policy without its own tau is swept over (default 1 2 ... 16)")
    p.add_argument("--out", default=None, help="run directory (default runs/explore-<time>)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result rows to this JSON file")
    p.add_argument("--timeline", action="store_true", help="write a Chrome-trace timeline of the recommended run")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the sweep on this Ray cluster ('auto', 'ray://host:port', or 'local' to start one)")
    p.add_argument("--study", default=None, metavar="NAME|FILE",
                   help="run a study instead: 'paper' (sim/studies/paper.json: mini and flash x A100/PCIe 4 and "
                        "H100/PCIe 5 x budgets 25/50/75%% x both modes x every policy), 'paper-repro' (TIDE's own "
                        "setting under both executors, sim/studies/paper-repro.json, with its own table) or a study "
                        "JSON file; --policies, --tau, --gen-length, --seed, --seeds and --executor override the "
                        "study's")
    p.add_argument("--reuse", action="store_true", help="with --study and --out: print and publish the study's tables "
                   "from that earlier run directory, without running it")
    p.add_argument("--no-report", action="store_true", help="skip the HTML report")
    p.add_argument("--sensitivity", action="store_true",
                   help="also set each uncertain figure of the hardware profile and executor (their 'ranges') to "
                        "each end of its range and report which flip the recommendation or move recommended / best "
                        "baseline or tide-opt / best baseline by more than 10%% (sensitivity.json, a tornado chart "
                        "in the report); on the draw-0 trace of each mode, causal policies only: at most 2 x figures "
                        "x those runs extra (the H100 preset: 12 figures, 24 x 18 = 432 runs on the default run with --seeds 1 "
                        "--tau 1 2 4 8; timed in docs/results/first-hour.md); not with --study")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--publish", default=None, metavar="PAGE.md",
                   help="also write the printed table as a results page with its provenance: command, date, "
                        "commit, machine, load (offload/provenance.py; the pages under docs/results/)")
    return p


def _check_args(a: argparse.Namespace) -> None:
    if a.study:
        refuse(a.given, NOT_IN_STUDY, f"--study {a.study} sets its own grid")
    elif a.trace:
        refuse(a.given, SYNTHETIC_FLAGS, "--trace replays recorded traces")
    if a.reuse and not (a.study and a.out):
        raise TideError("--reuse prints a study's tables from its earlier run: give --study and that run's --out")
    if a.executor is not None:
        ExecutorProfile.load(a.executor)  # an unknown name or a bad file ends here, in one line
    if any(t < 1 for t in a.tau):
        raise TideError(f"tau must be >= 1, got {min(a.tau)}")
    built = [policy_from_text(text) for text in a.policies]  # unknown names and bad values end here, in one line
    if not a.study and not any(p.causal for p in built):
        raise TideError(f"--policies {' '.join(a.policies)}: nothing the runtime can execute to recommend (the "
                        f"oracle reads future routing); add one of {', '.join(RUNNABLE)}")
    if a.gen_length < 1 or a.block_length < 1 or a.prompt_length < 0:
        raise TideError("gen length and block length must be >= 1, prompt length >= 0")
    check_seeds(a.seeds)
    if a.jobs is not None and a.jobs < 1:
        raise TideError("--jobs must be >= 1")
    if a.study and a.sensitivity:
        raise TideError("--sensitivity varies the figures of one run's hardware and executor; a --study grid has "
                        "many: run it on one explore run (without --study)")


def plain_study(a: argparse.Namespace, budget: int) -> StudySpec:
    """The one-point study explore's options describe: one model, machine, budget and executor, every mode."""
    return StudySpec(name="explore", models=(a.model,), hardware=(a.hardware,), fractions=(), budgets=(budget,),
                     modes=() if a.trace else tuple(dict.fromkeys(a.modes)), policies=tuple(a.policies),
                     tau=tuple(a.tau), gen_length=(a.gen_length,), seed=a.seed, seeds=a.seeds,
                     traces=tuple(a.trace or ()), executors=(executor_for(a.hardware, a.executor),),
                     block_length=a.block_length, prompt_length=a.prompt_length,
                     tokens_per_forward=a.tokens_per_forward)


def recommend(rows: list[SimRecord], all_gpu_allowed: bool) -> tuple[SimRecord, dict[str, float]]:
    """The policy with the highest median tokens/s over the trace draws (``sim.spread``) among those that keep to
    the budget (the ceiling only when the budget is every expert and they fit the GPU), as its most frequent
    per-draw best row, with the predicted figures: median tokens/s, its range and the share of wins."""
    found = spread.recommendation(rows, lambda r: spread.eligible(r, all_gpu_allowed))  # never the oracle
    if found is None:
        raise TideError("nothing to recommend: every policy run was the oracle (clairvoyant) or all-gpu, which "
                        "does not keep to the budget; add a policy the runtime can execute, e.g. --policies tide")
    return found


def summary_table(rows: list[SimRecord]) -> str:
    """Per trace: every policy without a swept tau, and each with one at its best tau (with the tau range)."""
    lines = []
    for trace in dict.fromkeys(r.trace for r in rows):
        rs = [r for r in rows if r.trace == trace]
        base = getattr(spread.best_baseline(rs), "tokens_per_s", float("nan"))
        lines.append(f"\ntrace {trace} ({rs[0].mode}, {rs[0].generated_tokens} tokens, {rs[0].steps} forwards)")
        lines.append(f"  {'policy':<24}{'tokens/s':>10}{'vs base':>9}{'hit':>7}{'H2D GB':>9}{'D2H GB':>9}"
                     f"{'sim s':>9}{'gpu%':>6}{'cpu%':>6}{'h2d%':>6}")
        for pol in dict.fromkeys(r.policy for r in rs):  # each policy at its best (tau)
            r = spread.best(rs, pol)
            label, u, c = r.label + (" best" if sweeps_tau(pol) else ""), r.utilisation, r.counters
            lines.append(f"  {label:<24}{r.tokens_per_s:>10.1f}{r.tokens_per_s / base:>8.2f}x{c.hit_ratio:>7.3f}"
                         f"{c.h2d_bytes / 1e9:>9.2f}{c.d2h_bytes / 1e9:>9.2f}{r.sim_time_s:>9.2f}"
                         f"{100 * u['gpu']:>6.0f}{100 * u['cpu']:>6.0f}{100 * u['h2d']:>6.0f}")
        bound = spread.bound_of(rs)
        if bound:
            lines.append(f"  {'bound (sim.bound)':<24}{bound:>10.1f}{bound / base:>8.2f}x  no policy within the budget "
                         f"is faster on this trace and machine (all-gpu holds every expert; the oracle is a "
                         f"clairvoyant heuristic)")
        for pol in (p for p in POLICIES if sweeps_tau(p)):
            sweep = sorted((r for r in rs if r.policy == pol), key=lambda r: r.tau)
            if len(sweep) > 1:
                lines.append(f"  {pol} tokens/s by tau: " + " ".join(f"{r.tau}:{r.tokens_per_s:.1f}" for r in sweep))
    return "\n".join(lines)


def _config(study: StudySpec, executor: ExecutorProfile, traces: dict[TraceKey, list[Replay]],
            **extra: Any) -> dict[str, Any]:
    """A run directory's config.json: the command, the study (a plain run's is its options), the executor, the
    traces and ``extra``."""
    return {"command": "python -m sim.explore " + " ".join(sys.argv[1:]), "study": study.to_dict(),
            "executor": executor.to_dict(), "traces": {r.name: r.path for rs in traces.values() for r in rs}, **extra}


def default_budget(model: ModelSpec) -> int:
    """128 experts per layer (TIDE's setting for LLaDA2.0-mini, half its 256) for models of at least 256 routed
    experts, else half of them: a budget that holds every expert would make every policy the same run."""
    return 128 if model.num_experts >= 256 else max(1, model.num_experts // 2)


def _model_and_budget(a: argparse.Namespace) -> tuple[ModelSpec, int | None]:
    """The model (--model, else the first trace's header names a preset) and the budget a recorded trace ran
    with (its header's origin.experts_per_layer; used when no budget option is given)."""
    if not a.trace:
        return ModelSpec.load(a.model), None
    from offload.model_spec import MODEL_PRESETS

    first = read_trace(a.trace[0])
    name = str(first.header["model"].get("name", ""))
    if "model" not in a.given:
        if name not in MODEL_PRESETS:
            raise TideError(f"trace {a.trace[0]} was recorded for model {name!r}, which is not a preset: pass its "
                            f"config.json with --model")
        a.model = name
    model = ModelSpec.load(a.model)
    want = first.header["model"].get("config_hash")
    if want and want != model.config_hash:
        raise TideError(f"trace {a.trace[0]} was recorded for {name} (config hash {want}), not for {model.name} "
                        f"(config hash {model.config_hash})")
    budget = first.header.get("origin", {}).get("experts_per_layer")
    return model, (int(budget) if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool) else None)


def _source(text: str) -> str:
    """How a later command loads the same model or profile: a file's absolute path, else the preset name."""
    return str(Path(text).resolve()) if Path(text).exists() else text


def _rows_json(rows: Sequence[SimRecord]) -> str:
    return json.dumps([to_json(r) for r in rows], indent=1) + "\n"


def _load_rows(run_dir: Path) -> list[SimRecord]:
    path = run_dir / "results.json"
    if not path.is_file():
        raise TideError(f"{run_dir}: no results.json (run the study first)")
    return [from_json(SimRecord, d) for d in json.loads(path.read_text())]


def _study(a: argparse.Namespace) -> StudySpec:
    """The study named by --study with the options given on the command line in place of its own."""
    study = load_study(a.study)
    if study.traces:
        refuse(a.given, ("gen_length", "seed", "seeds"), f"study {study.name} replays trace files")
    overrides = {k: tuple(getattr(a, k)) if k in ("policies", "tau") else getattr(a, k)
                 for k in ("policies", "tau", "seed", "seeds") if k in a.given}
    overrides |= {"gen_length": (a.gen_length,)} if "gen_length" in a.given else {}
    return replace(study, **overrides, **({"executors": (a.executor,)} if a.executor else {}))


def _run_executor(a: argparse.Namespace, study: StudySpec, points: list[Point], traces: dict[TraceKey, list[Replay]],
                  executor: ExecutorProfile, out: Path) -> list[SimRecord]:
    """The study's grid under one executor, into run directory ``out``: its headline printed and written."""
    t0 = time.perf_counter()
    tasks = study_tasks(study, points, traces, executor.to_dict())
    runs = len(policy_grid(study.policies, study.tau))
    print(f"study {study.name} (executor {executor.name}): {len(points)} grid points x "
          f"{len(tasks) // len(points) // runs} trace draws x {runs} policy runs = {len(tasks)} runs"
          + (f" on Ray ({a.ray})" if a.ray else ""))
    rows = run_sweep(tasks, a, f"{len(tasks)} runs")
    lines = headline(rows)
    table = markdown_table(lines)
    config = _config(study, executor, traces, points=[p.label for p in points])
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "results.json", _rows_json(rows))
    atomic_write_text(out / "headline.json", json.dumps(lines, indent=1) + "\n")
    atomic_write_text(out / "study.md", table)
    if not a.no_report:
        from sim.report import write_report
        from sim.study_report import headline_html

        write_report(out / "report.html", rows, config, title=f"tide-moe study: {study.name}", intro_html=headline_html(lines))
    print(table)
    written = ["study.md", "headline.json", *(["report.html"] if not a.no_report else []), "results.json", "config.json"]
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.1f} s; results in {out}/ ({', '.join(written)})"
          + (f"; rows also in {a.json}" if a.json else ""))
    return rows


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: '45 s', '1 min 10 s', '2 h 5 min'."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _samples(tasks: Sequence[Task]) -> dict[str, int]:
    """Per model, the index of the first task of the policy with the most runs (a tau-swept one, usually): the
    run timed to estimate the sweep. One per model, since a model's layers and experts set the cost of a run."""
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.policy] = counts.get(t.policy, 0) + 1
    common = max(counts, key=lambda p: counts[p])
    first: dict[str, int] = {}
    for i, t in enumerate(tasks):
        if t.policy == common:
            first.setdefault(t.model["name"], i)
    return first


def run_sweep(tasks: Sequence[Task], a: argparse.Namespace, count: str) -> list[SimRecord]:
    """``run_tasks`` on the options' workers, with a line before a long sweep: one run per model is timed here
    first (its row kept, not rerun), the sweep's time estimated from it, and ``count`` (how many runs) with that
    estimate printed when it exceeds ``ESTIMATE_ABOVE_S``. Not on Ray, whose workers are not known here."""
    if a.ray or len(tasks) < 2:
        return run_tasks(tasks, workers=a.jobs, progress=not a.quiet, ray_address=a.ray)
    done: dict[int, SimRecord] = {}
    per_model: dict[str, float] = {}
    for model, i in _samples(tasks).items():
        t0 = time.perf_counter()
        done[i] = task_row(tasks[i])
        per_model[model] = time.perf_counter() - t0
    rest = [t for i, t in enumerate(tasks) if i not in done]
    workers = max(1, min(a.jobs or os.cpu_count() or 1, len(rest)))
    estimate = sum(per_model[t.model["name"]] for t in rest) / workers
    if estimate > ESTIMATE_ABOVE_S:
        print(f"{count}, est. {duration(estimate)} on {workers} worker{'s' * (workers > 1)}", flush=True)
    rows = iter(run_tasks(rest, workers=a.jobs, progress=not a.quiet))
    return [done[i] if i in done else next(rows) for i in range(len(tasks))]


def run_study(a: argparse.Namespace, began: provenance.Start) -> int:
    """``--study``: the grid (``sim.study``) under each of the study's executors, each in a run directory of its
    own when there are several, its headline table (markdown and HTML); then the study's own table over them
    (``TableSpec``), and the page ``--publish`` writes. ``--reuse``: the tables from the run directories."""
    study = _study(a)
    out = Path(a.out or f"runs/study-{study.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    traces = {} if a.reuse else make_traces(study, out)
    points = grid_points(study, traces)
    results: dict[str, list[SimRecord]] = {}
    for x in map(ExecutorProfile.load, study.executors):
        run_dir = out / x.name if len(study.executors) > 1 else out
        results[x.name] = _load_rows(run_dir) if a.reuse else _run_executor(a, study, points, traces, x, run_dir)
    if a.json and not a.reuse:
        atomic_write_text(a.json, _rows_json([r for rows in results.values() for r in rows]))
    spec = TABLES[study.table]
    own = spec is not TABLES["headline"] or len(results) > 1  # a table of its own, over the executors
    spec = spec if "executor" in spec.lead or len(results) == 1 else replace(spec, lead=("executor", *spec.lead))
    text = study_table(results, spec)
    if own:
        atomic_write_text(out / f"{study.name}.md", text)
    if own or a.reuse:  # else the run printed it already
        print("\n" + (f"{spec.title}:\n" if spec.title else "") + text if own else text)
    if a.publish:
        note = spec.note.format(study=study.name, executor=", ".join(results),
                                runs=sum(map(len, results.values())))
        note += " Printed from earlier runs (`--reuse`): the date is the table's, not the runs'." if a.reuse else ""
        provenance.write_page(a.publish, spec.page_title.format(study=study.name), text, began, note)
        print(f"wrote {a.publish}")
    return 0


def run_setting(a: argparse.Namespace, began: provenance.Start) -> int:
    """A plain run: the one-point study of the options, its per-trace table and the recommended policy."""
    model, header_budget = _model_and_budget(a)
    hw = HardwareProfile.load(a.hardware)
    budget = budget_from(a, model, default=default_budget(model), hw=hw, experts_per_layer=header_budget)
    out = Path(a.out or f"runs/explore-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    if not a.trace:  # about half a second each for LLaDA2.0-mini at 1024 tokens: say so before the silence
        modes = list(dict.fromkeys(a.modes))
        print(f"drawing {len(modes) * a.seeds} synthetic traces ({' '.join(modes)} x {a.seeds} draws)", flush=True)
    study = plain_study(a, int(budget.max()))
    traces = make_traces(study, out)
    points = grid_points(study, traces)
    x = None if a.executor is None else ExecutorProfile.load(a.executor).to_dict()  # None: the default executor
    tasks = study_tasks(study, points, traces, x, per_trace=True)
    rows = run_sweep(tasks, a, f"about {len(tasks)} runs")
    all_fit = fits(model, hw, np.full(model.num_moe_layers, model.num_experts))
    config = _config(study, ExecutorProfile.load(a.executor), traces, model=model.summary(), hardware=hw.to_dict(),
                     budget={"experts_per_layer": int(budget.max()), "fits_gpu": fits(model, hw, budget),
                             "gib": float(budget.sum() * model.expert_bytes / 2**30)}, all_experts_fit_gpu=all_fit,
                     cost_model="roofline (offload.cost.RooflineCostModel)",
                     environment={"python": platform.python_version(), "platform": platform.platform(),
                                  "numpy": np.__version__, "cores": os.cpu_count()})
    best, predicted = recommend(rows, all_fit and int(budget.min()) == model.num_experts)
    choice = PolicyChoice(policy=best.policy, params=best.params,
                          experts_per_layer=None if role_of(best.policy) == "ceiling" else int(budget.max()),
                          mode=best.mode, model=model.name, model_config_hash=model.config_hash, hardware=hw.name,
                          predicted=predicted, created_by=config["command"], model_source=_source(a.model),
                          hardware_source=_source(a.hardware))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "results.json", _rows_json(rows))
    write_policy_file(out / "recommended-policy.json", choice)
    if a.json:
        atomic_write_text(a.json, _rows_json(rows))
    if a.timeline:
        from sim.chrome_trace import write_chrome_trace

        # a row reports policy.params(), which may spell out defaults its task left implicit (riptide's switches)
        task = next(t for t in tasks if t.trace_name == best.trace and t.policy == best.policy
                    and make_policy(t.policy, **t.params).params() == best.params)
        res = run_task(task, timeline=True)
        write_chrome_trace(out / "timeline.json", res, {"model": model.name, "hardware": hw.name})
    sections: list[tuple[str, str, str]] = []  # extra report sections (--sensitivity)
    if a.sensitivity:  # each uncertain figure at both ends of its range (sim.sensitivity)
        from sim.sensitivity_report import explore_sensitivity

        sections = explore_sensitivity(tasks, rows, all_fit and int(budget.min()) == model.num_experts, out,
                                       jobs=a.jobs, progress=not a.quiet, ray=a.ray, report=not a.no_report)
    if not a.no_report:
        from sim.report import write_report

        write_report(out / "report.html", rows, config, sections=sections, recommended=(best, predicted),
                     title=f"{model.name} on {hw.name}, {int(budget.max())} of {model.num_experts} experts per layer")
    setting = (f"{model.name} on {hw.name}: {int(budget.max())} of {model.num_experts} experts per layer resident "
               f"({config['budget']['gib']:.1f} GiB of routed experts; all experts {'fit' if all_fit else 'do not fit'} "
               "the GPU)")
    table = summary_table(rows) if a.trace or a.seeds == 1 else spread.spread_table(rows)
    spread_text = (f" (median of {predicted['trace_draws']} trace draws, range {predicted['tokens_per_s_min']:.1f}-"
                   f"{predicted['tokens_per_s_max']:.1f}; fastest in {100 * predicted['wins_share']:.0f}% of them)"
                   if predicted["trace_draws"] > 1 else "")
    verdict = f"recommended: {best.label} in {best.mode} mode, {predicted['tokens_per_s']:.1f} tokens/s predicted" + spread_text
    print(setting)
    print(table)
    print("\n" + verdict)
    if a.publish:
        provenance.write_page(a.publish, f"Explore: {model.name} on {hw.name}", f"```text\n{table}\n```\n\n{verdict}", began,
                              f"{setting}. {len(rows)} simulated runs; the run directory was `{out}`.")
    written = [*(["report.html"] if not a.no_report else []), "results.json", "config.json",
               "recommended-policy.json", *(["timeline.json"] if a.timeline else [])]
    print(f"{len(rows)} runs in {time.perf_counter() - t0:.1f} s; results in {out}/ ({', '.join(written)})"
          + (f"; rows also in {a.json}" if a.json else "") + (f"; page {a.publish}" if a.publish else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a, began = parse_args(argv), provenance.start("python -m sim.explore", argv)
    _check_args(a)
    return run_study(a, began) if a.study else run_setting(a, began)


if __name__ == "__main__":
    run_cli(main)
