"""Importer for vLLM-MoE-Logger routing logs (github.com/weiran0129/vLLM-MoE-Logger): one JSON Lines file per
logged MoE layer, merged into one schema-v1 trace (:func:`import_vllm_logger`).

Format (one JSON object per line; the hook in vLLM's ``FusedMoE.select_experts`` writes one row per token)::

    {"type": "meta", "model_id": "Qwen/Qwen1.5-MoE-A2.7B-Chat", "vllm_version": "...", "seed": 1234,
     "layers_logged": [8], "top_k": 4, "created_at": 1764302822.2}                    # header, at most one
    {"type": "route", "req_id": "r1", "token_idx": 0, "layer": 8, "topk_ids": [47, 3, 12, 9],
     "topk_weights": [0.21, 0.09, 0.05, 0.04]}                                          # one token of one layer

``token_idx`` is the row's index within one forward call; the request is not logged (``req_id`` is constant),
so a forward call starts at every row with ``token_idx == 0`` (per layer, when a file logs several) and its
rows must then count up by one. Lines of other types and blank lines are skipped; ``topk_weights`` (softmax
probabilities) are only used to recognise dummy runs.

Warm-up calls. Before serving, vLLM runs its model on dummy input: a memory-profiling run (8,192 rows in the
shipped logs) and warm-up runs (256 and 65 rows). They are detected, not counted off: the workload is one batch
submitted at once, so the real run is one prefill followed by decode steps whose batch only shrinks as requests
finish. The real calls are therefore the longest run of calls at the end of the file whose row counts never
increase and which holds no *dummy* call (two or more rows, all identical in ids and weights: dummy input
tokens route identically); everything before it is warm-up. In the shipped logs that discards calls 0-2 (8,192
and 256 identical rows, then 65 rows before the 1,406-row prefill). ``skip_calls=N`` overrides the rule.

Merging. Files are runs of one workload (greedy decoding, one layer logged per run), so their real calls line
up: call j after the warm-up must have the same number of rows in every file, else the import is refused; with
``drop_incomplete=True`` such calls (and calls some file lacks, e.g. a log cut short) are dropped instead and
their number is stored as the header's ``origin.dropped_steps``. Trace MoE layer ``i`` holds logged layer
``layer_map[i]`` (default: the logged layers in ascending order; a layer may repeat, e.g. to stand in for
unlogged layers of a deeper model, and every logged layer must be used); ``origin.layers`` records the map.

Trace (mode ``"autoregressive"``, block_length 1), one step per kept call:
  call 0 (prefill)  kind 2 (prefill), block -1, nothing committed, context = tokens forwarded (all prompts
                    concatenated: prompt boundaries are not logged); its tokens are the header's prompt_length
  call j >= 1       kind 3 (decode), one row per running request and one committed token each, block = index
                    among the kept decode steps, context = ceil(prefill tokens / rows of the first decode
                    call) + j (the mean prompt length plus the tokens generated so far: an estimate of the keys
                    each forwarded token attends to, at least its tokens forwarded)
gen_length = decode tokens (vLLM also samples each prompt's first token at the prefill; a prefill step commits
nothing in schema v1). Per-token ids (``keep_topk``) pair row r of a call across files: that is the same
request only if the separate runs were identical.

Model. The importer needs only the model's ``name``, ``num_experts`` and ``top_k`` (a ModelSpec, or a
:class:`RouterShape` for models the spec cannot describe, such as Qwen1.5-MoE); ids must lie in 0..E-1 and the
meta's ``top_k`` and every row's must equal k. The header's ``num_moe_layers`` is the trace's layer count; its
``config_hash`` is the spec's when the spec has that many MoE layers, else null (the trace then replays only
on a model of its own shape).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offload.errors import TideError
from offload.trace import Trace
from traces.core import autoregressive_trace, check_integer, check_topk_fits
from traces.importers import expert_id_array, index_value, is_int, json_objects, row_values, step_tables

_ROUTE_KEYS = ("token_idx", "layer", "topk_ids", "topk_weights")
_MAX_INDEX = 2**31  # token_idx and layer numbers beyond this are not a real log


@dataclass(frozen=True)
class RouterShape:
    """What the importer needs of a model: routed experts per MoE layer and top-k (name None: the logs'
    meta ``model_id``)."""

    num_experts: int
    top_k: int
    name: str | None = None

    def __post_init__(self) -> None:
        for f, label in (("num_experts", "experts"), ("top_k", "top-k")):
            check_integer(label, getattr(self, f), 1)
        if self.top_k > self.num_experts:
            raise TideError(f"top-k {self.top_k} exceeds the {self.num_experts} experts")


@dataclass(frozen=True)
class LayerLog:
    """One logged layer of one file, segmented: rows of the real calls only (the warm-up removed)."""

    path: Path
    layer: int
    meta: dict[str, Any]
    warmup_calls: int
    sizes: np.ndarray   # rows per real call
    call: np.ndarray    # per row: its real call (0 = the prefill)
    pos: np.ndarray     # per row: token_idx, the row's position within its call
    ids: np.ndarray     # per row: [k] expert ids, int64

    @property
    def where(self) -> str:
        return f"{self.path} (layer {self.layer})"


# ---- reading one file ----------------------------------------------------------------------------------------

def _check_meta(path: Path, lineno: int, row: dict[str, Any], model: Any) -> dict[str, Any]:
    top_k = row.get("top_k", model.top_k)
    if top_k != model.top_k:
        raise TideError(f"{path} line {lineno}: the log's meta says top-{top_k}, model {model.name} uses "
                        f"top-{model.top_k}")
    logged = row.get("layers_logged", [])
    if type(logged) is not list or not all(map(is_int, logged)):
        raise TideError(f"{path} line {lineno}: meta field layers_logged must be a list of integer layers")
    return row


def _check_route(where: str, row: dict[str, Any], model: Any) -> None:
    """Types of one route row (values of the ids are checked vectorised later)."""
    tok, layer, ids, weights = row_values(where, row, _ROUTE_KEYS, "route row")
    index_value(where, "token_idx", tok, _MAX_INDEX)
    index_value(where, "layer", layer, _MAX_INDEX)
    k = model.top_k
    if type(ids) is not list or set(map(type, ids)) != {int}:
        raise TideError(f"{where}: field topk_ids must be a non-empty list of integer expert ids")
    if len(ids) != k:
        raise TideError(f"{where}: a token routes to {len(ids)} experts, model {model.name} uses top-{k}")
    if type(weights) is not list or len(weights) != k or not set(map(type, weights)) <= {int, float}:
        raise TideError(f"{where}: field topk_weights must be a list of {k} numbers")


def _read_file(path: Path, model: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The meta header (or {}) and per-row arrays line, token_idx, layer, ids [rows, k], weights [rows, k]."""
    meta: dict[str, Any] | None = None
    lines: list[int] = []
    tok: list[int] = []
    layers: list[int] = []
    ids: list[list[int]] = []
    weights: list[list[float]] = []
    for lineno, row in json_objects(path):
        kind = row.get("type")
        if kind == "meta":
            if meta is not None:
                raise TideError(f"{path} line {lineno}: a second meta line (a file must hold one vLLM run)")
            meta = _check_meta(path, lineno, row, model)
            continue
        if kind != "route":
            if "type" not in row:
                raise TideError(f"{path} line {lineno}: row lacks field 'type'")
            continue
        _check_route(f"{path} line {lineno}", row, model)
        lines.append(lineno)
        tok.append(row["token_idx"])
        layers.append(row["layer"])
        ids.append(row["topk_ids"])
        weights.append(row["topk_weights"])
    if not lines:
        raise TideError(f"{path}: no route rows")
    line = np.asarray(lines, dtype=np.int64)
    rows = {"line": line, "tok": np.asarray(tok, dtype=np.int64), "layer": np.asarray(layers, dtype=np.int64),
            "ids": expert_id_array(path, ids, line, model), "weights": np.asarray(weights, dtype=np.float64)}
    meta = meta or {}
    logged = meta.get("layers_logged")
    if logged:
        stray = ~np.isin(rows["layer"], logged)
        if stray.any():
            i = int(np.argmax(stray))
            raise TideError(f"{path} line {line[i]}: layer {rows['layer'][i]} is not among the meta's "
                            f"layers_logged {logged}")
    return meta, rows


