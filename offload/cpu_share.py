"""How much of the CPU a measurement got: the one measure ``runtime.generate``, ``runtime.bench`` and
``validate.calibrate`` record, and ``validate.compare`` reads, with its threshold.

    cpu_share = run / (run + waited)     summed over the process's threads, from the scheduler's own counts
                                         (/proc/self/task/*/schedstat: time on a CPU, time runnable on a run
                                         queue waiting for one); 1.0: nothing else took the CPU from it
              = cpu_s / (wall_s x threads)   where the kernel gives no such counts (process CPU time over the
                                         wall time of ``threads`` busy threads)

Every thread of the process counts: torch's intra-op threads (the CPU's experts), the expert store's worker
threads, the Python thread that issues the work. A thread that sleeps or waits on a lock, an event or the GPU is
not runnable then and counts as neither, so an idle torch thread of a GPU run does not read as starvation (as it
would in cpu_s / (wall_s x threads)); a thread that wanted a CPU and did not get one counts as waiting.

Below STARVED_BELOW the machine was busy with something else: the run's times hold other processes' work and
are not comparable with a simulation or another run (issue 17: an all-gpu bench run at 0.99 tokens/s against
74-102 on reruns). The CLIs print :func:`busy_warning` on stderr; ``validate.compare`` declares such a run's
timings not comparable.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Mapping

STARVED_BELOW = 0.8  # the one threshold: a share below it is a starved measurement
_TASKS = "/proc/self/task"


@dataclass(frozen=True)
class Sample:
    """One moment of the process: wall clock, process CPU time, and per thread id the scheduler's (run s,
    run-queue wait s) since the thread started (None where the kernel does not expose them)."""

    wall_s: float
    cpu_s: float
    sched: Mapping[int, tuple[float, float]] | None = field(default=None)


def _schedstat() -> dict[int, tuple[float, float]] | None:
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    out = {}
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/schedstat") as f:
                run_ns, wait_ns, *_ = f.read().split()
            out[int(tid)] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
        except (OSError, ValueError):  # a thread that ended meanwhile, or a kernel without schedstat
            continue
    return out or None


def sample() -> Sample:
    """The process now (see :class:`Sample`)."""
    return Sample(wall_s=time.perf_counter(), cpu_s=time.process_time(), sched=_schedstat())


def share_between(start: Sample, end: Sample, threads: int = 1) -> float | None:
    """The CPU share from ``start`` to ``end`` (module docstring), in [0, 1]; None for an empty interval.

    ``threads``: the threads the work keeps busy, for the fallback without scheduler counts (torch's thread
    count on device=cpu, 1 for the issuing thread of a GPU run). Threads that started in the interval count
    from their start; a thread id found with smaller counts than before is a new thread that reused the id."""
    wall = end.wall_s - start.wall_s
    if wall <= 0:
        return None
    if start.sched is not None and end.sched is not None:
        ran = waited = 0.0
        for tid, (run, wait) in end.sched.items():
            run0, wait0 = start.sched.get(tid, (0.0, 0.0))
            if run < run0 or wait < wait0:
                run0 = wait0 = 0.0
            ran += run - run0
            waited += wait - wait0
        if ran + waited > 0:
            return min(1.0, max(0.0, ran / (ran + waited)))
    cpu = end.cpu_s - start.cpu_s
    return min(1.0, max(0.0, cpu / (wall * max(1, int(threads)))))


class CpuMeter:
    """``m = CpuMeter(threads)`` at the start of a measurement, ``m.stop()`` at its end: the CPU share between."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.start = sample()

    def stop(self) -> float | None:
        return share_between(self.start, sample(), self.threads)


def starved(share: float | None) -> bool:
    """Whether a measurement with this CPU share is starved (None: unknown, not starved)."""
    return share is not None and share < STARVED_BELOW


def busy_warning(share: float | None, what: str = "") -> str | None:
    """The one-line warning for a starved measurement (``what`` names it), or None when it is not starved."""
    if not starved(share):
        return None
    return (
        f"warning: {what + ': ' if what else ''}the machine was busy: these timings are not comparable "
        f"(CPU share {share:.2f} < {STARVED_BELOW}: other processes took the CPU; rerun on an idle machine)"
    )
