"""Import a per-token routing dump (token ids and gating weights) as a schema-v1 trace.

    python -m traces.import_tokens DUMP.jsonl --model M --out TRACE.npz [--layer-offset N] [--first-is-prefill]
        [--no-topk-ids] [--drop-incomplete]

Format: JSON Lines, one object per line, in either of two shapes (they may be mixed):

    {"step": 3, "layer": 5, "token_id": 1234, "experts": [12, 40], "weights": [0.61, 0.22]}   # one token, one layer
    {"step": 3, "token_id": 1234, "experts": [[12, 40], [7, 1], ...], "weights": [[0.61, 0.22], ...]}
                                                                # one token, every layer (list i: MoE layer i)

``step`` (integer >= 0) is the forward pass; ``token_id`` (integer >= 0) the token's vocabulary id; ``experts``
its k expert ids per layer; ``weights`` (optional) the matching gate weights, k finite numbers >= 0 per layer
(checked, not stored: the schema keeps which experts ran, not how much each counted). In the all-layers shape,
``"layers": [l0, l1, ...]`` names the log layer of each list (default: list i is MoE layer i, i.e. log layer
i + layer_offset). Log layer x is MoE layer x - layer_offset. Tokens of one step keep file order: token j of a
step is its j-th row in every layer, and must carry the same token_id in every layer (else the rows do not line
up: a one-line error). Blank lines and objects whose ``"type"`` is present and not ``"token"`` (a meta header)
are skipped.

Trace: as :func:`traces.importers.import_jsonl` makes it (mode "autoregressive", block_length 1, one step per
distinct log step, kind 3 decode, or kind 2 prefill for the first with ``first_is_prefill``), origin format
``"tokens"``. Incomplete steps (a layer with fewer rows than another in some step, e.g. the last tokens' rows of
a layer missing from a cut log) are a one-line error naming the step and layer, or with ``--drop-incomplete``
are dropped and counted (``origin.dropped_steps``, printed by the CLI). Bad input prints ``error: ...`` and
exits 2.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offload.errors import TideError, run_cli
from offload.trace import Trace
from traces.core import check_topk_fits
from traces.importers import (RoutingRows, assemble_trace, index_value, moe_layer, positions_in_group,
                             run_row_importer, step_rows)

_TYPES = (None, "token")


def _weights_ok(w: Any, k: int) -> bool:
    return (type(w) is list and len(w) == k and all(type(x) in (int, float) for x in w)
            and all(math.isfinite(x) and x >= 0 for x in w))


def _ids_ok(ids: Any, k: int) -> bool:
    return type(ids) is list and len(ids) == k and set(map(type, ids)) == {int}


def import_tokens(path: str | Path, model: Any, *, layer_offset: int = 0, first_is_prefill: bool = False,
                  keep_topk: bool = True, drop_incomplete: bool = False) -> Trace:
    """Read a per-token routing dump (module docstring) for ``model`` (a ModelSpec) into a Trace."""
    path = Path(path)
    L, k = model.num_moe_layers, model.top_k
    if keep_topk:
        check_topk_fits(model)
    steps: list[int] = []
    layers: list[int] = []
    linenos: list[int] = []
    token_ids: list[int] = []
    ids: list[list[int]] = []
    for lineno, where, row, (step, tok, experts) in step_rows(path, _TYPES, ("step", "token_id", "experts")):
        index_value(where, "token_id", tok)
        weights = row.get("weights")
        if "layer" in row:  # one token, one layer
            per_layer, log_layers, w_layers = [experts], [row["layer"]], None if weights is None else [weights]
        else:  # one token, every layer
            if type(experts) is not list or not experts or any(type(e) is not list for e in experts):
                raise TideError(f"{where}: field experts must be a list of per-layer expert-id lists (or give "
                                "field layer for one layer's ids)")
            per_layer = experts
            log_layers = row.get("layers", list(range(layer_offset, layer_offset + len(experts))))
            if type(log_layers) is not list or len(log_layers) != len(experts):
                raise TideError(f"{where}: field layers must list one layer per experts list ({len(experts)})")
            if weights is not None and (type(weights) is not list or len(weights) != len(experts)):
                raise TideError(f"{where}: field weights must hold one list per experts list ({len(experts)})")
            w_layers = weights
        for i, (lay, ex) in enumerate(zip(log_layers, per_layer)):
            m = moe_layer(where, lay, layer_offset, model)
            if not _ids_ok(ex, k):
                raise TideError(f"{where}: layer {lay}'s experts must be {k} integer expert ids (model "
                                f"{model.name} uses top-{k}), got {ex!r}")
            if w_layers is not None and not _weights_ok(w_layers[i], k):
                raise TideError(f"{where}: layer {lay}'s weights must be {k} finite numbers >= 0")
            steps.append(step)
            layers.append(m)
            linenos.append(lineno)
            token_ids.append(tok)
            ids.append(ex)
    if not steps:
        raise TideError(f"{path}: no token rows (objects with step, token_id and experts)")
    _check_token_alignment(path, steps, layers, token_ids, linenos, L)
    return assemble_trace(path, model, RoutingRows(steps, layers, [1] * len(steps), linenos, ids), fmt="tokens",
                          layer_offset=layer_offset, first_is_prefill=first_is_prefill, keep_topk=keep_topk,
                          drop_incomplete=drop_incomplete)


def _check_token_alignment(path: Path, steps: list[int], layers: list[int], token_ids: list[int],
                           linenos: list[int], L: int) -> None:
    """Token j of a step must carry the same token_id in every layer that has a j-th row (vectorised)."""
    step = np.unique(np.asarray(steps, dtype=np.int64), return_inverse=True)[1]
    pos = positions_in_group(step * L + np.asarray(layers, dtype=np.int64))  # row's place in its (step, layer)
    # sort rows by (step, position); within one (step, position) every layer's token_id must agree
    key = step * (int(pos.max()) + 1) + pos
    o = np.argsort(key, kind="stable")
    tid = np.asarray(token_ids, dtype=np.int64)[o]
    same_slot = key[o][1:] == key[o][:-1]
    bad = same_slot & (tid[1:] != tid[:-1])
    if bad.any():
        i = int(np.argmax(bad))
        a, b = o[i], o[i + 1]
        raise TideError(f"{path} line {linenos[b]}: step {steps[b]} token {int(pos[b])} has token_id {token_ids[b]} "
                        f"in MoE layer {layers[b]} but {token_ids[a]} in MoE layer {layers[a]} (line {linenos[a]}): "
                        "the layers' rows do not line up")


def main(argv: Sequence[str] | None = None) -> int:
    return run_row_importer(argv, "traces.import_tokens", __doc__, "dump", 'per-token JSONL dump: rows '
                            '{"step", "token_id", "experts", "weights"}', import_tokens)


if __name__ == "__main__":
    run_cli(main)
