"""How fast the simulator runs what users run: full-length replays, the default study and the paper study.

    python benchmarks/sim_speed.py [--models M ...] [--policies P ...] [--executors X ...] [--repeats N]
        [--quick] [--paper] [--jobs 2] [--no-pin] [--publish docs/results/sim-speed.md]

1. Replays, pinned to one core. One synthetic trace per model (``traces.synthetic``: ``default_config`` with
   gen_length 1024, block 32, prefix-recompute and no EOS stop, so every block is generated, as a full replay
   is), replayed with ``sim.engine.simulate`` under every policy with its defaults (tide as tide(tau=4)) and both
   executor presets on the H100/PCIe 5 preset, at 96 experts per layer for LLaDA2.0-flash (the paper's) and 128
   for mini (half the experts for other models). Per (model, executor, policy): the median wall s of
   ``--repeats`` replays, the events the engine processed, events/s and the simulated tokens/s. Targets
   (issue 19), full-length flash replays: every policy <= 1.0 s, all-gpu and tide <= 0.3 s.
2. The default study, ``python -m sim.explore --no-report --quiet --jobs J``, as a user runs it (a subprocess,
   on every core the machine gives it, not pinned): target <= 8 s from start to exit.
3. With ``--paper`` (minutes): the paper study (``sim/studies/paper.json``) at full length. Its runner draws
   traces with EOS stop, which a study cannot switch off, so this runs its grid here: the same draws with
   ``eos_stop=False``, the same points, policies and taus, ``sim.sweep.run_tasks`` on J workers, its headline
   table computed. Target <= 3 min.

``--quick``: gen_length 128 and no studies, a smoke run of the script (targets then do not apply).
``--publish PAGE.md`` writes the tables as a results page with their provenance (offload/provenance.py).
"""

from __future__ import annotations

import os

_USER_ENV = dict(os.environ)  # the studies run as a user runs them: without the one-thread settings below
# one core means one core: no BLAS/OpenMP helper threads (set before numpy loads with the sim modules)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without installing

from benchmarks._checks import at_least, output_file  # noqa: E402
from offload import provenance  # noqa: E402
from offload.budget import resolve_budget  # noqa: E402
from offload.cli import Parser  # noqa: E402
from offload.cost import RooflineCostModel  # noqa: E402
from offload.errors import TideError, run_cli  # noqa: E402
from offload.executor import ExecutorProfile  # noqa: E402
from offload.hardware import HardwareProfile  # noqa: E402
from offload.model_spec import ModelSpec  # noqa: E402
from offload.policies import POLICIES, parse_policy, policy_from_text  # noqa: E402
from offload.trace import DIFFUSION_MODES  # noqa: E402

PROG = "python benchmarks/sim_speed.py"
FULL_LENGTH = 1024
QUICK_LENGTH = 128
MODELS = ("llada2.0-mini", "llada2.0-flash")
EXECUTORS = ("tide-moe", "tide-reference")
BUDGETS = {"llada2.0-flash": 96, "llada2.0-mini": 128}  # flash's is the paper's; mini's TIDE's and explore's
# issue 19's targets, wall s of one full-length replay: per model, a policy's own target else the model's
REPLAY_TARGETS: dict[str, dict[str, float]] = {"llada2.0-flash": {"*": 1.0, "all-gpu": 0.3, "tide": 0.3}}
DEFAULT_STUDY_TARGET_S = 8.0
PAPER_STUDY_TARGET_S = 180.0


@dataclass(frozen=True)
class Replay:
    """One (model, executor, policy) line of the replay table."""

    model: str
    executor: str
    policy: str
    walls: tuple[float, ...]
    events: int
    tokens_per_s: float
    target_s: float | None

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def verdict(self) -> str:
        return "–" if self.target_s is None else "ok" if self.wall <= self.target_s else "OVER"


