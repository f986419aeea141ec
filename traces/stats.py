"""Routing statistics of a trace, and a command line that prints them.

    python -m traces.stats TRACE.npz [TRACE.npz ...] [--json]
    python -m traces.stats --check [--seeds N]     synthetic mini/flash traces: measured vs published, pass/fail
    python -m sim.synthetic_check [--seeds N]     the same with tide's hit ratios (needs simpy)

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

--check generates synthetic LLaDA2.0-mini and -flash traces (seeds 0..N-1, defaults, gen_length 1024) and prints
each calibration figure (mean over seeds, and the range) against its published target with pass/fail:
tokens per forward, distinct experts, cosines (block-cache denoise forwards: the block's own tokens), denoising
steps per prompt (EOS stop), cross-seed ("topic") top-half coverage (OLMoE across domains, top-32 of 64). The
tide hit ratio at tau = 1..5 under prefix recompute needs the simulator, which traces may not import
(tests/test_architecture.py): `python -m sim.synthetic_check` prints the same table with those rows.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

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


def top_half_coverage(placed_on: np.ndarray, served: np.ndarray) -> float:
    """Share of ``served``'s assignments [L, E] taken by the E/2 experts busiest in ``placed_on`` [L, E], mean over
    layers: how well a top-half placement chosen on one workload serves another (itself: its top-half share)."""
    E = placed_on.shape[-1]
    top = np.argpartition(placed_on, E - E // 2, axis=-1)[:, E - E // 2:]
    return float((np.take_along_axis(served, top, -1).sum(-1) / served.sum(-1)).mean())


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
        "committed_tokens": int(trace.tokens_committed.sum()),
        "denoise_steps_per_block": _mean(per_block),
        # committed per forward (the decoder's parallelism), not output per forward: after the EOS the block's
        # positions are still committed, and the published 2.55 / 3.19 count what each forward commits
        "tokens_per_forward": int(trace.tokens_committed.sum()) / n_gen if n_gen else math.nan,
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
    "generated_tokens": "generated tokens (output)", "committed_tokens": "committed tokens", "denoise_steps_per_block": "denoising steps per block",
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


# ---- measured vs published (synthetic calibration) ---------------------------------------------------------
BUDGET = {"mini": 128, "flash": 96}  # TIDE's B per layer (of 256): mini's released default, flash's paper setting


HitRatios = Callable[[Trace, int], Sequence[float]]  # (trace, budget) -> tide hit ratio at tau = 1..5


def calibration_rows(seeds: Sequence[int] = (0, 1, 2), hit_ratios: HitRatios | None = None,
                     step_hit_ratios: HitRatios | None = None) -> list[tuple[str, str, str, bool | None]]:
    """(figure, measured, published, passed) rows; passed None: not checked (shown for comparison, or a note in
    ``measured``).

    ``hit_ratios`` measures tide's whole-run hit ratio at tau = 1..5 (the simulator: sim.synthetic_check passes it;
    traces may not import sim); None: those rows say where to get them. ``step_hit_ratios`` (optional) the same
    averaged over steps, as TIDE's 0.0009 / 0.0014 / 0.0028 / 0.0040: mini's loss rows, not checked."""
    from offload.model_spec import ModelSpec
    from traces.synthetic import default_config, generate

    rows: list[tuple[str, str, str, bool | None]] = []

    def row(name: str, values: Sequence[float], target: str, ok: bool) -> None:
        v = np.asarray(values, dtype=float)
        rows.append((name, f"{v.mean():.4f} ({v.min():.4f}-{v.max():.4f})", target, bool(ok)))

    for model, tpf in (("mini", 2.55), ("flash", 3.19)):
        spec = ModelSpec.load(f"llada2.0-{model}")
        bc = [generate(spec, default_config(spec, "block-cache", seed=s)) for s in seeds]
        pr = [generate(spec, default_config(spec, "prefix-recompute", seed=s)) for s in seeds]
        st = [trace_stats(t) for t in bc]
        tp = np.mean([s["tokens_per_forward"] for s in st])
        row(f"{model}: tokens per denoising forward", [s["tokens_per_forward"] for s in st], f"{tpf}",
            abs(tp - tpf) < 0.15)
        c1 = [s["cosine_adjacent"] for s in st]
        c5 = [s[f"cosine_lag{LAG}"] for s in st]
        row(f"{model}: cosine adjacent steps (block tokens)", c1, "0.985", abs(np.mean(c1) - 0.985) < 0.01)
        row(f"{model}: cosine 5 steps apart (block tokens)", c5, "> 0.95", np.mean(c5) > 0.95)
        if model == "mini":
            d = [s["distinct_experts"] for s in st]
            row("mini: distinct experts per layer, block forward", d, "69.5", abs(np.mean(d) - 69.5) < 5)
            n = [t.num_steps for t in pr]
            row("mini: denoising steps per prompt (EOS stop)", n, "22-92", 22 <= min(n) and max(n) <= 92)
            # one more seed, so that even one seed has a pair
            extra = generate(spec, default_config(spec, "prefix-recompute", seed=max(seeds) + 1))
            tot = [t.counts.sum(0) for t in (*pr, extra)]
            cross = [top_half_coverage(tot[i], tot[j]) for i in range(len(tot)) for j in range(len(tot)) if i != j]
            row("mini: top-half coverage across seeds (topics)", cross, "0.47-0.51 (OLMoE)",
                0.45 <= np.mean(cross) <= 0.53)
        if hit_ratios is None:
            rows.append((f"{model}: tide hit ratios", "not measured here: python -m sim.synthetic_check", "", None))
            continue
        h = np.asarray([hit_ratios(t, BUDGET[model]) for t in pr])
        want = (0.93, 0.95) if model == "mini" else (0.97, 0.99)
        row(f"{model}: tide hit ratio, tau 1, B {BUDGET[model]}", h[:, 0], f"{want[0]}-{want[1]}",
            want[0] <= h[:, 0].mean() <= want[1])
        delta = h[:, :1] - h[:, 1:]
        if model == "mini":
            for t in range(2, 6):
                row(f"mini: hit(tau 1) - hit(tau {t})", delta[:, t - 2], ("0.002-0.006" if t == 5 else
                    "0.0009 0.0014 0.0028".split()[t - 2]) + " (TIDE)",
                    0.002 <= delta[:, 3].mean() <= 0.006 if t == 5 else bool((np.diff(delta.mean(0)) > 0).all()))
            if step_hit_ratios is not None:
                hs = np.asarray([step_hit_ratios(t, BUDGET[model]) for t in pr])
                for t, published in zip(range(2, 6), ("0.0009", "0.0014", "0.0028", "0.0040")):
                    d = hs[:, 0] - hs[:, t - 1]
                    rows.append((f"mini: same, averaged over steps, tau {t}", f"{d.mean():.4f} ({d.min():.4f}-"
                                 f"{d.max():.4f})", f"{published} (TIDE)", None))
    return rows


def format_check(rows: Sequence[tuple[str, str, str, bool | None]]) -> str:
    table = [("figure", "measured: mean (range)", "published", "check")] + [
        (n, m, p, "-" if ok is None else "pass" if ok else "FAIL") for n, m, p, ok in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = Parser(prog="python -m traces.stats", description=__doc__.splitlines()[0])
    ap.add_argument("traces", nargs="*", help="trace files (.npz)")
    ap.add_argument("--json", action="store_true", help="print the statistics as JSON (an object per file when "
                                                        "several are given)")
    ap.add_argument("--check", action="store_true", help="measured vs published figures of synthetic mini and "
                                                         "flash traces, with pass/fail")
    ap.add_argument("--seeds", type=int, default=3, help="--check: synthetic seeds 0..N-1 (default 3)")
    args = ap.parse_args(argv)
    if args.check:
        if args.seeds < 1:
            ap.error(f"--seeds must be an integer >= 1, got {args.seeds}")
        print(format_check(calibration_rows(range(args.seeds))))
        if not args.traces:
            return 0
    if not args.traces:
        ap.error("give trace files, or --check")
    stats = [trace_stats(read_trace(p)) for p in args.traces]
    if args.json:
        out: Any = _json_ready(stats[0]) if len(stats) == 1 else {p: _json_ready(s) for p, s in zip(args.traces, stats)}
        print(json.dumps(out, indent=2))
    else:
        print(format_table([Path(p).name for p in args.traces], stats))
    return 0


if __name__ == "__main__":
    run_cli(main)
