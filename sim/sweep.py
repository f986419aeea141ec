"""Run many simulations (trace x model x hardware x budget x policy) on a local process pool or a Ray cluster.

A :class:`Task` is self-contained and small: the model's config.json and the hardware profile travel as
dicts, the trace as a file path (a Ray run ships each trace's bytes once through the object store). A worker
caches parsed traces and cost models, so a sweep pays for each once per process. Results come back as rows,
in task order: each run's :class:`~offload.results.SimRecord` with the task's tags (the study's grid coordinates).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor as WorkerPool  # "executor" names the executor profile only
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from offload.cost import RooflineCostModel
from sim.engine import simulate
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.results import SimRecord, SimResult
from offload.trace_io import read_trace
from offload.trace import Trace


@dataclass(frozen=True)
class Task:
    trace_path: str
    trace_name: str
    model: dict[str, Any]           # {"name": ..., "config": config.json contents}
    hardware: dict[str, Any]        # HardwareProfile.to_dict()
    budget: int                     # experts per MoE layer
    policy: str
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, Any] = field(default_factory=dict)
    executor: dict[str, Any] | None = None  # ExecutorProfile.to_dict(); None: the default (tide-moe)


def model_payload(model: ModelSpec) -> dict[str, Any]:
    return {"name": model.name, "config": dict(model.raw_config)}


@lru_cache(maxsize=16)
def _trace(path: str) -> Trace:
    return read_trace(path)


@lru_cache(maxsize=32)
def _cost(model_json: str, hw_json: str) -> RooflineCostModel:
    m = json.loads(model_json)
    return RooflineCostModel(ModelSpec.from_config(m["config"], name=m["name"]),
                             HardwareProfile.from_dict(json.loads(hw_json)))


def cost_of(task: Task) -> RooflineCostModel:
    return _cost(json.dumps(task.model, sort_keys=True), json.dumps(task.hardware, sort_keys=True))


@lru_cache(maxsize=8)
def _executor(executor_json: str) -> ExecutorProfile:
    return ExecutorProfile.from_dict(json.loads(executor_json))


def run_task(task: Task, timeline: bool = False) -> SimResult:
    executor = None if task.executor is None else _executor(json.dumps(task.executor, sort_keys=True))
    return simulate(_trace(task.trace_path), make_policy(task.policy, **task.params), cost_of(task), task.budget,
                    timeline=timeline, trace_name=task.trace_name, executor=executor)


_BOUNDS: dict[tuple[str, ...], float] = {}  # per process: one bound per (trace, budget, machine, executor)


def bound_of(task: Task) -> float:
    """``sim.bound.lower_bound`` of the task's trace, budget and machine, in seconds (cached: every policy run on
    the same trace and budget shares it). Host DRAM is a resource of the bound where the executor shares it."""
    from sim.bound import lower_bound

    policy = make_policy(task.policy, **task.params)
    budget = task.budget if policy.needs_budget else None  # all-gpu keeps every expert resident
    x = _executor(json.dumps(task.executor, sort_keys=True)) if task.executor is not None else ExecutorProfile.load()
    hw_json = json.dumps(task.hardware, sort_keys=True)
    key = (task.trace_path, str(budget), json.dumps(task.model, sort_keys=True), hw_json, repr(x))
    if key not in _BOUNDS:
        cost = cost_of(task)
        dram = cost.dram_bytes_per_s if x.shared_dram else None  # None too when the profile has no figure
        _BOUNDS[key] = lower_bound(_trace(task.trace_path), cost, budget, dram_bytes_per_s=dram, executor=x).seconds
    return _BOUNDS[key]


def task_row(task: Task) -> SimRecord:
    return replace(run_task(task).record(task.tags), bound_s=bound_of(task))


def run_tasks(tasks: Sequence[Task], workers: int | None = None, progress: bool = True,
              ray_address: str | None = None) -> list[SimRecord]:
    """Every task's row, in task order. ``workers`` defaults to all cores (1: in this process);
    ``ray_address`` (e.g. "auto" or "ray://host:10001") runs them on that Ray cluster instead."""
    tasks = list(tasks)
    bar = tqdm(total=len(tasks), desc="simulating", unit="run", disable=not progress, leave=False)
    try:
        if ray_address:
            return _run_ray(tasks, ray_address, bar)
        workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
        if workers == 1:
            rows = []
            for t in tasks:
                rows.append(task_row(t))
                bar.update()
            return rows
        with WorkerPool(max_workers=workers) as pool:
            rows = []
            for r in pool.map(task_row, tasks, chunksize=1):
                rows.append(r)
                bar.update()
            return rows
    finally:
        bar.close()


# ---- Ray ------------------------------------------------------------------------------------------------
def _materialise(digest: str, data: bytes) -> str:
    """Write a shipped trace once per node (content-addressed), return its local path."""
    path = Path(tempfile.gettempdir()) / "tide-moe-traces" / f"{digest}.npz"
    if not path.exists():
        from offload.atomic_io import atomic_write_bytes

        atomic_write_bytes(path, lambda f: f.write(data))
    return str(path)


def _ray_row(task: Task, digest: str, data: bytes) -> SimRecord:
    local = _materialise(digest, data)
    return task_row(Task(**{**task.__dict__, "trace_path": local}))


def _run_ray(tasks: list[Task], address: str, bar: Any) -> list[SimRecord]:
    try:
        import ray
    except ImportError:
        raise TideError("--ray needs the ray package (pip install 'tide-moe[ray]')") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=None if address == "local" else address, ignore_reinit_error=True,
                     log_to_driver=False, include_dashboard=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise TideError(f"cannot connect to the Ray cluster at {address}: {' '.join(str(exc).split())}") from None
    try:
        remote = ray.remote(_ray_row)
        shipped: dict[str, tuple[str, Any]] = {}
        for path in dict.fromkeys(t.trace_path for t in tasks):
            data = Path(path).read_bytes()
            shipped[path] = (hashlib.sha256(data).hexdigest()[:24], ray.put(data))
        refs = [remote.remote(t, *shipped[t.trace_path]) for t in tasks]
        index = {ref: i for i, ref in enumerate(refs)}
        rows: list[SimRecord | None] = [None] * len(refs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                rows[index[ref]] = ray.get(ref)
                bar.update()
        return [r for r in rows if r is not None]
    finally:
        if started_here:
            ray.shutdown()