def default_policies() -> list[str]:
    """Every registered policy with its defaults; tide, whose tau explore sweeps, at one value: tau 4."""
    return ["tide(tau=4)" if name == "tide" else name for name in POLICIES]


def replay_target(model: str, policy: str) -> float | None:
    """The target for a full-length replay of ``policy`` (a spec) on ``model`` (a preset name), if any."""
    targets = REPLAY_TARGETS.get(model, {})
    return targets.get(parse_policy(policy)[0], targets.get("*"))


def _parser() -> Parser:
    ap = Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", "--model", nargs="+", default=list(MODELS), help="model presets or config.json")
    ap.add_argument("--policies", nargs="+", default=None, help="policy specs (default: every policy, tide(tau=4))")
    ap.add_argument("--executors", nargs="+", default=list(EXECUTORS), help="executor presets or files")
    ap.add_argument("--hardware", default="h100-pcie5")
    ap.add_argument("--mode", default="prefix-recompute", choices=DIFFUSION_MODES)
    ap.add_argument("--gen-length", type=int, default=None, help=f"default {FULL_LENGTH} ({QUICK_LENGTH} with --quick)")
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument(
        "--gpu-experts-per-layer", type=int, default=None, help="budget for every model (default: 96 flash, 128 mini)"
    )
    ap.add_argument("--repeats", "--repeat", type=int, default=1, help="replays per line; the median is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes of the studies (default 2)")
    ap.add_argument("--quick", action="store_true", help=f"replays only, gen_length {QUICK_LENGTH} unless given")
    ap.add_argument("--paper", action="store_true", help="also time the paper study at full length (minutes)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the replays to one CPU core")
    ap.add_argument("--publish", default=None, metavar="PAGE.md", help="write the tables as a results page")
    return ap


