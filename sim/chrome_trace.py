"""Export a simulated run's timeline as a Chrome trace (open in https://ui.perfetto.dev or chrome://tracing).

JSON object format: ``{"traceEvents": [...], "displayTimeUnit": "ms", "metadata": {...}}``. Each busy interval
of a resource is one complete event (``"ph": "X"``) with ``ts`` and ``dur`` in microseconds of simulated time,
``pid`` 0, ``tid`` the resource (0 gpu, 1 cpu, 2 h2d, 3 d2h, 4 host: the thread that syncs and decides; named
by ``thread_name`` metadata events),
``name`` what it was (``offload.results.WHAT``) and ``args`` ``{"step", "layer"}`` (layer -1: not a MoE layer).

The intervals in which the GPU stream stalls (waiting for a blocking copy, a prefetch, or the CPU's share of a
layer; ``what == "wait"``) go on their own track, tid 5 "gpu stalled", so that each resource track holds only
its busy intervals: they never overlap and their durations sum to ``SimResult.busy_s``.

Needs a result run with ``timeline=True``; no simpy or plotly here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from offload.errors import TideError
from offload.results import RESOURCES, WHAT, SimResult, to_json
from offload.atomic_io import atomic_write_text

WAIT_TID = len(RESOURCES)
TRACK_NAMES = (*RESOURCES, "gpu stalled")
_WAIT = WHAT.index("wait")
# complete event template; names come from WHAT (plain identifiers), numbers from float/int repr (JSON-safe)
_EVENT = '{{"ph":"X","pid":0,"tid":{},"ts":{!r},"dur":{!r},"name":"{}","cat":"{}","args":{{"step":{},"layer":{}}}}}'


def _json_safe(obj: Any) -> Any:
    """Make numpy scalars/arrays and non-finite floats JSON-ready."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def chrome_trace_events(result: SimResult) -> list[str]:
    """The trace events, each already serialised as a JSON object (one string per event)."""
    tl = result.timeline
    if tl is None:
        raise TideError("the result has no timeline: run the simulation with timeline=True")
    what = tl.what.astype(np.int64)
    tid = np.where(what == _WAIT, WAIT_TID, tl.resource.astype(np.int64))
    # vectorised columns; start and duration in microseconds, sorted by (track, start) so viewers nest cleanly
    ts = tl.start * 1e6
    dur = np.maximum(tl.end - tl.start, 0.0) * 1e6
    order = np.lexsort((ts, tid))
    names = np.asarray(WHAT, dtype=object)[what[order]]
    cats = np.asarray(TRACK_NAMES, dtype=object)[tid[order]]
    cols = zip(tid[order].tolist(), ts[order].tolist(), dur[order].tolist(), names.tolist(), cats.tolist(),
               tl.step[order].tolist(), tl.layer[order].tolist())
    events = [_EVENT.format(*c) for c in cols]
    meta: list[dict[str, Any]] = [
        {"ph": "M", "pid": 0, "tid": 0, "name": "process_name", "args": {"name": f"tide-moe sim: {result.label}"}},
    ]
    for i, name in enumerate(TRACK_NAMES):
        meta.append({"ph": "M", "pid": 0, "tid": i, "name": "thread_name", "args": {"name": name}})
        meta.append({"ph": "M", "pid": 0, "tid": i, "name": "thread_sort_index", "args": {"sort_index": i}})
    return [json.dumps(m, separators=(",", ":")) for m in meta] + events


def write_chrome_trace(path: str | Path, result: SimResult, meta: dict[str, Any] | None = None) -> Path:
    """Write ``result``'s timeline as Chrome trace JSON, atomically; returns the path written.

    ``meta`` (e.g. the resolved configuration) is stored under ``"metadata"`` next to the run's metrics.
    Raises TideError when ``result.timeline`` is None.
    """
    if result.timeline is None:
        raise TideError("the result has no timeline: run the simulation with timeline=True")
    path = Path(path)
    events = chrome_trace_events(result)
    metadata = {"generator": "tide-moe sim.chrome_trace", "time_unit": "simulated microseconds",
                "policy": result.policy, "label": result.label, "trace": result.trace,
                "tracks": {str(i): n for i, n in enumerate(TRACK_NAMES)}, "metrics": to_json(result.record())}
    if meta:
        metadata["meta"] = meta
    head = '{"displayTimeUnit":"ms","metadata":' + json.dumps(_json_safe(metadata), separators=(",", ":"),
                                                               allow_nan=False)
    text = head + ',"traceEvents":[\n' + ",\n".join(events) + "\n]}\n"
    atomic_write_text(path, text)
    return path


__all__ = ["write_chrome_trace", "chrome_trace_events", "TRACK_NAMES", "WAIT_TID"]
