"""Measured runs for ``validate.compare``: the runtime's metrics and the routing trace it recorded.

Accepted inputs (RUN arguments, in any mix):
  DIR                       a ``python -m runtime.bench`` output folder: runtime_results.json + runtime_traces.tar
  runtime_results.json      the same, naming the file (the tar is looked for beside it)
  METRICS.json TRACE.npz    a ``python -m runtime.generate --metrics-out M --trace-out T`` pair, in that order

Measured quantities kept per run (never given to the simulator; they are only compared with its output):
  tokens_per_s = committed tokens / wall_s  (the simulator's definition; runtime.generate's own tokens_per_s
                 counts tokens up to the first EOS and is not used)
  step_s       = step_wall_s (each step's share of wall_s, sampler included) when recorded, else the forward
                 times step_times_s (then the per-step comparison misses the sampler and bookkeeping)
  counters     = promotions, demotions, h2d_bytes, d2h_bytes, cpu_assignments, gpu_assignments
  cpu_s        = the process's CPU time over the generation (when recorded), and per step; on a shared CPU
                 (device=cpu, one torch thread) cpu_s < wall_s is time other processes took, and
                 tokens / cpu_s is the contention-free throughput (validate.stats)
What the simulator is given from a run: its trace (routing counts and step shapes), policy name + parameters,
budget, and the dtype (for byte sizes). Nothing timed.
"""
from __future__ import annotations

import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offload.errors import TideError
from offload.trace_io import read_trace
from offload.trace import Trace

COUNTERS = ("promotions", "demotions", "h2d_bytes", "d2h_bytes", "cpu_assignments", "gpu_assignments")
RESULTS = "runtime_results.json"
TRACES = "runtime_traces.tar"
_MAX_MEMBER = 1 << 30
_DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}


@dataclass(frozen=True, eq=False)
class Run:
    source: str                    # file the metrics came from
    policy: str
    params: dict[str, Any]
    label: str                     # e.g. "tide(tau=4)"
    mode: str
    budget: int | None             # experts per MoE layer (None: all); the largest one when per-layer
    device: str
    dtype: str
    tokens_per_s: float
    wall_s: float
    generated_tokens: int
    step_s: np.ndarray
    step_kind: str                 # "step_wall_s" or "step_times_s (forward only)"
    forward_s: np.ndarray          # forward times (model call + sync), for the time breakdown
    counters: dict[str, int]
    trace: Trace
    environment: dict[str, Any] = field(default_factory=dict)
    cpu_s: float | None = None           # process CPU time of the generation (None: not recorded)
    step_cpu_s: np.ndarray | None = None  # per step, aligned with step_s when step_s is step_wall_s
    threads: int | None = None
    layer_budget: tuple[int, ...] | None = None  # per MoE layer, when the run recorded a list

    @property
    def name(self) -> str:
        return f"{self.label} [{self.mode}]"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TideError(f"{path}: not valid JSON ({exc})") from None


