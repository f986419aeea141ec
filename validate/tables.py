"""Measured tables and their held-out error.

A table is measured on a grid of x values (and, for 2-D tables, y values); the simulator interpolates it
piecewise-linearly (``offload.hardware.Table1D`` / ``Table2D``). Its quality is checked on *held-out* points:
extra measurements that were not used to build it. For each held-out point

  rel_error = (predicted - measured) / measured,   predicted = the table's interpolation (or, for the expert
                                                   tables, call_seconds + sum_e table(n_e) of a routed batch)

and the record keeps the points, both times, the errors and their median and maximum absolute value.

Every table is physically non-decreasing along each axis (more tokens, context or bytes never take less time),
so the measured values are made non-decreasing by isotonic regression (pool adjacent violators, equal weights)
before they become the table: on a noisy machine this removes dips that are noise, never a real effect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from offload.hardware import TABLE_AXES, Table1D, Table2D
from validate.timing import rel_errors


@dataclass
class Measured:
    """One measured table: axes values, seconds, optional call_seconds, and its held-out record."""

    name: str
    x: list[float]
    seconds: list[Any]                 # [len(x)] or [len(x)][len(y)]
    y: list[float] | None = None
    call: float | None = None
    holdout: dict[str, Any] | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self) -> Table1D | Table2D:
        if self.y is None:
            return Table1D(tuple(self.x), tuple(self.seconds), self.call)
        return Table2D(tuple(self.x), tuple(self.y), tuple(tuple(r) for r in self.seconds))

    def to_json(self) -> dict[str, Any]:
        axes = TABLE_AXES[self.name]
        out: dict[str, Any] = {axes[0]: [float(v) for v in self.x]}
        if self.y is not None:
            out[axes[1]] = [float(v) for v in self.y]
            out["seconds"] = [[float(v) for v in r] for r in self.seconds]
        else:
            out["seconds"] = [float(v) for v in self.seconds]
        if self.call is not None:
            out["call_seconds"] = float(self.call)
        return out


def holdout_record(points: Sequence[Any], measured: Sequence[float], predicted: Sequence[float]) -> dict[str, Any]:
    """Held-out points with measured and predicted seconds and the relative errors (see module docstring)."""
    m, p = np.asarray(measured, np.float64), np.asarray(predicted, np.float64)
    err = rel_errors(p, m)
    return {"points": [list(pt) if isinstance(pt, (tuple, list)) else float(pt) for pt in points],
            "measured_s": m.tolist(), "predicted_s": p.tolist(), "rel_error": err.tolist(),
            "median_abs_rel_error": float(np.median(np.abs(err))) if err.size else None,
            "max_abs_rel_error": float(np.max(np.abs(err))) if err.size else None}


def isotonic(y: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to ``y`` in least squares (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in y:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return [m for m, w in blocks for _ in range(int(w))]


def isotonic_2d(z: Sequence[Sequence[float]]) -> list[list[float]]:
    """Non-decreasing along both axes: along each row, then along each column (twice, to settle)."""
    a = np.asarray(z, np.float64)
    for _ in range(2):
        a = np.asarray([isotonic(r) for r in a])
        a = np.asarray([isotonic(c) for c in a.T]).T
    return a.tolist()


def measure_1d(name: str, grid: Sequence[float], held: Sequence[float], time_at: Callable[[float], float],
               note: str = "") -> Measured:
    """Time ``time_at(x)`` on ``grid`` (the table) and on ``held`` (its held-out check)."""
    raw = [time_at(x) for x in grid]
    t = Measured(name, [float(x) for x in grid], isotonic(raw), note=note)
    t.extra["raw_seconds"] = raw
    held = [x for x in held if x not in set(grid)]
    if held:
        meas = [time_at(x) for x in held]
        t.holdout = holdout_record(held, meas, t.table()(np.asarray(held, np.float64)).tolist())
    return t


def geometric_midpoints(grid: Sequence[int], every: int = 1) -> list[int]:
    """Integer points between neighbours of ``grid`` (sqrt(a b), rounded), strictly inside, every ``every``-th pair."""
    out = []
    for a, b in list(zip(grid, grid[1:]))[::every]:
        m = int(round(float(np.sqrt(a * b))))
        if a < m < b:
            out.append(m)
    return out
