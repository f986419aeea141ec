"""Copy tables: seconds against bytes for what the runtime copies, the way it copies it.

  copy_h2d   below one expert's bytes (up to one token short of it): single copies host -> device (pinned
             source, non_blocking), as the store returns the CPU experts' results; from one expert up to a layer's worth (k = 1 .. E experts):
             the store's own promotion path (ExpertStore._copy_in: three copies per expert, on its copy stream,
             the compute stream waiting for the arrival event)
  copy_d2h   single copies device -> host (pinned destination), as the store sends rows to the CPU experts;
             activation sizes (1 .. 65536 tokens) and expert multiples up to a layer's worth
  copy_h2d_pageable, copy_d2h_pageable (CUDA, informational): the same single copies from/to pageable memory
  copy_duplex (CUDA, informational): B bytes each way at once on two streams; r = T_both / max(T_h2d, T_d2h)
             is 1 for a full-duplex link and 2 when both directions share one engine: shared_duplex = r > 1.5

On device=cpu every copy is a memcpy on the host (the store's 'GPU' pool is host memory) and nothing runs
concurrently, so the link is shared (serial) by construction. Single copies are capped at 512 MiB.
Expert sets rotate between calls, so every promotion reads weights that are not in a cache.

Copy buffers hold random non-zero bytes (:func:`random_bytes`), never zeros or untouched memory: an
untouched host buffer maps the kernel's shared zero page, which a copy reads from the cache instead of DRAM,
and its first write takes page faults, so either inflates or deflates a rate.

:func:`copy_rates` gives the four headline link rates (H2D / D2H, pinned / pageable) of one large copy, for
benchmarks that only need a figure for the environment record (benchmarks/runtime_policies.py).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from validate.rig import Rig
from validate.tables import Measured, holdout_record, isotonic
from validate.timing import Clock

_MAX_SINGLE = 512 * 2**20
_ROTATIONS = 8
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


def _buffers(nbytes: int, device: torch.device, pinned: bool) -> tuple[torch.Tensor, torch.Tensor]:
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
        host, dev = _buffers(nbytes, device, pinned)
        nb = pinned and device.type == "cuda"  # non_blocking: only a pinned copy can be asynchronous
        h2d = _median_seconds(lambda: dev.copy_(host, non_blocking=nb), device, repeats)
        d2h = _median_seconds(lambda: host.copy_(dev, non_blocking=nb), device, repeats)
        out[f"h2d_{kind}_gbps"], out[f"d2h_{kind}_gbps"] = nbytes / h2d / 1e9, nbytes / d2h / 1e9
        del host, dev  # one pair at a time: 2 x nbytes of host and device memory at most
    return {k: out[k] for k in ("h2d_pinned_gbps", "h2d_pageable_gbps", "d2h_pinned_gbps", "d2h_pageable_gbps")}


def single_copy(direction: str, host: torch.Tensor, dev: torch.Tensor, nbytes: int) -> Callable[[], Any]:
    h, d = host[:nbytes], dev[:nbytes]
    if direction == "h2d":
        return lambda: d.copy_(h, non_blocking=True)
    return lambda: h.copy_(d, non_blocking=True)


def store_promotion(rig: Rig, k: int) -> tuple[Callable[[], Any], str]:
    """A callable promoting k experts through the store's copy path (rotating expert sets), and its origin."""
    store, E = rig.store, rig.spec.num_experts
    sets = [(r * k + np.arange(k)) % E for r in range(min(_ROTATIONS, max(1, E // k)))]
    slots = np.arange(k)
    state = {"i": 0}
    copy_in = getattr(store, "_copy_in", None)

    def via_store() -> None:
        ev = copy_in(0, sets[state["i"] % len(sets)], slots)
        state["i"] += 1
        if ev is not None:  # the compute stream waits for the arrival, as the store's forward does
            torch.cuda.current_stream(rig.device).wait_event(ev)

    def replica() -> None:  # the store's loop, should its private method be gone
        e_ids = sets[state["i"] % len(sets)]
        state["i"] += 1
        for e, s in zip(e_ids.tolist(), slots.tolist()):
            for n in ("gate", "up", "down"):
                rig.resident[n][s].copy_(rig.host[n][e], non_blocking=True)

    return (via_store, "ExpertStore._copy_in") if copy_in is not None else (replica, "replica of the store's copy loop")


def _act_sizes(token_bytes: int, top: int, factors: Sequence[int]) -> list[int]:
    return [token_bytes * f for f in factors if token_bytes * f < top]


def h2d_table(clock: Clock, rig: Rig, k_grid: Sequence[int], k_held: Sequence[int]) -> Measured:
    eb, tb = rig.store.expert_bytes, rig.store.token_bytes
    # single copies up to one token short of an expert: activation sizes between the last single-copy point
    # and the first promotion point (a different code path) would otherwise be interpolated across both
    acts = sorted({*_act_sizes(tb, eb, (1, 16, 256, 4096)), max(tb, (eb // tb - 1) * tb)})
    act_held = _act_sizes(tb, eb, (4, 64, 1024))
    host, dev = _buffers(max([*acts, *act_held, 1]), rig.device, pinned=True)
    origin = store_promotion(rig, 1)[1]

    def at(nbytes: int) -> float:
        if nbytes < eb:
            return clock.measure(single_copy("h2d", host, dev, nbytes))
        return clock.measure(store_promotion(rig, nbytes // eb)[0])

    xs = [*acts, *(k * eb for k in k_grid)]
    raw = [at(b) for b in xs]
    t = Measured("copy_h2d", [float(b) for b in xs], isotonic(raw),
                 note=f"single pinned copies below one expert ({eb} B); from one expert on: {origin}")
    t.extra["raw_seconds"] = raw
    held = [*act_held, *(k * eb for k in k_held if k not in k_grid)]
    if held:
        t.holdout = holdout_record(held, [at(b) for b in held], t.table()(np.asarray(held, float)).tolist())
    return t


def d2h_sizes(rig: Rig, quick: bool) -> tuple[list[int], list[int]]:
    eb, tb, E = rig.store.expert_bytes, rig.store.token_bytes, rig.spec.num_experts
    top = min(E * eb, _MAX_SINGLE)
    acts = [tb * f for f in ((1, 256, 65536) if quick else (1, 16, 256, 4096, 65536))]
    experts = [eb * k for k in ((1, E) if quick else (1, 4, 16, 64, E))]
    grid = sorted({b for b in [*acts, *experts] if b <= top})
    held = sorted({b for b in (tb * 4, tb * 1024, eb * 2) if b <= top and b not in grid})
    return grid, held


def single_table(name: str, clock: Clock, rig: Rig, grid: Sequence[int], held: Sequence[int], pinned: bool) -> Measured:
    """copy_d2h (pinned), copy_h2d_pageable or copy_d2h_pageable: single copies of each size."""
    direction = "h2d" if name.startswith("copy_h2d") else "d2h"
    host, dev = _buffers(max([*grid, *held]), rig.device, pinned)
    at = {b: clock.measure(single_copy(direction, host, dev, b)) for b in [*grid, *held]}
    raw = [at[b] for b in grid]
    t = Measured(name, [float(b) for b in grid], isotonic(raw),
                 note=f"single copies, {'pinned' if pinned else 'pageable'} host memory")
    t.extra["raw_seconds"] = raw
    if held:
        t.holdout = holdout_record(list(held), [at[b] for b in held], t.table()(np.asarray(held, float)).tolist())
    return t


def duplex_table(clock: Clock, rig: Rig, sizes: Sequence[int], d2h: Measured) -> Measured:
    """copy_duplex (CUDA): both directions at once; ``extra["ratio"]`` is T_both / max(T_h2d, T_d2h)."""
    dev_ = rig.device
    top = max(sizes)
    host_a, dev_a = _buffers(top, dev_, True)
    host_b, dev_b = _buffers(top, dev_, True)
    s1, s2 = torch.cuda.Stream(dev_), torch.cuda.Stream(dev_)

    def both(nbytes: int) -> Callable[[], None]:
        def fn() -> None:
            cur = torch.cuda.current_stream(dev_)
            s1.wait_stream(cur)
            s2.wait_stream(cur)
            with torch.cuda.stream(s1):
                dev_a[:nbytes].copy_(host_a[:nbytes], non_blocking=True)
            with torch.cuda.stream(s2):
                host_b[:nbytes].copy_(dev_b[:nbytes], non_blocking=True)
            cur.wait_stream(s1)
            cur.wait_stream(s2)
        return fn

    secs = [clock.measure(both(b)) for b in sizes]
    singles = [clock.measure(single_copy("h2d", host_a, dev_a, b)) for b in sizes]
    d2h_t = d2h.table()(np.asarray(sizes, float))
    ratio = [s / max(a, b) for s, a, b in zip(secs, singles, d2h_t)]
    t = Measured("copy_duplex", [float(b) for b in sizes], isotonic(secs), note="bytes each way, both at once")
    t.extra["ratio"] = ratio
    return t
