"""Measured runs for ``validate.compare``: the runtime's metrics and the routing trace it recorded.

Accepted inputs (RUN arguments, in any mix):
  DIR                       a ``python -m runtime.bench`` output folder: runtime_results.json + runtime_traces.tar
  runtime_results.json      the same, naming the file (the tar is looked for beside it)
  METRICS.json TRACE.npz    a ``python -m runtime.generate --metrics-out M --trace-out T`` pair, in that order

Each run is the runtime's :class:`~offload.results.RunRecord` with the trace it recorded. Measured quantities
(never given to the simulator; they are only compared with its output): tokens_per_s and counters (the record's),
  step_s       = step_wall_s (each step's share of wall_s, sampler included) when recorded, else the forward
                 times step_times_s (then the per-step comparison misses the sampler and bookkeeping)
  cpu_s        = the process's CPU time over the generation (when recorded), and per step; on a shared CPU
                 (device=cpu, one torch thread) cpu_s < wall_s is time other processes took, and
                 tokens / cpu_s is the contention-free throughput (validate.stats)
  cpu_share    = the share of the CPU the run got (offload.cpu_share; :attr:`Run.cpu_share`): below
                 STARVED_BELOW the run was starved and validate.compare compares none of the timings
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
from offload.results import RunRecord, from_json
from offload.trace_io import read_trace
from offload.trace import Trace

RESULTS = "runtime_results.json"
TRACES = "runtime_traces.tar"
_MAX_MEMBER = 1 << 30


@dataclass(frozen=True, eq=False)
class Run:
    """A measured run: its record, the trace it recorded, and the step times compared."""

    source: str                    # file the record came from
    record: RunRecord
    trace: Trace
    step_s: np.ndarray
    step_kind: str                 # "step_wall_s" or "step_times_s (forward only)"
    forward_s: np.ndarray          # forward times (model call + sync), for the time breakdown
    step_cpu_s: np.ndarray | None  # per step, aligned with step_s when step_s is step_wall_s
    environment: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None

    @property
    def name(self) -> str:
        return f"{self.record.label} [{self.record.mode}]"

    @property
    def cpu_share(self) -> float | None:
        """The CPU share the run got (offload.cpu_share): as recorded; for a device=cpu record written before it
        was, cpu_s / (wall_s x threads); otherwise unknown (None, not taken as starved)."""
        rec = self.record
        if rec.cpu_share is not None:
            return rec.cpu_share
        if rec.device == "cpu" and rec.cpu_s is not None and rec.wall_s > 0:
            return min(1.0, rec.cpu_s / (rec.wall_s * max(1, self.threads or 1)))
        return None


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TideError(f"{path}: not valid JSON ({exc})") from None


def _run(d: Any, trace: Trace, source: str, env: dict, threads: int | None = None) -> Run:
    """The run of record ``d`` and its trace; ``env``: the machine, where the record names none."""
    try:
        rec = from_json(RunRecord, d)
    except TideError as exc:
        raise TideError(f"{source}: {exc}") from None
    if rec.generated_tokens != trace.generated_tokens:
        raise TideError(f"{source}: {rec.generated_tokens} generated tokens, but its trace commits {trace.generated_tokens}")
    walls, fwd, cpu = (np.asarray(v, np.float64) for v in (rec.step_wall_s, rec.step_times_s, rec.step_cpu_s))
    env = rec.environment or env
    threads = threads or env.get("threads")
    use_wall = walls.size == trace.num_steps
    if not use_wall and fwd.size != trace.num_steps:
        raise TideError(f"{source}: {fwd.size} step times for a trace of {trace.num_steps} steps")
    return Run(source=source, record=rec, trace=trace, step_s=walls if use_wall else fwd,
               step_kind="step_wall_s" if use_wall else "step_times_s (forward only)",
               forward_s=fwd if fwd.size == trace.num_steps else np.zeros(trace.num_steps),
               step_cpu_s=cpu if use_wall and cpu.size == trace.num_steps else None,
               environment=env, threads=None if threads is None else int(threads))


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
    runs = []
    for row in d["runs"]:
        if not isinstance(row, dict):
            raise TideError(f"{res}: a run is not an object")
        key = f"{row.get('mode')}__{row.get('label')}.npz"
        if key not in traces:
            raise TideError(f"{res}: run {row.get('label')} [{row.get('mode')}] has no trace {key} in {TRACES}")
        runs.append(_run(row, traces[key], str(res), d.get("environment") or {}, (d.get("settings") or {}).get("threads")))
    return runs


def load_pair(metrics: Path, trace_path: Path) -> Run:
    """One ``runtime.generate`` run: its --metrics-out JSON and --trace-out trace."""
    return _run(_json(metrics), read_trace(trace_path), str(metrics), {})


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
