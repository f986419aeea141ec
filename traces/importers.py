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
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from offload.errors import TideError
from offload.trace import KIND_NAMES, Trace, model_header
from traces.core import autoregressive_trace, check_topk_fits, count_experts

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


def row_values(where: str, row: dict[str, Any], keys: Sequence[str], what: str = "row") -> list[Any]:
    """The row's values of ``keys``; a missing one is a one-line TideError naming it."""
    for key in keys:
        if key not in row:
            raise TideError(f"{where}: {what} lacks field {key!r}")
    return [row[key] for key in keys]


def step_rows(path: Path, types: tuple[str | None, ...],
              keys: tuple[str, ...]) -> Iterator[tuple[int, str, dict[str, Any], list[Any]]]:
    """(line, "PATH line N", row, its values of ``keys``) of each row of a routing log whose type is one of
    ``types`` (others are skipped); the first key, the step, must be an integer >= 0."""
    for lineno, row in json_objects(path):
        if row.get("type") in types:
            where = f"{path} line {lineno}"
            values = row_values(where, row, keys)
            index_value(where, keys[0], values[0])
            yield lineno, where, row, values


def index_value(where: str, name: str, v: Any, limit: int = 2**62) -> None:
    """``v`` must be a JSON integer in [0, limit) (a step, token or call index)."""
    if not is_int(v) or not 0 <= v < limit:
        raise TideError(f"{where}: field {name} must be an integer >= 0, got {v!r}")


def moe_layer(where: str, layer: Any, layer_offset: int, model: Any) -> int:
    """MoE layer ``layer - layer_offset`` of log layer ``layer``, which must lie in the model's 0..L-1."""
    if not is_int(layer):
        raise TideError(f"{where}: layer must be an integer, got {layer!r}")
    m, L = layer - layer_offset, model.num_moe_layers
    if not 0 <= m < L:
        raise TideError(f"{where}: layer {layer} is MoE layer {m} after layer offset {layer_offset}, outside "
                        f"model {model.name}'s {L} MoE layers 0..{L - 1}")
    return m


def positions_in_group(group: np.ndarray) -> np.ndarray:
    """Each element's position among the elements of its group (integer ids >= 0), in order."""
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group)
    pos = np.empty_like(order)
    pos[order] = np.arange(order.size) - (np.cumsum(sizes) - sizes)[group[order]]
    return pos


