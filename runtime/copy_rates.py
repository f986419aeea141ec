"""Host <-> device copy rates in GB/s (1e9 B/s), measured on buffers of random bytes.

:func:`copy_rates` gives the four headline rates (H2D / D2H, pinned / pageable host memory) of one large copy for
an environment record (``runtime.bench``, ``validate.gpu_smoke``); ``validate.bench_copies`` builds its tables
on the same :func:`random_buffers`. Their bytes are random and non-zero, never zeros or untouched memory: an
untouched host buffer maps the kernel's shared zero page, which a copy reads from the cache instead of DRAM, and
its first write takes page faults, so either inflates or deflates a rate. On device=cpu every copy is a memcpy.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

_RANDOM_BLOCK = 2**20  # random bytes drawn once and tiled: filling 512 MiB then costs a memcpy, not an RNG pass


def random_bytes(nbytes: int, pinned: bool = False, seed: int = 0) -> torch.Tensor:
    """A host uint8 buffer of ``nbytes`` whose every byte is random in 1..255 (never zero), every page written.

    A 1 MiB random block is tiled over the buffer: the link neither compresses nor deduplicates, so tiling
    costs no honesty and keeps a 512 MiB fill to a memcpy (drawing every byte takes ~1.3 s on one core).
    ``pinned`` needs CUDA (page-locked memory is a CUDA allocation).
    """
    if nbytes < 1:
        raise ValueError(f"random_bytes needs nbytes >= 1, got {nbytes}")
    g = torch.Generator().manual_seed(seed)
    block = torch.randint(1, 256, (min(nbytes, _RANDOM_BLOCK),), dtype=torch.uint8, generator=g)
    buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)
    whole = nbytes - nbytes % block.numel()
    buf[:whole].view(-1, block.numel()).copy_(block)  # broadcast: one block per row
    buf[whole:].copy_(block[: nbytes - whole])
    return buf


def random_buffers(nbytes: int, device: torch.device, pinned: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(host, device) buffers of ``nbytes`` holding random non-zero bytes; host pinned when asked and on CUDA."""
    host = random_bytes(nbytes, pinned=pinned and device.type == "cuda")
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dev.copy_(random_bytes(nbytes, seed=1))
    return host, dev


def _copy_seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn``: CUDA events around it on CUDA, time.perf_counter() on the host."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    torch.cuda.synchronize(device)  # an empty queue: the start event fires when the copy is issued
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one untimed warm-up call (page mapping, pinned-pool setup)."""
    fn()
    return float(np.median([_copy_seconds(fn, device) for _ in range(repeats)]))


def copy_rates(device: torch.device | str, nbytes: int = 256 * 2**20, repeats: int = 5) -> dict[str, float]:
    """Link rates in GB/s (1e9 B/s) of one ``nbytes`` copy each way, from pinned and from pageable host memory.

    Keys ``h2d_pinned_gbps``, ``h2d_pageable_gbps``, ``d2h_pinned_gbps``, ``d2h_pageable_gbps``: nbytes over
    the median of ``repeats`` timed copies after one warm-up. Pinned copies are issued non_blocking (the
    runtime's path); the timing waits for them either way. Every buffer holds random non-zero bytes. On
    device=cpu both sides are host memory and pinned is pageable: four memcpy rates.
    Needs only torch and numpy.
    """
    device = torch.device(device)
    if nbytes < 1 or repeats < 1:
        raise ValueError(f"copy_rates needs nbytes >= 1 and repeats >= 1, got {nbytes}, {repeats}")
    out: dict[str, float] = {}
    for kind, pinned in (("pinned", True), ("pageable", False)):
        host, dev = random_buffers(nbytes, device, pinned)
        nb = pinned and device.type == "cuda"  # non_blocking: only a pinned copy can be asynchronous
        # the buffers bound as defaults: each lambda copies this iteration's pair, whatever the loop does next
        h2d = _median_seconds(lambda d=dev, h=host, nb=nb: d.copy_(h, non_blocking=nb), device, repeats)
        d2h = _median_seconds(lambda d=dev, h=host, nb=nb: h.copy_(d, non_blocking=nb), device, repeats)
        out[f"h2d_{kind}_gbps"], out[f"d2h_{kind}_gbps"] = nbytes / h2d / 1e9, nbytes / d2h / 1e9
        del host, dev  # one pair at a time: 2 x nbytes of host and device memory at most
    return {k: out[k] for k in ("h2d_pinned_gbps", "h2d_pageable_gbps", "d2h_pinned_gbps", "d2h_pageable_gbps")}
