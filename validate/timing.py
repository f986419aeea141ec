"""Timing primitives for the micro-benchmarks: the median of repeats after warm-up.

A measurement is the median of ``repeats`` samples taken after ``warmup`` calls.

Cold caches (``flush_bytes`` > 0, the default for calibration): before every sample a scratch buffer of that
many bytes is written (not timed), then the function is called once. In the runtime every piece of work runs
after other work (other layers' weights, a whole expert loop) has evicted its data from the caches; timed in a
tight loop instead, the same piece finds its weights and code in L1/L2 and runs up to 2x faster on a CPU
(measured on the tiny model: attention 0.18 ms hot, 0.27-0.34 ms after a flush, 0.27-0.39 ms in the forward).
On CUDA the flush (256 MiB, as triton's do_bench) clears the GPU's L2 and is synchronised before timing.

The host's caches are flushed too (``host_flush_bytes``), because on CUDA the CPU experts run on the host: in
the runtime a host expert's weights (LLaDA2.0-mini in bf16: 6 MiB each, 1.6 GB per layer) have been evicted
from the last-level cache by the other experts and layers before they are read again, so they must be timed
from DRAM, not from a cache that a tight loop keeps warm. The host scratch is sized from the last-level cache
(:func:`host_flush_size`) and written by torch on all its intra-op threads, so the private caches of every
core the runtime computes on are hit as well as the shared one. On CUDA the host scratch is written while the
GPU writes its own, so the two flushes overlap. On device=cpu the device is the host: one host scratch of
max(flush_bytes, host_flush_bytes) bytes, never two flushes.

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
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

SYS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
HOST_FLUSH_MIN = 32 * 2**20  # floor, for a small (< 8 MiB) or misreported last-level cache
HOST_FLUSH_MAX = 512 * 2**20  # cap: one flush stays tens of ms at DRAM rates, and small next to the model
HOST_FLUSH_FALLBACK = 256 * 2**20  # when sysfs says nothing: 4x a 64 MiB L3, common on servers
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)B?\s*$", re.IGNORECASE)


def _parse_size(text: str) -> int | None:
    """Bytes from a sysfs cache size such as ``32768K``, ``1M`` or ``512`` (bytes); None if unreadable."""
    m = _SIZE.match(text)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2).upper()]


def last_level_cache_bytes(cache_dir: Path = SYS_CACHE) -> int | None:
    """Bytes of the highest-level cache listed under ``cache_dir`` (sysfs ``index*/{level,size}``), or None.

    On a CPU with several caches at the last level (none today), the largest counts.
    """
    found: list[tuple[int, int]] = []
    for index in sorted(Path(cache_dir).glob("index*")):
        try:
            level = int((index / "level").read_text().strip())
            size = _parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if size:
            found.append((level, size))
    return max(found)[1] if found else None


def host_flush_size(llc_bytes: int | None) -> int:
    """Bytes of host scratch that evict a last-level cache of ``llc_bytes``: 4x it, in [32 MiB, 512 MiB].

    4x because caches are not strictly LRU (adaptive replacement keeps part of older lines); None (sysfs
    unreadable, e.g. in some containers) gives HOST_FLUSH_FALLBACK (256 MiB).
    """
    if not llc_bytes or llc_bytes <= 0:
        return HOST_FLUSH_FALLBACK
    return int(min(max(4 * llc_bytes, HOST_FLUSH_MIN), HOST_FLUSH_MAX))


@dataclass(frozen=True)
class TimingSettings:
    """How samples are taken (see the module docstring); bytes are scratch sizes, 0 = no flush."""

    warmup: int = 2
    repeats: int = 5
    min_sample_s: float = 2e-4
    max_inner: int = 64
    flush_bytes: int = 0  # device scratch; > 0 turns the cold-cache mode on
    host_flush_bytes: int = 0  # host scratch, written too when flush_bytes > 0


def _scratch(nbytes: int, device: torch.device) -> torch.Tensor | None:
    """A float32 buffer of ``nbytes`` (rounded down to 4 bytes) on ``device``, or None for < 4 bytes."""
    return torch.zeros(nbytes // 4, dtype=torch.float32, device=device) if nbytes >= 4 else None


class Clock:
    """Measures callables on one device (``cpu`` or ``cuda``) with :class:`TimingSettings`."""

    def __init__(self, device: torch.device, settings: TimingSettings) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.settings = settings
        self.samples = 0  # samples taken, for the calibration record
        self._scratch: torch.Tensor | None = None  # on the device (CUDA only)
        self._host_scratch: torch.Tensor | None = None
        if settings.flush_bytes > 0:
            if self.cuda:
                self._scratch = _scratch(settings.flush_bytes, self.device)
                self._host_scratch = _scratch(settings.host_flush_bytes, torch.device("cpu"))
            else:  # the device is the host: one flush, the larger of the two sizes
                self._host_scratch = _scratch(max(settings.flush_bytes, settings.host_flush_bytes), self.device)

    @property
    def flushing(self) -> bool:
        """True when every sample starts from cold caches."""
        return self._scratch is not None or self._host_scratch is not None

    @property
    def host_flush_bytes(self) -> int:
        """Bytes of host memory written by each flush (0: host caches are not flushed)."""
        return 0 if self._host_scratch is None else self._host_scratch.numel() * 4

    @property
    def device_flush_bytes(self) -> int:
        """Bytes of CUDA memory written by each flush (0 on device=cpu, where the host flush is the only one)."""
        return 0 if self._scratch is None else self._scratch.numel() * 4

    def flush(self) -> None:
        """Evict the caches: write the device scratch (queued), then the host scratch, and wait for both."""
        if self._scratch is not None:
            self._scratch.add_(1.0)  # asynchronous: the GPU writes while the host writes its own below
        if self._host_scratch is not None:
            self._host_scratch.add_(1.0)  # read-modify-write on torch's intra-op threads: every line, every core
        self.sync()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def _sample(self, fn: Callable[[], object], inner: int) -> float:
        if self.flushing:
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