# ---- segmentation into forward calls -------------------------------------------------------------------------

def warmup_calls(sizes: np.ndarray, dummy: np.ndarray) -> int:
    """Calls before the real run: the real run is the longest run of calls at the end whose row counts never
    increase and that holds no dummy call (see the module docstring)."""
    breaks = np.flatnonzero((sizes[:-1] < sizes[1:]) | dummy[:-1])
    return int(breaks[-1]) + 1 if breaks.size else 0


def _segment(path: Path, layer: int, meta: dict[str, Any], rows: dict[str, np.ndarray],
             skip_calls: int | None) -> LayerLog:
    line, tok, ids, w = rows["line"], rows["tok"], rows["ids"], rows["weights"]
    start = tok == 0
    if not start[0]:
        raise TideError(f"{path} line {line[0]}: layer {layer}'s first route row has token_idx {tok[0]}; a forward "
                        "call starts at token_idx 0")
    gap = ~start[1:] & (tok[1:] != tok[:-1] + 1)
    if gap.any():
        i = int(np.argmax(gap)) + 1
        raise TideError(f"{path} line {line[i]}: token_idx {tok[i]} follows {tok[i - 1]} in layer {layer} "
                        f"(expected {tok[i - 1] + 1}, or 0 to start a forward call)")
    call = np.cumsum(start) - 1
    sizes = np.bincount(call)
    # A row "differs" when it is not the call's first and not identical (ids and weights) to the row before.
    differs = np.zeros(tok.size, dtype=bool)
    differs[1:] = ~start[1:] & ((ids[1:] != ids[:-1]).any(1) | (w[1:] != w[:-1]).any(1))
    dummy = (sizes >= 2) & (np.bincount(call, weights=differs, minlength=sizes.size) == 0)
    if skip_calls is None:
        warm = warmup_calls(sizes, dummy)
        if dummy[warm]:
            raise TideError(f"{path}: layer {layer} holds only dummy forward calls (every row of a call identical), "
                            "no real run")
    else:
        warm = skip_calls
        if warm >= sizes.size:
            raise TideError(f"{path}: skipping {warm} forward calls leaves none of layer {layer}'s {sizes.size}")
    real = call >= warm
    return LayerLog(path=path, layer=layer, meta=meta, warmup_calls=warm, sizes=sizes[warm:],
                    call=call[real] - warm, pos=tok[real], ids=ids[real])


