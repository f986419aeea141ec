"""Importers: routing logs recorded by other tools, turned into schema-v1 traces.

JSONL decode log (:func:`import_jsonl`). One JSON object per line::

    {"step": 7, "layer": 3, "experts": [12, 40, 3, 9, 77, 101, 5, 250]}          # one token's top-k ids
    {"step": 0, "layer": 3, "experts": [[12, 40, ...], [8, 1, ...], ...]}         # several tokens at once

Rows that share a step accumulate tokens (in file order); rows may come in any order; every step must hold the
same number of tokens in every MoE layer. Lines whose ``"type"`` is present and not ``"route"`` (e.g. a
``{"type": "meta", ...}`` header) and blank lines are skipped. Log layer ``x`` is MoE layer ``x - layer_offset``
(pass ``first_k_dense_replace`` when the log numbers all decoder layers); the log must cover exactly the model's
MoE layers 0..L-1.

The trace is autoregressive decode: mode ``"autoregressive"``, block_length 1, one step per distinct log step
(ascending), kind 3 (decode) with one committed token each, block = decode index, step_in_block 0,
context_tokens = tokens forwarded so far including this step. With ``first_is_prefill`` the first step is the
prompt prefill instead: kind 2, block -1, nothing committed, and its tokens are the header's prompt_length.
gen_length is the number of decode steps. Per-token expert ids are kept as ``topk_ids`` (token j of a step is
the j-th token of that step's rows in every layer) unless ``keep_topk=False``.

Incomplete steps. A real log may lack a layer's rows for a step's last tokens (a run cut short, a lost write):
such a step holds fewer tokens in some MoE layer than in another. It is refused with a one-line error naming
the step and the layer, unless ``drop_incomplete=True`` (``--drop-incomplete``): then it is left out, the kept
steps are renumbered densely, their context still counts the dropped steps' tokens (they were forwarded), and
``origin.dropped_steps`` says how many were dropped (the CLIs print it). A prefill (``first_is_prefill``) that is
itself incomplete is dropped too, and the trace then starts with a decode step. A layer with no rows at all is
always an error (a wrong ``layer_offset``, not a lost row).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from offload.errors import TideError
from offload.trace import KIND_DECODE, KIND_NAMES, KIND_PREFILL, Trace, model_header
from offload.trace_check import make_trace

_ROUTE_TYPES = (None, "route")


def is_int(v: Any) -> bool:
    return type(v) is int  # JSON integers only: bool and float are refused


# ---- helpers shared with traces.vllm_logger -------------------------------------------------------------------

def json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number from 1, object) for each non-blank line of a JSON Lines routing log; an unreadable file,
    malformed JSON or a line that is not an object is a one-line TideError naming the file and line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TideError(f"routing log {path}: no such file") from None
    except IsADirectoryError:
        raise TideError(f"routing log {path}: is a directory") from None
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise TideError(f"{path} line {lineno}: malformed JSON ({type(exc).__name__}: {exc})"
                            .replace("\n", " ")) from None
        if not isinstance(row, dict):
            raise TideError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
        yield lineno, row


def expert_id_array(path: Path, ids: list[list[int]], token_line: np.ndarray, model: Any) -> np.ndarray:
    """Per-token expert ids as an int64 array [tokens, k], checked at once: each id in 0..E-1 and no token
    listing an expert twice (``token_line``: each token's line number, for the message)."""
    try:
        arr = np.asarray(ids, dtype=np.int64)
    except OverflowError:  # an id beyond int64: find it with Python ints (it is out of range, so we raise)
        arr = np.asarray(ids, dtype=object)
    bad = (arr < 0) | (arr >= model.num_experts)
    if bad.any():
        t, j = np.argwhere(bad)[0]
        raise TideError(f"{path} line {token_line[t]}: expert id {arr[t, j]} outside model {model.name}'s "
                        f"experts 0..{model.num_experts - 1}")
    srt = np.sort(arr, axis=1)
    dup = (srt[:, 1:] == srt[:, :-1]).any(axis=1)
    if dup.any():
        raise TideError(f"{path} line {token_line[np.argmax(dup)]}: a token lists the same expert twice")
    return arr


def check_topk_fits(model: Any) -> None:
    """Per-token ids are stored as int16 (schema v1)."""
    if model.num_experts > np.iinfo(np.int16).max + 1:
        raise TideError(f"model {model.name} has {model.num_experts} experts: too many to keep per-token ids "
                        "(use keep_topk=False)")


def count_assignments(group: np.ndarray, ids: np.ndarray, groups: int, num_experts: int) -> np.ndarray:
    """counts[g, e] = token-assignments of expert e in group g (one bincount); ``group``: each token's group,
    ``ids``: its [tokens, k] expert ids."""
    flat = group[:, None] * num_experts + ids
    return np.bincount(flat.ravel(), minlength=groups * num_experts).reshape(groups, num_experts)


def trace_summary(trace: Trace) -> str:
    """One line for an importer CLI: steps by kind, tokens, shape."""
    kinds = ", ".join(f"{int((trace.kind == k).sum())} {name}" for k, name in KIND_NAMES.items()
                      if (trace.kind == k).any())
    return (f"{trace.num_steps} steps ({kinds}), {int(trace.tokens_forwarded.sum())} tokens forwarded, "
            f"{trace.generated_tokens} generated, {trace.num_moe_layers} MoE layers x {trace.num_experts} experts, "
            f"top-{trace.top_k}")


def _row_tokens(experts: Any, lineno: int) -> list[list[int]]:
    """The row's tokens as lists of ids (type checks only, at C speed; values are checked vectorised later)."""
    if type(experts) is list and experts:
        if set(map(type, experts)) == {int}:
            return [experts]
        if (set(map(type, experts)) == {list} and all(experts)
                and set(map(type, chain.from_iterable(experts))) == {int}):
            return experts
    raise TideError(f"line {lineno}: field experts must be a non-empty list of integer expert ids "
                    "or a non-empty list of such lists")


def import_jsonl(path: str | Path, model: Any, *, layer_offset: int = 0, first_is_prefill: bool = False,
                 keep_topk: bool = True, drop_incomplete: bool = False) -> Trace:
    """Read a JSONL decode routing log for ``model`` (a :class:`offload.model_spec.ModelSpec`) into a Trace."""
    path = Path(path)
    L, k = model.num_moe_layers, model.top_k
    if keep_topk:
        check_topk_fits(model)

    steps: list[int] = []       # per row
    layers: list[int] = []      # per row (MoE layer, after the offset)
    ntok: list[int] = []        # per row
    linenos: list[int] = []     # per row
    ids: list[list[int]] = []   # per token
    for lineno, row in json_objects(path):
        if row.get("type") not in _ROUTE_TYPES:
            continue
        try:
            for key in ("step", "layer", "experts"):
                if key not in row:
                    raise TideError(f"line {lineno}: row lacks field {key!r}")
            step, layer = row["step"], row["layer"]
            if not is_int(step) or not 0 <= step < 2**62:
                raise TideError(f"line {lineno}: field step must be an integer >= 0, got {step!r}")
            if not is_int(layer):
                raise TideError(f"line {lineno}: field layer must be an integer, got {layer!r}")
            moe_layer = layer - layer_offset
            if not 0 <= moe_layer < L:
                raise TideError(f"line {lineno}: layer {layer} is MoE layer {moe_layer} after layer offset "
                                f"{layer_offset}, outside model {model.name}'s {L} MoE layers 0..{L - 1}")
            tokens = _row_tokens(row["experts"], lineno)
            lengths = set(map(len, tokens))
            if lengths != {k}:
                bad_len = min(lengths - {k})
                raise TideError(f"line {lineno}: a token routes to {bad_len} experts, model {model.name} "
                                f"uses top-{k}")
        except TideError as exc:
            raise TideError(f"{path} {exc}") from None
        steps.append(step)
        layers.append(moe_layer)
        ntok.append(len(tokens))
        linenos.append(lineno)
        ids.extend(tokens)
    if not steps:
        raise TideError(f"{path}: no routing rows (objects with step, layer and experts)")

    return assemble_trace(path, model, RoutingRows(steps, layers, ntok, linenos, ids), fmt="jsonl",
                          layer_offset=layer_offset, first_is_prefill=first_is_prefill, keep_topk=keep_topk,
                          drop_incomplete=drop_incomplete)


@dataclass(frozen=True)
class RoutingRows:
    """Parsed routing rows of a log, per row: its step, MoE layer (after the offset), token count and line;
    per token: its k expert ids (row order, then token order within a row)."""

    steps: list[int]
    layers: list[int]
    ntok: list[int]
    linenos: list[int]
    ids: list[list[int]]


def assemble_trace(path: Path, model: Any, rows: RoutingRows, *, fmt: str, layer_offset: int = 0,
                   first_is_prefill: bool = False, keep_topk: bool = True, drop_incomplete: bool = False,
                   origin: dict[str, Any] | None = None) -> Trace:
    """The trace of parsed rows (module docstring: the trace); shared by the JSONL and per-token importers.
    A step whose MoE layers hold different token counts is incomplete: a one-line TideError naming the step and
    layer, or with ``drop_incomplete`` left out of the trace (``origin.dropped_steps`` counts them)."""
    L, E, k = model.num_moe_layers, model.num_experts, model.top_k
    steps, layers, ntok, linenos, ids = rows.steps, rows.layers, rows.ntok, rows.linenos, rows.ids
    # ---- vectorised checks of the ids ---------------------------------------------------------------
    ntok_a = np.asarray(ntok, dtype=np.int64)
    tok_line = np.repeat(np.asarray(linenos, dtype=np.int64), ntok_a)
    id_arr = expert_id_array(path, ids, tok_line, model)

    # ---- steps and per-(step, layer) token counts ---------------------------------------------------
    log_steps, step_row = np.unique(np.asarray(steps, dtype=np.int64), return_inverse=True)
    S = len(log_steps)
    layer_row = np.asarray(layers, dtype=np.int64)
    group_row = step_row * L + layer_row
    per_group = np.bincount(group_row, weights=ntok_a, minlength=S * L).astype(np.int64).reshape(S, L)
    missing_layers = np.flatnonzero(per_group.max(axis=0) == 0)
    if missing_layers.size:
        listed = ", ".join(str(int(x)) for x in missing_layers[:8]) + (" ..." if missing_layers.size > 8 else "")
        raise TideError(f"{path}: the log has no rows for MoE layer(s) {listed} "
                        f"(model {model.name} has {L} MoE layers; check --layer-offset)")
    tokens = per_group.max(axis=1)
    uneven = (per_group != tokens[:, None]).any(axis=1)
    dropped = int(uneven.sum())
    # keys each token may attend to: every token forwarded so far, dropped steps' included (they ran)
    context = np.cumsum(tokens)
    prefill = bool(first_is_prefill) and not uneven[0]  # a dropped first step leaves no prefill
    if dropped and not drop_incomplete:
        s = int(np.argmax(uneven))
        lo = int(np.argmin(per_group[s]))
        raise TideError(f"{path}: step {int(log_steps[s])} has {int(per_group[s, lo])} token(s) in MoE layer {lo} "
                        f"but {int(tokens[s])} in MoE layer {int(np.argmax(per_group[s]))}; pass --drop-incomplete "
                        f"(drop_incomplete=True) to drop incomplete steps")
    if dropped:
        if dropped == S:
            raise TideError(f"{path}: every step is incomplete (some MoE layer has fewer tokens than another): "
                            "nothing to import")
        # keep the complete steps' rows and tokens, renumber the steps densely
        keep_row = ~uneven[step_row]
        keep_tok = np.repeat(keep_row, ntok_a)
        id_arr, tok_line = id_arr[keep_tok], tok_line[keep_tok]
        ntok_a, layer_row = ntok_a[keep_row], layer_row[keep_row]
        new_of_old = np.cumsum(~uneven) - 1
        step_row = new_of_old[step_row[keep_row]]
        log_steps, tokens, context = log_steps[~uneven], tokens[~uneven], context[~uneven]
        S = int(log_steps.size)
        group_row = step_row * L + layer_row

    # ---- counts[s, l, e] in one bincount ------------------------------------------------------------
    group_tok = np.repeat(group_row, ntok_a)
    counts = count_assignments(group_tok, id_arr, S * L, E).reshape(S, L, E)

    topk = None
    if keep_topk:
        # Token position within its (step, layer) group, in file order: stable sort by group.
        order = np.argsort(group_tok, kind="stable")
        sizes = np.bincount(group_tok, minlength=S * L)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        pos = np.empty_like(order)
        pos[order] = np.arange(order.size) - starts[group_tok[order]]
        step_start = np.concatenate(([0], np.cumsum(tokens)[:-1]))
        tok_step, tok_layer = group_tok // L, group_tok % L
        topk = np.empty((int(tokens.sum()), L, k), dtype=np.int16)
        topk[step_start[tok_step] + pos, tok_layer] = id_arr

    # ---- step metadata ------------------------------------------------------------------------------
    kind = np.full(S, KIND_DECODE, dtype=np.uint8)
    committed = np.ones(S, dtype=np.int64)
    decode_index = np.arange(S)
    prompt_length = 0
    if prefill:
        kind[0] = KIND_PREFILL
        committed[0] = 0
        decode_index = decode_index - 1  # the prefill is block -1, decode steps are blocks 0, 1, ...
        prompt_length = int(tokens[0])
    gen_length = int(committed.sum())
    header = {
        "version": 1,
        "model": model_header(model),
        "generation": {"mode": "autoregressive", "block_length": 1, "steps": 1, "threshold": None,
                       "gen_length": gen_length, "prompt_length": prompt_length},
        "origin": {"kind": "imported", "source": str(path), "seed": None, "format": fmt,
                   "layer_offset": layer_offset, "first_is_prefill": prefill,
                   "log_steps": [int(log_steps[0]), int(log_steps[-1])], "dropped_steps": dropped,
                   **(origin or {})},
    }
    return make_trace(header, counts, block=decode_index, step_in_block=np.zeros(S), tokens_forwarded=tokens,
                      context_tokens=context, tokens_committed=committed, kind=kind, topk_ids=topk)


# ---- the importers' command lines -------------------------------------------------------------------------------
def add_import_options(ap: Any, what: str) -> None:
    """The options the row-per-step importers' CLIs share (``what``: the log's name in the help)."""
    from offload.cli import add_model

    add_model(ap, required=True)
    ap.add_argument("--out", required=True, help="trace file to write (.npz)")
    ap.add_argument("--layer-offset", type=int, default=0,
                    help=f"subtracted from the {what}'s layer numbers to give MoE layers 0..L-1 "
                         "(e.g. first_k_dense_replace when it numbers all decoder layers)")
    ap.add_argument("--first-is-prefill", action="store_true",
                    help="the first step is the prompt prefill (kind 2), not a decode step")
    ap.add_argument("--no-topk-ids", action="store_true", help="do not keep per-token expert ids")
    ap.add_argument("--drop-incomplete", action="store_true",
                    help="drop the steps where some MoE layer has fewer tokens than another instead of refusing "
                         "(the number dropped is printed)")


def import_options(a: Any) -> dict[str, Any]:
    """The keyword arguments of an importer from :func:`add_import_options`' parsed options."""
    return dict(layer_offset=a.layer_offset, first_is_prefill=a.first_is_prefill, keep_topk=not a.no_topk_ids,
                drop_incomplete=a.drop_incomplete)


def write_imported(trace: Trace, out: str) -> None:
    """Write an imported trace and say what it holds and how many incomplete steps were dropped."""
    from offload.trace_io import write_trace

    path = write_trace(trace, out)
    print(f"wrote {path}: {trace_summary(trace)}; dropped {trace.header['origin']['dropped_steps']} incomplete "
          "step(s)")
