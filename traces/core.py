"""What the trace producers share (synthetic generators, recorder, importers): one-line checks of bad values,
routing mechanisms (Zipf popularity, the exponential race of Gumbel-top-k draws, AR(1) noise), counting
token-assignments per expert, autoregressive traces' header and rows. numpy only at import (scipy for ar1)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from offload.errors import TideError
from offload.trace import KIND_DECODE, KIND_PREFILL, SCHEMA_VERSION, Trace
from offload.trace_check import make_trace


def check_integer(label: str, v: Any, lo: int, hi: int | None = None) -> None:
    """``v`` must be an integer (bool refused) in [lo, hi] (hi None: no upper bound)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or (hi is not None and v > hi):
        raise TideError(f"{label} must be an integer {f'>= {lo}' if hi is None else f'in [{lo}, {hi}]'}, got {v!r}")


def check_number(label: str, v: Any, lo: float, hi: float) -> None:
    """``v`` must be a finite real number (bool refused) in [lo, hi]."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)
    if not ok or not lo <= v <= hi:
        raise TideError(f"{label} must be a number in [{lo:g}, {hi:g}], got {v!r}")


def check_flag(label: str, v: Any) -> None:
    if not isinstance(v, (bool, np.bool_)):
        raise TideError(f"{label} must be True or False, got {v!r}")


def check_topk_fits(model: Any) -> None:
    """Per-token ids are stored as int16 (schema v1)."""
    if (E := model.num_experts) > np.iinfo(np.int16).max + 1:
        raise TideError(f"model {model.name} has {E} experts: too many to keep per-token ids (use keep_topk=False)")


# ---- routing ----------------------------------------------------------------------------------------------------
def zipf_logits(rank: np.ndarray, skew: Any) -> np.ndarray:
    """Zipf log-popularity -s log(1 + rank), unnormalised, of experts ranked ``rank`` (0: the most popular) along
    the last axis; ``skew`` s: a scalar or one per row of ``rank``."""
    return -np.asarray(skew)[..., None] * np.log1p(rank)


def exp_race(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """X^2 + Y^2 of standard normals, 2 Exp(1) (the k smallest of Exp(1) / q: a Gumbel-top-k draw from q)."""
    s = np.square(x)
    s += np.square(y)
    return s


def k_smallest(score: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest scores along the last axis, in no particular order."""
    return np.argpartition(score, k - 1, axis=-1)[..., :k]


def ar1(x: np.ndarray, coef: float) -> np.ndarray:
    """y_0 = x_0, y_t = coef y_(t-1) + x_t along axis 0 in float64: AR(1) of innovations ``x`` as a linear filter."""
    from scipy.signal import lfilter  # lazily: the rest serves where scipy is missing (the GPU machine)

    return lfilter([1.0], [1.0, -coef], x, axis=0) if len(x) else np.asarray(x, dtype=np.float64)


def count_experts(ids: np.ndarray, num_experts: int, group: np.ndarray | None = None, groups: int = 1) -> np.ndarray:
    """counts[g, ..., e] = token-assignments of expert e in group g, per middle index (e.g. MoE layer), from
    per-token ids [N, ..., k] and each token's group [N] (None: all in group 0); one bincount."""
    mid = ids.shape[1:-1]
    cells = int(np.prod(mid))  # per group
    cell = np.arange(cells, dtype=np.int64).reshape(*mid, 1)
    if group is not None:
        cell = np.reshape(group, (-1,) + (1,) * (ids.ndim - 1)) * cells + cell
    flat = cell * num_experts + ids
    return np.bincount(flat.ravel(), minlength=groups * cells * num_experts).reshape(groups, *mid, num_experts)


# ---- headers and autoregressive rows ------------------------------------------------------------------------------
def synthetic_origin(generator: str, cfg: Any, **extra: Any) -> dict[str, Any]:
    """A synthetic trace's origin: its seed, ``extra`` and every config field as a JSON value (origin.params)."""
    params = {k: _json_value(v) for k, v in asdict(cfg).items()}
    return {"kind": "synthetic", "seed": int(cfg.seed), "generator": generator, **extra, "params": params}


def _json_value(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    return bool(v) if isinstance(v, (bool, np.bool_)) else float(v) if isinstance(v, (float, np.floating)) else int(v)


def autoregressive_trace(
    model: dict[str, Any],
    counts: np.ndarray,
    origin: dict[str, Any],
    *,
    tokens: np.ndarray,
    context: Any,
    committed: Any,
    prefill: bool,
    topk_ids: Any = None,
    **generation: Any,
) -> Trace:
    """A validated trace of mode "autoregressive": with ``prefill`` its first step is the prompt prefill (kind 2,
    block -1, nothing committed), every other step a decode step (kind 3, block = decode index, ``committed``
    tokens); gen_length is the tokens committed, prompt_length the prefill's tokens unless ``generation`` (more
    keys of the header's generation entry) says otherwise. ``model``: the header's model entry."""
    first = np.arange(len(tokens)) < int(prefill)
    committed = np.where(first, 0, committed)
    gen = {"mode": "autoregressive", "block_length": 1, "steps": 1, "threshold": None}
    gen.update({"gen_length": int(committed.sum()), "prompt_length": int(tokens[0]) if prefill else 0, **generation})
    header = {"version": SCHEMA_VERSION, "model": model, "generation": gen, "origin": origin}
    steps = {"block": np.cumsum(~first) - 1, "step_in_block": np.zeros(first.size), "tokens_forwarded": tokens}
    steps.update(context_tokens=context, tokens_committed=committed, kind=np.where(first, KIND_PREFILL, KIND_DECODE))
    return make_trace(header, counts, topk_ids=topk_ids, **steps)