def read_layer_logs(path: Path, model: Any, skip_calls: int | None = None) -> list[LayerLog]:
    """Every layer a file logs, segmented into its real forward calls (ascending layer)."""
    meta, rows = _read_file(path, model)
    order = np.argsort(rows["layer"], kind="stable")  # keep file order within a layer
    layers, first = np.unique(rows["layer"][order], return_index=True)
    bounds = [*first[1:], order.size]
    return [_segment(path, int(layer), meta, {k: v[order[a:b]] for k, v in rows.items()}, skip_calls)
            for layer, a, b in zip(layers, first, bounds)]


# ---- merging the layers --------------------------------------------------------------------------------------

def _aligned_calls(logs: list[LayerLog], drop_incomplete: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows per call as a [layers, calls] matrix (-1: the layer lacks the call) and which calls line up."""
    n = max(log.sizes.size for log in logs)
    rows = np.full((len(logs), n), -1, dtype=np.int64)
    for i, log in enumerate(logs):
        rows[i, :log.sizes.size] = log.sizes
    agree = (rows == rows[0]).all(axis=0) & (rows[0] >= 1)
    if drop_incomplete or agree.all():
        if not agree.any():
            raise TideError("no forward call has the same number of rows in every log: nothing to import")
        return rows, agree
    hint = "; pass drop_incomplete (--drop-incomplete) to drop the steps that do not line up"
    j = int(np.argmin(agree))
    if (rows[:, j] < 0).any():
        short = min(logs, key=lambda g: g.sizes.size)
        long = max(logs, key=lambda g: g.sizes.size)
        raise TideError(f"{short.where} has {short.sizes.size} forward calls after {short.warmup_calls} warm-up "
                        f"call(s), {long.where} has {long.sizes.size}{hint}")
    i = int(np.argmax(rows[:, j] != rows[0, j]))
    raise TideError(f"forward call {j} after the warm-up has {rows[i, j]} rows in {logs[i].where} but "
                    f"{rows[0, j]} in {logs[0].where}{hint}")


def _layer_order(logs: list[LayerLog], layer_map: Sequence[int] | None) -> list[int]:
    """Index into ``logs`` of each trace MoE layer."""
    index = {log.layer: i for i, log in enumerate(logs)}
    if layer_map is None:
        return list(range(len(logs)))
    layer_map = list(layer_map)
    if not layer_map or not all(map(is_int, layer_map)):
        raise TideError("layer map must be a non-empty list of logged layer numbers")
    unknown = [x for x in layer_map if x not in index]
    if unknown:
        raise TideError(f"layer map names layer {unknown[0]}, which no log holds "
                        f"(logged: {', '.join(map(str, index))})")
    unused = [x for x in index if x not in layer_map]
    if unused:
        raise TideError(f"layer {unused[0]} is logged but the layer map does not use it")
    return [index[x] for x in layer_map]


def _context(rows: np.ndarray, kept: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Context of the kept calls (module docstring): the prefill's tokens, then the mean prompt plus the call."""
    # Mean prompt length: prompt boundaries are not logged, but the first decode call has one row per request.
    mean_prompt = math.ceil(rows[:, 0].max() / rows[:, 1].max()) if rows.shape[1] > 1 else 0
    return np.where(kept == 0, tokens, np.maximum(tokens, mean_prompt + kept))


def _merge(logs: list[LayerLog], order: list[int], step_of_call: np.ndarray, tokens: np.ndarray, model: Any,
           keep_topk: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """counts [S, L, E] and, with ``keep_topk``, topk_ids [tokens, L, k] of the kept calls."""
    L = len(order)
    groups, ids, pos = [], [], []
    for l, i in enumerate(order):
        step = step_of_call[logs[i].call]
        keep = step >= 0
        groups.append(step[keep] * L + l)
        ids.append(logs[i].ids[keep])
        pos.append(logs[i].pos[keep])
    return step_tables(np.concatenate(ids), np.concatenate(groups), np.concatenate(pos), tokens, L,
                       model.num_experts, keep_topk)


def _model_id(logs: list[LayerLog]) -> str | None:
    """The meta's model_id shared by every file that has one; files of different models are refused."""
    seen: dict[str, Path] = {}
    for log in logs:
        if "model_id" in log.meta:
            seen.setdefault(str(log.meta["model_id"]), log.path)
    if len(seen) > 1:
        (x, a), (y, b) = list(seen.items())[:2]
        raise TideError(f"the logs are of different models: {a} logs {x!r}, {b} logs {y!r}")
    return next(iter(seen), None)


def import_vllm_logger(paths: Sequence[str | Path] | str | Path, model: Any, *, skip_calls: int | None = None,
                       drop_incomplete: bool = False, layer_map: Sequence[int] | None = None,
                       keep_topk: bool = False) -> Trace:
    """Merge vLLM-MoE-Logger files (one or more layers each) into one trace for ``model`` (anything with
    ``name``, ``num_experts`` and ``top_k``: a ModelSpec or a :class:`RouterShape`)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise TideError("no routing log given")
    if skip_calls is not None and (not is_int(skip_calls) or skip_calls < 0):
        raise TideError(f"skip-calls must be an integer >= 0, got {skip_calls!r}")
    if keep_topk:
        check_topk_fits(model)
    logs: list[LayerLog] = []
    for p in map(Path, paths):
        logs.extend(read_layer_logs(p, model, skip_calls))
    logs.sort(key=lambda g: g.layer)
    twice = [(a, b) for a, b in zip(logs, logs[1:]) if a.layer == b.layer]
    if twice:
        a, b = twice[0]
        raise TideError(f"layer {a.layer} is logged in both {a.path} and {b.path}")
    model_id = _model_id(logs)
    order = _layer_order(logs, layer_map)

    rows, keep = _aligned_calls(logs, drop_incomplete)
    kept = np.flatnonzero(keep)
    step_of_call = np.full(keep.size, -1, dtype=np.int64)
    step_of_call[kept] = np.arange(kept.size)
    tokens = rows[:, kept].max(axis=0)  # equal in every layer for kept calls
    counts, topk = _merge(logs, order, step_of_call, tokens, model, keep_topk)

    L = len(order)
    name = model.name if model.name is not None else (model_id or "unknown")
    config_hash = model.config_hash if getattr(model, "num_moe_layers", None) == L else None
    origin = {"kind": "imported", "seed": None, "format": "vllm-moe-logger", "source": [str(p) for p in paths],
              "model_id": model_id, "layers": [logs[i].layer for i in order], "logged_layers": [g.layer for g in logs],
              "warmup_calls": [g.warmup_calls for g in logs], "skip_calls": skip_calls,
              "dropped_steps": int(keep.size - kept.size)}
    return autoregressive_trace({"name": name, "config_hash": config_hash, "num_moe_layers": L,
                                 "num_experts": model.num_experts, "top_k": model.top_k}, counts, origin,
                                tokens=tokens, context=_context(rows, kept, tokens), committed=tokens,
                                prefill=kept[0] == 0, topk_ids=topk)
