"""Host DRAM shared by the link's copies and the CPU experts (``sim.engine``'s DRAM law; units: seconds, bytes/s).

Every copy and every CPU batch is a job with a nominal duration t_i and DRAM bytes V_i. Its peak demand p_i is the
rate its memory-bound part reads at (V_i / t_i for a copy, the CPU's own DRAM rate for a CPU batch), so its
memory-bound share is f_i = V_i / (p_i t_i) <= 1. While jobs run at once the bandwidth D is split max-min fairly
(water-filling): in ascending order of peak, r_i = min(p_i, (D - sum of the rates already given) / jobs left), and
job i does nominal work at speed

  v_i = 1 / ((1 - f_i) + f_i p_i / r_i)          (1 when r_i = p_i: only the memory-bound share slows)

recomputed whenever a job starts or ends. A 50 GB/s copy under CPU experts reading at 215 of D = 215 GB/s leaves
them 165 GB/s. A job alone runs at r = min(p, D).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import simpy
from simpy.events import PENDING


def waterfill(total: float, demands: np.ndarray) -> np.ndarray:
    """Max-min fair shares of ``total`` among ``demands`` (same unit): in ascending order of demand each gets
    min(demand, what is left / users left), so no one gets more than it asks and the rest is split evenly."""
    return np.array(_waterfill(float(total), np.asarray(demands, dtype=np.float64).tolist()), dtype=np.float64)


def _waterfill(total: float, demands: list[float]) -> list[float]:
    # on Python floats: the engine reshares a handful of jobs hundreds of thousands of times, where numpy's
    # per-call overhead dominates; the same IEEE operations in the same order, so the same shares to the bit
    n = len(demands)
    rates = [0.0] * n
    left = total
    for k, i in enumerate(sorted(range(n), key=demands.__getitem__)):  # sorted is stable, like argsort "stable"
        rates[i] = min(demands[i], left / (n - k))
        left -= rates[i]
    return rates


class _Wake(simpy.Event):
    """``env.any_of`` of a timeout and a job's ``changed`` as the engine uses it (its value unread): the first of
    them to be processed schedules this event, as AnyOf schedules itself, so the event queue is the same, entry
    for entry; it saves AnyOf's condition value and callback bookkeeping, which the DRAM law pays per copy."""

    def fire(self, _event: simpy.Event) -> None:
        if self._value is PENDING:
            self.succeed()


@dataclass(eq=False)
class _Job:
    left: float          # seconds of nominal work still to do
    demand: float        # DRAM bytes/s while its memory-bound part runs at full speed (its peak)
    frac: float          # share of its nominal time that is memory-bound (1 for copies)
    speed: float         # nominal seconds per second now (<= 1)
    changed: simpy.Event  # fires when the shares are recomputed


class HostDram:
    """Host DRAM bandwidth shared by the jobs running at once (the module docstring's law)."""

    def __init__(self, env: simpy.Environment, bytes_per_s: float) -> None:
        self.env, self.bw = env, float(bytes_per_s)
        self.jobs: list[_Job] = []
        self.t = 0.0

    def _advance(self) -> None:
        dt = self.env.now - self.t
        if dt > 0:
            for j in self.jobs:
                j.left -= dt * j.speed
        self.t = self.env.now

    def _reshare(self) -> None:
        jobs = self.jobs
        rates = _waterfill(self.bw, [j.demand for j in jobs]) if jobs else []
        for j, r in zip(jobs, rates):
            # the memory-bound share slows by r / peak, the rest (compute, overheads) does not
            j.speed = 1.0 if r >= j.demand else 1.0 / ((1.0 - j.frac) + j.frac * j.demand / r)
        event = self.env.event
        for j in jobs:  # wake every job so it reschedules its end at the new speed
            old, j.changed = j.changed, event()
            old.succeed()

    def alone_end(self, start: float, dt: float, nbytes: float) -> float:
        """When a copy (all memory-bound) that :meth:`run` starts at ``start`` ends if no other job runs meanwhile:
        run's loop on the same floats, the clock advancing as SimPy's does (now + delay), so the same instant."""
        peak = nbytes / dt
        r = _waterfill(self.bw, [peak])[0]  # one job: min(peak, D)
        speed = 1.0 if r >= peak else 1.0 / (peak / r)  # _reshare's speed with frac = 1: (0 + 1 x peak / r) is exact
        left, t, tol = dt, start, 1e-9 * dt
        while True:
            now = t + max(left, 0.0) / speed
            if now - t > 0:
                left -= (now - t) * speed
            t = now
            if left <= tol or now + left / speed <= now:
                return now

    def run(self, dt: float, nbytes: float, peak: float | None = None) -> Iterator[Any]:
        """Do ``dt`` seconds of nominal work that moves ``nbytes`` through DRAM, at the speed the shares allow;
        ``peak``: the rate its memory-bound part reads at (None: nbytes / dt, the job is all memory-bound)."""
        env = self.env
        self._advance()
        avg = nbytes / dt
        peak = avg if peak is None or peak <= avg else float(peak)
        job = _Job(left=dt, demand=peak, frac=avg / peak, speed=1.0, changed=env.event())
        self.jobs.append(job)
        self._reshare()
        tol = 1e-9 * dt
        timeout = env.timeout
        while True:
            # either the end at this speed or a reshare wakes the job (an any_of without the Condition's value)
            wake = _Wake(env)
            timeout(max(job.left, 0.0) / job.speed).callbacks.append(wake.fire)
            job.changed.callbacks.append(wake.fire)
            yield wake
            self._advance()
            # done, or so nearly that the clock could not move by the rest (float rounding would loop forever)
            if job.left <= tol or env.now + job.left / job.speed <= env.now:
                break
        self.jobs.remove(job)
        self._reshare()
