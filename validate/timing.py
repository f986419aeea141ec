"""Timing primitives for the micro-benchmarks: the median of repeats after warm-up.

A measurement is the median of ``repeats`` samples taken after ``warmup`` calls.

Cold caches (``flush_bytes`` > 0, the default for calibration): before every sample a scratch buffer of that
many bytes is written (not timed), then the function is called once. In the runtime every piece of work runs
after other work (other layers' weights, a whole expert loop) has evicted its data from the caches; timed in a
tight loop instead, the same piece finds its weights and code in L1/L2 and runs up to 2x faster on a CPU
(measured on the tiny model: attention 0.18 ms hot, 0.27-0.34 ms after a flush, 0.27-0.39 ms in the forward).
On CUDA the flush (256 MiB, as triton's do_bench) clears the GPU's L2 and is synchronised before timing.

Hot loop (``flush_bytes`` = 0): one sample runs the function ``inner`` times back to back and divides the
elapsed time by ``inner``, ``inner`` chosen from the warm-up so that a sample lasts at least ``min_sample_s``
(capped at ``max_inner``).

Clocks (seconds):
  cpu   time.perf_counter() around the sample.
  cuda  torch.cuda.synchronize() first (the queue is empty, so the start event fires at once), a CUDA event
        before and after the sample's calls, then the end event is synchronised: elapsed = event time. With an
        empty queue at the start, launch gaps count, i.e. the sample measures max(host launch, GPU execution),
        which is what the runtime sees between two host syncs. Functions that synchronise inside (a copy
        waited on, ``.cpu()``) are measured the same way.

Why the median: the machine is shared and noisy; a median of 5-11 samples ignores the outliers a mean would
carry, and every measurement is taken the same way, so tables stay comparable to each other.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass(frozen=True)
class TimingSettings:
    warmup: int = 2
    repeats: int = 5
    min_sample_s: float = 2e-4
    max_inner: int = 64
    flush_bytes: int = 0


class Clock:
    """Measures callables on one device (``cpu`` or ``cuda``) with :class:`TimingSettings`."""

    def __init__(self, device: torch.device, settings: TimingSettings) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.settings = settings
        self.samples = 0  # samples taken, for the calibration record
        self._scratch = None
        if settings.flush_bytes > 0:
            self._scratch = torch.zeros(settings.flush_bytes // 4, dtype=torch.float32, device=self.device)

    def flush(self) -> None:
        """Evict the caches: write the scratch buffer (and wait for it on CUDA)."""
        if self._scratch is not None:
            self._scratch.add_(1.0)
            self.sync()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _sample(self, fn: Callable[[], object], inner: int) -> float:
        if self._scratch is not None:
            self.flush()
            inner = 1
        if self.cuda:
            torch.cuda.synchronize(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t0) / inner

    def measure(self, fn: Callable[[], object], repeats: int | None = None, inner: int | None = None) -> float:
        """Median seconds per call of ``fn`` (see the module docstring)."""
        s = self.settings
        first = self._sample(fn, 1)
        for _ in range(max(0, s.warmup - 1)):
            first = min(first, self._sample(fn, 1))
        if inner is None:
            inner = int(min(s.max_inner, max(1, math.ceil(s.min_sample_s / max(first, 1e-9)))))
        n = repeats or s.repeats
        samples = [self._sample(fn, inner) for _ in range(n)]
        self.samples += n
        return float(np.median(samples))


def rel_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Relative errors (predicted - measured) / measured, elementwise; measured must be > 0."""
    predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    return (predicted - measured) / np.maximum(measured, 1e-12)
