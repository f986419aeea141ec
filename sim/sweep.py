"""Run many simulations (trace x policy x parameters) on a local process pool, with a progress bar.

Each worker loads the traces once (from the files of the run directory) and keeps the cost model; a job is
just (trace name, policy name, policy parameters), so nothing large crosses process boundaries per job.
Results come back as JSON-ready rows: ``SimResult.metrics()`` plus trace, mode, label, tau and budget.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from sim.cost import CostModel
from sim.engine import simulate
from sim.policies import make_policy
from sim.results import SimResult
from traces.io import read_trace
from traces.schema import Trace


@dataclass(frozen=True)
class Job:
    trace: str                      # name of a trace in the sweep's trace table
    policy: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSetup:
    trace_paths: dict[str, str]     # trace name -> file
    cost: CostModel
    budget: np.ndarray              # [L] experts per layer
    shared_duplex: bool = False


_WORKER: dict[str, Any] = {}


def _init(setup: SweepSetup) -> None:
    _WORKER["setup"] = setup
    _WORKER["traces"] = {name: read_trace(path) for name, path in setup.trace_paths.items()}


def run_one(setup: SweepSetup, trace: Trace, job: Job, timeline: bool = False) -> SimResult:
    return simulate(trace, make_policy(job.policy, **job.params), setup.cost, setup.budget,
                    shared_duplex=setup.shared_duplex, timeline=timeline, trace_name=job.trace)


def row(result: SimResult, trace: Trace, budget: np.ndarray) -> dict[str, Any]:
    out = result.metrics()
    out.update(trace=result.trace_name, mode=trace.mode, label=result.label, tau=result.params.get("tau"),
               budget=int(budget.max()) if result.policy != "all-gpu" else trace.num_experts)
    return out


def _work(job: Job) -> dict[str, Any]:
    setup: SweepSetup = _WORKER["setup"]
    trace = _WORKER["traces"][job.trace]
    return row(run_one(setup, trace, job), trace, setup.budget)


def run_jobs(setup: SweepSetup, jobs: Iterable[Job], workers: int | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Run every job; rows come back in job order. ``workers`` defaults to all cores (1: in this process)."""
    jobs = list(jobs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    bar = tqdm(total=len(jobs), desc="simulating", unit="run", disable=not progress, leave=False)
    try:
        if workers == 1:
            _init(setup)
            rows = []
            for job in jobs:
                rows.append(_work(job))
                bar.update()
            return rows
        with ProcessPoolExecutor(max_workers=workers, initializer=_init, initargs=(setup,)) as pool:
            rows = []
            for r in pool.map(_work, jobs, chunksize=1):
                rows.append(r)
                bar.update()
            return rows
    finally:
        bar.close()