def step_tables(ids: np.ndarray, group: np.ndarray, pos: np.ndarray, tokens: np.ndarray, L: int, E: int,
                keep_topk: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """counts [S, L, E] of per-token ids [N, k] in groups step * L + layer, and with ``keep_topk`` topk_ids
    [tokens, L, k]: token ``pos`` of its group is its step's token ``pos`` (``tokens``: per step)."""
    S = tokens.size
    counts = count_experts(ids, E, group, S * L).reshape(S, L, E)
    if not keep_topk:
        return counts, None
    topk = np.empty((int(tokens.sum()), L, ids.shape[-1]), dtype=np.int16)
    topk[(np.cumsum(tokens) - tokens)[group // L] + pos, group % L] = ids
    return counts, topk


def trace_summary(trace: Trace) -> str:
    """One line for an importer CLI: steps by kind, tokens, shape."""
    kinds = ", ".join(f"{int((trace.kind == k).sum())} {name}" for k, name in KIND_NAMES.items()
                      if (trace.kind == k).any())
    return (f"{trace.num_steps} steps ({kinds}), {int(trace.tokens_forwarded.sum())} tokens forwarded, "
            f"{trace.generated_tokens} generated, {trace.num_moe_layers} MoE layers x {trace.num_experts} experts, "
            f"top-{trace.top_k}")


def _row_tokens(experts: Any, where: str) -> list[list[int]]:
    """The row's tokens as lists of ids (type checks only, at C speed; values are checked vectorised later)."""
    if type(experts) is list and experts:
        if set(map(type, experts)) == {int}:
            return [experts]
        if (set(map(type, experts)) == {list} and all(experts)
                and set(map(type, chain.from_iterable(experts))) == {int}):
            return experts
    raise TideError(f"{where}: field experts must be a non-empty list of integer expert ids "
                    "or a non-empty list of such lists")


def import_jsonl(path: str | Path, model: Any, *, layer_offset: int = 0, first_is_prefill: bool = False,
                 keep_topk: bool = True, drop_incomplete: bool = False) -> Trace:
    """Read a JSONL decode routing log for ``model`` (a :class:`offload.model_spec.ModelSpec`) into a Trace."""
    path = Path(path)
    k = model.top_k
    if keep_topk:
        check_topk_fits(model)

    steps: list[int] = []       # per row
    layers: list[int] = []      # per row (MoE layer, after the offset)
    ntok: list[int] = []        # per row
    linenos: list[int] = []     # per row
    ids: list[list[int]] = []   # per token
    for lineno, where, _, (step, layer, experts) in step_rows(path, _ROUTE_TYPES, ("step", "layer", "experts")):
        layer = moe_layer(where, layer, layer_offset, model)
        tokens = _row_tokens(experts, where)
        lengths = set(map(len, tokens))
        if lengths != {k}:
            raise TideError(f"{where}: a token routes to {min(lengths - {k})} experts, model {model.name} uses "
                            f"top-{k}")
        steps.append(step)
        layers.append(layer)
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
    L, E = model.num_moe_layers, model.num_experts
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

    # token j of a step is the j-th token of its (step, layer) group in file order, in every layer
    group_tok = np.repeat(group_row, ntok_a)
    counts, topk = step_tables(id_arr, group_tok, positions_in_group(group_tok), tokens, L, E, keep_topk)
    origin = {"kind": "imported", "source": str(path), "seed": None, "format": fmt, "layer_offset": layer_offset,
              "first_is_prefill": prefill, "log_steps": [int(log_steps[0]), int(log_steps[-1])],
              "dropped_steps": dropped, **(origin or {})}
    return autoregressive_trace(model_header(model), counts, origin, tokens=tokens, context=context, committed=1,
                                prefill=prefill, topk_ids=topk)


# ---- the importers' command lines -------------------------------------------------------------------------------
def run_importer(argv: Sequence[str] | None, module: str, doc: str, source: str, source_help: str,
                 add_options: Callable[[Any], None], read: Callable[[Any, Any], Trace], tail: str,
                 nargs: str | None = None) -> int:
    """The body of every importer's command line, given what differs: the source argument, ``add_options``, then
    ``--out``; ``read(options, parser)`` imports the trace (the parser for usage errors); it is written atomically
    and summed up in one line ending in ``tail`` formatted with the trace's origin (lists joined by commas)."""
    from offload.cli import Parser
    from offload.trace_io import write_trace

    ap = Parser(prog=f"python -m {module}", description=doc.splitlines()[0])
    ap.add_argument(source, nargs=nargs, help=source_help)
    add_options(ap)
    ap.add_argument("--out", required=True, help="trace file to write (.npz)")
    a = ap.parse_args(argv)
    trace = read(a, ap)
    origin = {k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in trace.header["origin"].items()}
    print(f"wrote {write_trace(trace, a.out)}: {trace_summary(trace)}; {tail.format(**origin)}")
    return 0


def run_row_importer(argv: Sequence[str] | None, module: str, doc: str, source: str, source_help: str,
                     importer: Callable[..., Trace]) -> int:
    """:func:`run_importer` for a row-per-step importer (:func:`import_jsonl`, ``traces.import_tokens``)."""
    def read(a: Any, _ap: Any) -> Trace:
        from offload.model_spec import ModelSpec

        return importer(getattr(a, source), ModelSpec.load(a.model), layer_offset=a.layer_offset,
                        first_is_prefill=a.first_is_prefill, keep_topk=not a.no_topk_ids,
                        drop_incomplete=a.drop_incomplete)

    return run_importer(argv, module, doc, source, source_help, partial(_add_row_options, what=source), read,
                        "dropped {dropped_steps} incomplete step(s)")


def _add_row_options(ap: Any, what: str) -> None:
    """The options of the row-per-step importers (``what``: the log's name in the help)."""
    from offload.cli import add_model

    add_model(ap, required=True)
    ap.add_argument("--layer-offset", type=int, default=0,
                    help=f"subtracted from the {what}'s layer numbers to give MoE layers 0..L-1 "
                         "(e.g. first_k_dense_replace when it numbers all decoder layers)")
    ap.add_argument("--first-is-prefill", action="store_true",
                    help="the first step is the prompt prefill (kind 2), not a decode step")
    ap.add_argument("--no-topk-ids", action="store_true", help="do not keep per-token expert ids")
    ap.add_argument("--drop-incomplete", action="store_true",
                    help="drop the steps where some MoE layer has fewer tokens than another instead of refusing "
                         "(the number dropped is printed)")