def _budget(model: ModelSpec, name: str, given: int | None) -> int:
    """The budget for ``model``: ``given``, else its entry in BUDGETS, else half its experts; 1..E checked now."""
    budget = given if given is not None else BUDGETS.get(name, max(1, model.num_experts // 2))
    try:
        resolve_budget(model, None, experts_per_layer=budget)
    except TideError as exc:
        raise TideError(f"--gpu-experts-per-layer: {exc}") from None
    return budget


def _check(a: Any) -> None:
    """Every value checked before pinning or generating anything, so that a bad one costs nothing."""
    for option, value in (
        ("--gen-length", a.gen_length),
        ("--block-length", a.block_length),
        ("--repeats", a.repeats),
        ("--jobs", a.jobs),
    ):
        at_least(option, value)
    at_least("--seed", a.seed, 0)
    output_file("--publish", a.publish)
    if a.quick and a.paper:
        raise TideError("--quick times the replays only; --paper times the paper study: give one of them")
    for text in a.policies:
        policy_from_text(text)  # an unknown name or a bad value ends here, in one line
    for x in a.executors:
        ExecutorProfile.load(x)


def _traces(a: Any) -> dict[str, tuple[ModelSpec, int, Any]]:
    """Per model name: its spec, budget and synthetic config (all checked); the traces are drawn later."""
    from traces.synthetic import default_config  # a sibling package, imported once the options are known good

    out = {}
    for name in dict.fromkeys(a.models):
        model = ModelSpec.load(name)
        budget = _budget(model, name, a.gpu_experts_per_layer)
        cfg = default_config(
            model, a.mode, gen_length=a.gen_length, block_length=a.block_length, seed=a.seed, eos_stop=False
        )
        out[name] = (model, budget, cfg)
    return out


def _pin(no_pin: bool) -> tuple[set[int] | None, str]:
    """Pin this process to one core (the replays' measure); the previous affinity to restore, and a label."""
    if no_pin or not hasattr(os, "sched_setaffinity"):
        return None, "no"
    before = os.sched_getaffinity(0)
    core = min(before)
    os.sched_setaffinity(0, {core})
    return before, f"core {core}"


def time_replays(
    a: Any, setups: dict[str, tuple[ModelSpec, int, Any]], hw: HardwareProfile
) -> tuple[list[Replay], list[str]]:
    """Every (model, executor, policy) replay, ``a.repeats`` times each; and a line per model's trace (printed)."""
    from sim.engine import simulate
    from traces.synthetic import generate

    full = a.gen_length == FULL_LENGTH
    lines, shapes = [], []
    for name, (model, budget, cfg) in setups.items():
        t0 = time.perf_counter()
        trace = generate(model, cfg)
        shapes.append(
            f"{name}: {trace.num_steps} steps x {trace.num_moe_layers} MoE layers x {trace.num_experts} experts, "
            f"top-{trace.top_k}, {trace.generated_tokens} tokens (generated in {time.perf_counter() - t0:.2f} s); "
            f"budget {budget}"
        )
        print(shapes[-1], flush=True)
        cost = RooflineCostModel(model, hw)
        for x in map(ExecutorProfile.load, a.executors):
            for spec in a.policies:
                walls, result = [], None
                for _ in range(a.repeats):
                    policy = policy_from_text(spec)  # a fresh one per replay: a policy keeps state
                    t1 = time.perf_counter()
                    result = simulate(trace, policy, cost, budget, trace_name=trace.mode, executor=x)
                    walls.append(time.perf_counter() - t1)
                target = replay_target(name, spec) if full else None
                lines.append(
                    Replay(name, x.name, result.label, tuple(walls), result.events, result.tokens_per_s, target)
                )
    return lines, shapes


def replay_verdict(lines: Sequence[Replay]) -> str:
    """One sentence: how many replays with a target are over it, and which."""
    aimed = [r for r in lines if r.target_s is not None]
    if not aimed:
        return f"No replay here has a target: they are for full-length ({FULL_LENGTH}-token) flash replays."
    over = [r for r in aimed if r.verdict == "OVER"]
    which = ": " + ", ".join(f"{r.model} {r.executor} {r.policy} {r.wall:.2f} s" for r in over) if over else ""
    return f"{len(over)} of {len(aimed)} replays with a target are over it{which}."


def replay_table(lines: Sequence[Replay]) -> str:
    head = "| model | executor | policy | wall s | events | events/s | sim tokens/s | target s | vs target |"
    rows = [
        f"| {r.model} | {r.executor} | {r.policy} | {r.wall:.3f} | {r.events:,d} | {r.events / r.wall:,.0f} | "
        f"{r.tokens_per_s:.1f} | {'–' if r.target_s is None else f'{r.target_s:g}'} | {r.verdict} |"
        for r in lines
    ]
    return "\n".join([head, "|---|---|---|---|---|---|---|---|---|", *rows])


def time_default_study(jobs: int) -> tuple[float, int, float]:
    """``python -m sim.explore --no-report --quiet --jobs J`` in a subprocess: (wall s from start to exit, runs,
    the sweep's own s as it prints them)."""
    with tempfile.TemporaryDirectory(prefix="tide-sim-speed-") as tmp:
        cmd = [sys.executable, "-m", "sim.explore", "--no-report", "--quiet", "--jobs", str(jobs), "--out", tmp]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=_USER_ENV, capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise TideError(f"the default study failed (exit {proc.returncode}): {tail}")
    found = re.findall(r"(\d+) runs in ([0-9.]+) s", proc.stdout)
    if not found:
        raise TideError("the default study did not print its 'N runs in X s' line")
    return wall, int(found[-1][0]), float(found[-1][1])


def time_paper_study(study: Any, jobs: int) -> tuple[float, int]:
    """``study``'s grid over draws of its one gen_length without EOS stop (module docstring, 3): (wall s, runs)."""
    from sim.study import grid_points, headline, make_traces, study_tasks
    from sim.sweep import run_tasks

    t0 = time.perf_counter()
    runs = 0
    with tempfile.TemporaryDirectory(prefix="tide-sim-speed-") as tmp:
        traces = make_traces(replace(study, eos_stop=False), Path(tmp))
        points = grid_points(study, traces)
        for x in map(ExecutorProfile.load, study.executors):
            rows = run_tasks(study_tasks(study, points, traces, x.to_dict()), workers=jobs, progress=False)
            headline(rows)  # the study's table, as its runner computes it
            runs += len(rows)
    return time.perf_counter() - t0, runs


def study_table(lines: Sequence[tuple[str, float, int, str, float]]) -> str:
    """(what, wall s, runs, note, target s) per study."""
    head = "| study | wall s | runs | runs/s | target s | vs target | note |"
    rows = [
        f"| {what} | {wall:.1f} | {runs} | {runs / wall:.1f} | {target:g} | {'ok' if wall <= target else 'OVER'} | "
        f"{note} |"
        for what, wall, runs, note, target in lines
    ]
    return "\n".join([head, "|---|---|---|---|---|---|---|", *rows])


def time_studies(a: Any) -> list[tuple[str, float, int, str, float]]:
    lines = []
    print(f"\ntiming the default study on {a.jobs} workers ...", flush=True)
    wall, runs, sweep = time_default_study(a.jobs)
    cmd = f"`python -m sim.explore --no-report --quiet --jobs {a.jobs}`"
    lines.append((cmd, wall, runs, f"the sweep itself {sweep:.1f} s (as it prints it)", DEFAULT_STUDY_TARGET_S))
    if a.paper:
        print(f"timing the paper study at full length on {a.jobs} workers (minutes) ...", flush=True)
        from sim.study_spec import load_study

        wall, runs = time_paper_study(replace(load_study("paper"), gen_length=(FULL_LENGTH,)), a.jobs)
        note = f"its grid over {FULL_LENGTH}-token draws without EOS stop (module docstring)"
        lines.append(("`--study paper`, full length", wall, runs, note, PAPER_STUDY_TARGET_S))
    return lines


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    began = provenance.start(PROG, argv)
    if a.gen_length is None:
        a.gen_length = QUICK_LENGTH if a.quick else FULL_LENGTH
    a.policies = a.policies or default_policies()
    _check(a)
    hw = HardwareProfile.load(a.hardware)
    setups = _traces(a)
    before, pinned = _pin(a.no_pin)
    print(f"python {platform.python_version()} on {platform.machine()}, replays pinned to one core: {pinned}")
    print(
        f"{a.mode}, gen_length {a.gen_length}, block {a.block_length}, no EOS stop; hardware {hw.name}; "
        f"median of {a.repeats} replay(s) per line\n"
    )
    try:
        replays, shapes = time_replays(a, setups, hw)
    finally:
        if before is not None:  # the studies run on every core, as a user runs them
            os.sched_setaffinity(0, before)
    traces = "\n".join(f"- {line}" for line in shapes)
    tables = ["## Replays, one core\n\n" + traces + "\n\n" + replay_table(replays)]
    if not a.quick:
        tables.append(f"## Studies, {a.jobs} workers\n\n" + study_table(time_studies(a)))
    verdict = replay_verdict(replays)
    body = "\n\n".join(tables) + f"\n\n{verdict}\n"
    print("\n" + body)
    if a.publish:
        note = (
            f"Replays: one synthetic {a.mode} trace per model, gen_length {a.gen_length}, block {a.block_length}, "
            f"no EOS stop, on {hw.name}; wall s is the median of {a.repeats} replay(s) on one core. Targets from "
            "issue 19: a full-length flash replay <= 1 s under every policy, <= 0.3 s under all-gpu and tide; "
            "the default study <= 8 s; the paper study at full length <= 3 min."
        )
        provenance.write_page(a.publish, "Simulator speed", body, began, note)
        print(f"wrote {a.publish}")
    return 0


if __name__ == "__main__":
    run_cli(main)
