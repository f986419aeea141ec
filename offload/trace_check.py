"""Validation of a trace against schema v1 (and optionally against a model spec).

Every check raises :class:`offload.errors.TideError` with a one-line message naming what is wrong; a trace that
passes is safe to replay: shapes agree, counts are non-negative and each (step, layer) holds exactly
tokens_forwarded * top_k assignments.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from offload.errors import TideError
from offload.trace import MODES, ORIGINS, SCHEMA_VERSION, STEP_FIELDS, Trace

_MAX_COUNT = 2**31 - 1


def _need(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise TideError(f"trace header lacks {where}{key}")
    return d[key]


def _int(v: Any, what: str, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise TideError(f"trace header {what} must be an integer >= {minimum}, got {v!r}")
    return v


def validate_header(header: Any) -> None:
    if not isinstance(header, dict):
        raise TideError("trace header is not a JSON object")
    version = header.get("version")
    if version != SCHEMA_VERSION:
        raise TideError(f"unsupported trace schema version {version!r} (this reader knows {SCHEMA_VERSION})")
    model = _need(header, "model", "")
    for k in ("num_moe_layers", "num_experts", "top_k"):
        _int(_need(model, k, "model."), f"model.{k}", 1)
    if model["top_k"] > model["num_experts"]:
        raise TideError("trace header model.top_k exceeds model.num_experts")
    gen = _need(header, "generation", "")
    mode = _need(gen, "mode", "generation.")
    if mode not in MODES:
        raise TideError(f"trace header generation.mode {mode!r} is not one of {', '.join(MODES)}")
    _int(_need(gen, "block_length", "generation."), "generation.block_length", 1)
    _int(_need(gen, "gen_length", "generation."), "generation.gen_length", 0)
    origin = _need(header, "origin", "")
    if _need(origin, "kind", "origin.") not in ORIGINS:
        raise TideError(f"trace header origin.kind must be one of {', '.join(ORIGINS)}")


def validate_trace(trace: Trace, model: Any = None) -> None:
    """Check ``trace`` (and, when ``model`` is a ModelSpec, that its shape matches the model)."""
    validate_header(trace.header)
    counts = trace.counts
    if not isinstance(counts, np.ndarray) or counts.ndim != 3 or not np.issubdtype(counts.dtype, np.integer):
        raise TideError("trace counts must be a 3-D integer array [steps, moe_layers, experts]")
    S, L, E = counts.shape
    if S == 0:
        raise TideError("trace holds no steps")
    m = trace.header["model"]
    if (L, E) != (m["num_moe_layers"], m["num_experts"]):
        raise TideError(f"trace counts shape [{S}, {L}, {E}] disagrees with its header "
                        f"({m['num_moe_layers']} MoE layers x {m['num_experts']} experts)")
    for f in STEP_FIELDS:
        a = getattr(trace, f)
        if not isinstance(a, np.ndarray) or a.shape != (S,) or not np.issubdtype(a.dtype, np.integer):
            raise TideError(f"trace field {f} must be an integer array of {S} steps")
    if counts.min() < 0:
        s, l, e = np.argwhere(counts < 0)[0]
        raise TideError(f"trace has a negative count at step {s}, layer {l}, expert {e}")
    if trace.tokens_forwarded.min() < 1:
        raise TideError(f"trace step {int(np.argmin(trace.tokens_forwarded))} forwards no token")
    for f in ("step_in_block", "tokens_committed"):
        if getattr(trace, f).min() < 0:
            raise TideError(f"trace field {f} has a negative value")
    if trace.block.min() < -1:
        raise TideError("trace field block has a value below -1")
    if trace.kind.max() > 3:
        raise TideError(f"trace field kind has an unknown value {int(trace.kind.max())} (0..3 allowed)")
    seqs = trace.header["generation"].get("sequences", 1)
    if isinstance(seqs, bool) or not isinstance(seqs, (int, np.integer)) or seqs < 1:
        raise TideError(f"trace header generation.sequences must be an integer >= 1, got {seqs!r}")
    # each token attends to at least its own sequence's tokens of the step: tokens / sequences of them
    bad_ctx = trace.context_tokens.astype(np.int64) * int(seqs) < trace.tokens_forwarded
    if bad_ctx.any():
        raise TideError(f"trace step {int(np.argmax(bad_ctx))}: context_tokens smaller than the tokens forwarded per "
                        f"sequence")
    k = m["top_k"]
    want = trace.tokens_forwarded.astype(np.int64) * k
    got = counts.sum(axis=2, dtype=np.int64)
    bad = got != want[:, None]
    if bad.any():
        s, l = np.argwhere(bad)[0]
        raise TideError(f"trace step {s}, layer {l}: {got[s, l]} assignments, expected tokens_forwarded x top_k "
                        f"= {want[s]}")
    gen_len = trace.header["generation"]["gen_length"]
    if trace.tokens_committed.sum(dtype=np.int64) > gen_len:
        raise TideError(f"trace commits {int(trace.tokens_committed.sum())} tokens, more than gen_length {gen_len}")
    out = trace.header["generation"].get("output_tokens")
    if out is not None:
        committed = int(trace.tokens_committed.sum(dtype=np.int64))
        if isinstance(out, bool) or not isinstance(out, (int, np.integer)) or not 0 <= out <= committed:
            raise TideError(f"trace header generation.output_tokens must be an integer in [0, {committed}] "
                            f"(the committed tokens), got {out!r}")
    if trace.topk_ids is not None:
        _validate_topk(trace, k)
    if model is not None:
        check_model_match(trace, model)


def _validate_topk(trace: Trace, k: int) -> None:
    ids = trace.topk_ids
    S, L, E = trace.counts.shape
    n = int(trace.tokens_forwarded.sum(dtype=np.int64))
    if not isinstance(ids, np.ndarray) or ids.shape != (n, L, k) or not np.issubdtype(ids.dtype, np.integer):
        raise TideError(f"trace topk_ids must be an integer array [{n}, {L}, {k}]")
    if ids.size and (ids.min() < 0 or ids.max() >= E):
        raise TideError(f"trace topk_ids hold an expert id outside 0..{E - 1}")
    step_of_token = np.repeat(np.arange(S), trace.tokens_forwarded)
    # bincount over (step, layer, expert) flattened: one vectorised pass
    flat = (step_of_token[:, None, None] * L + np.arange(L)[None, :, None]) * E + ids.astype(np.int64)
    rebuilt = np.bincount(flat.ravel(), minlength=S * L * E).reshape(S, L, E)
    if not np.array_equal(rebuilt, trace.counts):
        raise TideError("trace topk_ids disagree with counts")


def check_model_match(trace: Trace, model: Any) -> None:
    """The trace must have been recorded (or generated) for a model of this shape."""
    m = trace.header["model"]
    have = (trace.num_moe_layers, trace.num_experts, m["top_k"])
    want = (model.num_moe_layers, model.num_experts, model.top_k)
    if have != want:
        raise TideError(f"trace shape ({have[0]} MoE layers, {have[1]} experts, top-{have[2]}) does not match model "
                        f"{model.name} ({want[0]} MoE layers, {want[1]} experts, top-{want[2]})")


def make_trace(header: dict[str, Any], counts: Any, *, block: Any, step_in_block: Any, tokens_forwarded: Any,
               context_tokens: Any, tokens_committed: Any, kind: Any, topk_ids: Any = None) -> Trace:
    """Cast to the schema's dtypes and validate; raises TideError naming the first problem."""
    trace = Trace(
        header=header,
        counts=np.ascontiguousarray(counts, dtype=np.int32),
        block=np.asarray(block, dtype=np.int32), step_in_block=np.asarray(step_in_block, dtype=np.int32),
        tokens_forwarded=np.asarray(tokens_forwarded, dtype=np.int32),
        context_tokens=np.asarray(context_tokens, dtype=np.int32),
        tokens_committed=np.asarray(tokens_committed, dtype=np.int32), kind=np.asarray(kind, dtype=np.uint8),
        topk_ids=None if topk_ids is None else np.asarray(topk_ids, dtype=np.int16),
    )
    validate_trace(trace)
    return trace
