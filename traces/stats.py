"""Routing statistics of a trace, and a command line that prints them.

    python -m traces.stats TRACE.npz [TRACE.npz ...] [--json]

Definitions (c_s = counts[s, l, :], the count vector of MoE layer l at step s; "generating forwards" are the
denoising forwards, kind 0, plus autoregressive decode forwards, kind 3; commit and prefill forwards only
re-encode tokens and are left out of every per-forward statistic):
  tokens_per_forward        generated tokens / generating forwards
  denoise_steps_per_block   mean over generated blocks of their denoising forwards
  tokens_forwarded_mean     mean tokens a generating forward runs (block-cache: the block; prefix-recompute:
                            the whole prefix)
  distinct_experts          mean over generating forwards and layers of #{e : c_s[e] > 0}; on block-cache
                            traces the statistic of one block forward (dMoE: 69.5 for LLaDA2.0-mini)
  cosine_adjacent           mean over layers and pairs (s, s+1) of denoising steps of one block of
                            c_s . c_{s+1} / (|c_s| |c_{s+1}|)  (TIDE: about 0.985)
  cosine_lag5               the same for pairs (s, s+5) of one block (TIDE: above 0.95)
  top_half_share            mean over generating forwards and layers of the share of a forward's assignments
                            taken by its E/2 busiest experts: the hit ratio of a per-step refresh that keeps the
                            E/2 most used experts resident (TIDE, mini, 128 of 256: 0.93-0.95)
  top10_share, gini         popularity skew of each layer's assignments summed over all forwards: the share of
                            the ceil(E/10) busiest experts, and the Gini coefficient
                            G = sum_i (2i - n - 1) x_(i) / (n sum x), x_(i) ascending; mean over layers
                            (uniform use: 0.1 and 0)
Statistics without any contributing pair or forward are NaN (null in --json).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from offload.cli import Parser
from offload.errors import run_cli
from offload.trace_io import read_trace
from offload.trace import KIND_COMMIT, KIND_DECODE, KIND_DENOISE, KIND_NAMES, KIND_PREFILL, Trace

LAG = 5


def generating_mask(trace: Trace) -> np.ndarray:
    return (trace.kind == KIND_DENOISE) | (trace.kind == KIND_DECODE)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def lag_cosine(trace: Trace, lag: int) -> float:
    """Mean cosine similarity of per-layer count vectors of denoising steps ``lag`` apart within one block."""
    if trace.num_steps <= lag:
        return math.nan
    den = trace.kind == KIND_DENOISE
    a, b = slice(None, -lag), slice(lag, None)
    pair = (den[a] & den[b] & (trace.block[a] == trace.block[b])
            & (trace.step_in_block[b] - trace.step_in_block[a] == lag))
    first = np.flatnonzero(pair)
    if first.size == 0:
        return math.nan
    x = trace.counts[first].astype(np.float64)
    y = trace.counts[first + lag].astype(np.float64)
    cos = (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    return float(cos.mean())


def top_share(counts: np.ndarray, top: int) -> np.ndarray:
    """Share of each count vector's assignments (last axis) taken by its ``top`` largest entries."""
    part = np.partition(counts, counts.shape[-1] - top, axis=-1)[..., counts.shape[-1] - top:]
    return part.sum(-1) / counts.sum(-1)


def gini(x: np.ndarray) -> np.ndarray:
    """Gini coefficient along the last axis (0: all equal; (n-1)/n: one entry holds everything)."""
    s = np.sort(x.astype(np.float64), axis=-1)
    n = s.shape[-1]
    i = np.arange(1, n + 1)
    return ((2 * i - n - 1) * s).sum(-1) / (n * s.sum(-1))


def trace_stats(trace: Trace) -> dict[str, Any]:
    """All statistics of the module docstring, plus the trace's shape, as a flat dict of plain values."""
    gen = generating_mask(trace)
    n_gen = int(gen.sum())
    E = trace.num_experts
    gen_counts = trace.counts[gen]
    blocks = trace.block[trace.kind == KIND_DENOISE]
    per_block = np.unique(blocks, return_counts=True)[1]
    totals = trace.counts.sum(axis=0, dtype=np.int64)  # [L, E]
    return {
        "mode": trace.mode,
        "model": str(trace.header["model"].get("name", "?")),
        "moe_layers": trace.num_moe_layers,
        "experts": E,
        "top_k": trace.top_k,
        "steps": trace.num_steps,
        **{f"{KIND_NAMES[k]}_forwards": int((trace.kind == k).sum())
           for k in (KIND_DENOISE, KIND_COMMIT, KIND_PREFILL, KIND_DECODE)},
        "blocks": int(per_block.size),
        "generated_tokens": trace.generated_tokens,
        "denoise_steps_per_block": _mean(per_block),
        "tokens_per_forward": trace.generated_tokens / n_gen if n_gen else math.nan,
        "tokens_forwarded_mean": _mean(trace.tokens_forwarded[gen]),
        "distinct_experts": _mean((gen_counts > 0).sum(-1)),
        "cosine_adjacent": lag_cosine(trace, 1),
        f"cosine_lag{LAG}": lag_cosine(trace, LAG),
        "top_half_share": _mean(top_share(gen_counts, E // 2)) if E >= 2 else math.nan,
        "top10_share": _mean(top_share(totals, math.ceil(E / 10))),
        "gini": _mean(gini(totals)),
    }


# ---- command line -------------------------------------------------------------------------------------------
_LABELS = {
    "mode": "mode", "model": "model", "moe_layers": "MoE layers", "experts": "experts per layer",
    "top_k": "top-k", "steps": "steps (forwards)", "denoise_forwards": "  denoise", "commit_forwards": "  commit",
    "prefill_forwards": "  prefill", "decode_forwards": "  decode", "blocks": "blocks",
    "generated_tokens": "generated tokens", "denoise_steps_per_block": "denoising steps per block",
    "tokens_per_forward": "tokens per generating forward", "tokens_forwarded_mean": "tokens forwarded (mean)",
    "distinct_experts": "distinct experts per layer/forward", "cosine_adjacent": "cosine, adjacent steps",
    f"cosine_lag{LAG}": f"cosine, steps {LAG} apart", "top_half_share": "top-half share per forward",
    "top10_share": "top-10% experts' share", "gini": "Gini of expert use",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def format_table(names: Sequence[str], stats: Sequence[dict[str, Any]]) -> str:
    """One row per statistic, one column per trace."""
    rows = [["statistic", *names]] + [[label, *(_fmt(s.get(key, "")) for s in stats)] for key, label in _LABELS.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _json_ready(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m traces.stats", description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="+", help="trace files (.npz)")
    ap.add_argument("--json", action="store_true", help="print the statistics as JSON (an object per file when "
                                                        "several are given)")
    args = ap.parse_args(argv)
    stats = [trace_stats(read_trace(p)) for p in args.traces]
    if args.json:
        out: Any = _json_ready(stats[0]) if len(stats) == 1 else {p: _json_ready(s) for p, s in zip(args.traces, stats)}
        print(json.dumps(out, indent=2))
    else:
        print(format_table([Path(p).name for p in args.traces], stats))
    return 0


if __name__ == "__main__":
    run_cli(main)
