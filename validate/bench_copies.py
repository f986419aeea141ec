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

Copy buffers hold random non-zero bytes (``runtime.copy_rates.random_buffers``; its module says why).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from runtime.copy_rates import random_buffers
from validate.rig import Rig
from validate.tables import Measured, holdout_record, isotonic
from validate.timing import Clock

_MAX_SINGLE = 512 * 2**20
_ROTATIONS = 8


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
    host, dev = random_buffers(max([*acts, *act_held, 1]), rig.device, pinned=True)
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
    host, dev = random_buffers(max([*grid, *held]), rig.device, pinned)
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
    host_a, dev_a = random_buffers(top, dev_, True)
    host_b, dev_b = random_buffers(top, dev_, True)
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