def _run(row: dict[str, Any], trace: Trace, source: str, device: str, dtype: str | None, env: dict,
         threads: int | None = None) -> Run:
    try:
        wall = float(row["wall_s"])
        committed = int(row.get("committed_tokens", row.get("generated_tokens")))
        counters = {k: int(row[k]) for k in COUNTERS}
        policy, params = str(row["policy"]), dict(row.get("params") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise TideError(f"{source}: run lacks or mangles a field ({exc})") from None
    if committed != trace.generated_tokens:
        raise TideError(f"{source}: {committed} committed tokens, but its trace commits {trace.generated_tokens}")
    walls = np.asarray(row.get("step_wall_s") or [], np.float64)
    fwd = np.asarray(row.get("step_times_s") or [], np.float64)
    use_wall = walls.size == trace.num_steps
    if not use_wall and fwd.size != trace.num_steps:
        raise TideError(f"{source}: {fwd.size} step times for a trace of {trace.num_steps} steps")
    cpu = row.get("cpu_s")
    step_cpu = np.asarray(row.get("step_cpu_s") or [], np.float64)
    label = str(row.get("label") or (policy + ("(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else "")))
    budget = row.get("budget")
    layer_budget = None
    if isinstance(budget, list):  # runtime.generate records the store's per-layer budget
        try:
            layer_budget = tuple(int(b) for b in budget)
        except (TypeError, ValueError):
            raise TideError(f"{source}: budget must be an integer or a list of integers") from None
        if len(layer_budget) != trace.num_moe_layers:
            raise TideError(f"{source}: budget lists {len(layer_budget)} layers, the trace has {trace.num_moe_layers}")
        budget = max(layer_budget)
    return Run(source=source, policy=policy, params=params, label=label, mode=trace.mode,
               budget=None if budget is None else int(budget), device=device,
               dtype=str(row.get("dtype") or dtype or _DEFAULT_DTYPE.get(device, "float32")),
               tokens_per_s=committed / wall if wall > 0 else 0.0, wall_s=wall, generated_tokens=committed,
               step_s=walls if use_wall else fwd, step_kind="step_wall_s" if use_wall else "step_times_s (forward only)",
               forward_s=fwd if fwd.size == trace.num_steps else np.zeros(trace.num_steps), counters=counters,
               trace=trace, environment=env, cpu_s=None if cpu is None else float(cpu),
               step_cpu_s=step_cpu if use_wall and step_cpu.size == trace.num_steps else None,
               threads=threads, layer_budget=layer_budget)


def _tar_traces(path: Path) -> dict[str, Trace]:
    if not path.is_file():
        raise TideError(f"{path}: no such file (runtime.bench writes it beside {RESULTS})")
    out = {}
    try:
        with tarfile.open(path) as tar, tempfile.TemporaryDirectory() as tmp:
            for m in tar.getmembers():
                name = Path(m.name).name  # never a path outside the temporary folder
                if not m.isfile() or not name.endswith(".npz") or m.size > _MAX_MEMBER:
                    continue
                f = tar.extractfile(m)
                if f is not None:
                    local = Path(tmp) / name
                    local.write_bytes(f.read())
                    try:
                        out[m.name] = read_trace(local)
                    except TideError as exc:
                        raise TideError(f"{path} member {m.name}: {str(exc).replace(str(local), m.name)}") from None
    except tarfile.TarError as exc:
        raise TideError(f"{path}: not a readable tar ({exc})") from None
    return out


def load_results(path: Path) -> list[Run]:
    """The runs of one runtime.bench output (path: the folder or its runtime_results.json)."""
    res = path / RESULTS if path.is_dir() else path
    if not res.is_file():
        raise TideError(f"{path}: no {RESULTS} there")
    d = _json(res)
    if not isinstance(d, dict) or not isinstance(d.get("runs"), list):
        raise TideError(f"{res}: not a runtime.bench result (no runs list)")
    traces = _tar_traces(res.parent / TRACES)
    settings = d.get("settings") or {}
    device = str(settings.get("device", "cpu"))
    runs = []
    for row in d["runs"]:
        if not isinstance(row, dict):
            raise TideError(f"{res}: a run is not an object")
        key = f"{row.get('mode')}__{row.get('label')}.npz"
        if key not in traces:
            raise TideError(f"{res}: run {row.get('label')} [{row.get('mode')}] has no trace {key} in {TRACES}")
        threads = settings.get("threads") or (d.get("environment") or {}).get("threads")
        runs.append(_run(row, traces[key], str(res), str(row.get("device", device)), settings.get("dtype"),
                         d.get("environment") or {}, None if threads is None else int(threads)))
    return runs


def load_pair(metrics: Path, trace_path: Path) -> Run:
    """One ``runtime.generate`` run: its --metrics-out JSON and --trace-out trace."""
    d = _json(metrics)
    if not isinstance(d, dict) or "policy" not in d:
        raise TideError(f"{metrics}: not a runtime.generate metrics file")
    env = d.get("environment") or {}
    device = str(env.get("device", "cpu")).split(":")[0]
    threads = env.get("threads")
    return _run(d, read_trace(trace_path), str(metrics), device, d.get("dtype"), env,
                None if threads is None else int(threads))


def load_runs(args: Sequence[str]) -> list[Run]:
    """Every run named by the RUN arguments (see the module docstring)."""
    runs: list[Run] = []
    i = 0
    while i < len(args):
        p = Path(args[i])
        if not p.exists():
            raise TideError(f"{p}: no such file or directory")
        if p.is_dir() or p.name == RESULTS:
            runs.extend(load_results(p))
            i += 1
            continue
        if p.suffix != ".json":
            raise TideError(f"{p}: expected a results folder, {RESULTS}, or a metrics .json followed by its trace")
        if i + 1 >= len(args) or Path(args[i + 1]).suffix != ".npz":
            raise TideError(f"{p}: a runtime.generate metrics file must be followed by its trace (.npz)")
        runs.append(load_pair(p, Path(args[i + 1])))
        i += 2
    if not runs:
        raise TideError("no runs given")
    return runs
