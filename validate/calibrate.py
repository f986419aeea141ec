"""``python -m validate.calibrate``: measure this machine with micro-benchmarks and write a hardware profile.

    python -m validate.calibrate --device cuda|cpu [--out PROFILE.json] [--model M] [--dtype D] [--threads N]
                                 [--quick] [--max-seconds S]

Every table of the simulator's cost model (``sim.cost``) is measured with the runtime's own code, on one
decoder layer of each kind of ``--model`` (default llada2-tiny on cpu, llada2.0-mini on cuda), in the
runtime's dtype (float32 on cpu, bfloat16 on cuda): routed experts on the device and on the host
(validate.bench_experts), attention / embeddings / dense MLP / router + shared expert / lm_head + sampler and
the generation loop's own per-step work (validate.bench_layers), the expert store's per-layer fixed work
(validate.bench_store), and the copies (validate.bench_copies). Each table is checked on held-out points that
were not used to build it; the errors are printed and stored in the profile (``calibration.holdout``).

On device=cpu the "GPU" is the CPU itself and the copies are memcpy: what the runtime executes there. The
profile then says ``single_device: true`` (one serial device; activations never move).

Hold-out discipline: nothing here runs an end-to-end generation of the model; the profile comes from
micro-benchmarks only. Imports need torch and numpy only (no simpy, plotly, scipy): it runs on the GPU machine.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from sim.errors import TideError, run_cli
from sim.model_spec import MODEL_PRESETS
from traces.io import atomic_write_text
from validate import bench_copies, bench_experts, bench_layers, bench_store
from runtime.environment import environment
from validate.profile_build import build_profile, holdout_summary
from validate.rig import build_rig
from validate.tables import Measured, geometric_midpoints
from validate.timing import Clock, TimingSettings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def grids(device: str, quick: bool, E: int) -> dict[str, Any]:
    """Measurement grids (tokens, context, rows per expert, experts per copy) by device and --quick."""
    if quick:
        tokens = [1, 32, 64, 128, 256, 512]
        att = [32, 64, 128, 256]
        gpu_rows = [1, 4, 16, 64, 256] if device == "cpu" else [1, 4, 16, 64, 256, 1024, 4096]
        cpu_rows = [1, 4, 16, 64, 256]
        k = [1, 4, 16, E]
    else:
        tokens = [1, 8, 32, 64, 128, 256, 512, 1024, 2048] + ([4096] if device == "cuda" else [])
        att = [8, 32, 64, 128, 256, 512, 1024, 2048] + ([4096] if device == "cuda" else [])
        gpu_rows = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
        cpu_rows = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        k = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    k = sorted({min(v, E) for v in k})
    return {
        "tokens": tokens, "tokens_held": geometric_midpoints(tokens[1:], 2) or [48],
        "attention": att, "attention_held": [(48, 48), (32, 96), (96, 192)] + ([] if quick else [(32, 768), (384, 384)]),
        "gpu_rows": gpu_rows, "cpu_rows": cpu_rows, "batch_tokens": [32, 128] if quick else [32, 128, 512],
        "lm_rows": [1, 8, 32, 64, 128], "lm_held": [16, 48],
        "k": k, "k_held": [v for v in geometric_midpoints(k) if v not in k][:3],
        # host rows per call: bf16 experts of a LLaDA2.0-mini shape on the host are slow to compute
        "rows_cap_gpu": 65536 if device == "cuda" else 4096, "rows_cap_cpu": 2048 if device == "cuda" else 4096,
        "threads_tokens": [1, 16] if quick or device == "cuda" else [1, 16, 128],
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m validate.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", required=True, choices=("cpu", "cuda"))
    p.add_argument("--out", default=None, help="profile JSON to write (default runs/profile-<device>-<model>-<time>.json)")
    p.add_argument("--model", default=None, help=f"preset ({', '.join(MODEL_PRESETS)}) or config.json; default "
                   "llada2-tiny on cpu, llada2.0-mini on cuda")
    p.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="default float32 on cpu, bfloat16 on cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (as the runtime's --threads)")
    p.add_argument("--quick", action="store_true", help="fewer points and repeats (tests, a first look)")
    p.add_argument("--block-length", type=int, default=32, help="block length for the sampler and attention mask")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="after this long, skip the informational tables (threads, pageable, duplex)")
    return p.parse_args(argv)


def _table_line(row: tuple[str, int, int, float | None, float | None]) -> str:
    name, n, nh, med, mx = row
    fmt = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    return f"{name:<20}{n:>7}{nh:>9}{fmt(med):>15}{fmt(mx):>12}"


def calibrate(a: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    if a.device == "cuda" and not torch.cuda.is_available():
        raise TideError(f"--device cuda requested but CUDA is not available (torch {torch.__version__})")
    if a.threads is not None and a.threads < 1:
        raise TideError("--threads must be >= 1")
    if a.block_length < 1:
        raise TideError("--block-length must be >= 1")
    device = torch.device(a.device)
    dtype = DTYPES[a.dtype or ("bfloat16" if a.device == "cuda" else "float32")]
    model = a.model or ("llada2.0-mini" if a.device == "cuda" else "llada2-tiny")
    t_start = time.perf_counter()
    rig = build_rig(model, device, dtype, a.threads)
    env = environment(device, dtype)
    flush = 256 * 2**20 if a.device == "cuda" else 16 * 2**20  # beyond the L2 of any GPU / a CPU core's L1 + L2
    timing = TimingSettings(warmup=2, repeats=5 if a.quick else 9, flush_bytes=flush)
    clock = Clock(device, timing)
    g = grids(a.device, a.quick, rig.spec.num_experts)
    tables: dict[str, Measured] = {}
    skipped: list[str] = []
    print(f"calibrating {rig.full_spec.name} layers on {env.get('gpu', env['cpu'])} ({a.device}, {env['dtype']}, "
          f"{env['threads']} threads){' --quick' if a.quick else ''}; built in {time.perf_counter() - t_start:.1f} s")

    def run(name: str, fn: Callable[[], Measured | None], optional: bool = False) -> None:
        if optional and a.max_seconds is not None and time.perf_counter() - t_start > a.max_seconds:
            skipped.append(name)
            return
        t0 = time.perf_counter()
        t = fn()
        if t is not None:
            tables[name] = t
            print(f"  {name:<20} {time.perf_counter() - t0:6.1f} s")

    with torch.inference_mode():
        run("gpu_expert", lambda: bench_experts.expert_table("gpu_expert", clock, rig, g["gpu_rows"], g["rows_cap_gpu"],
                                                             g["batch_tokens"], on_host=False))
        run("cpu_expert", lambda: bench_experts.expert_table("cpu_expert", clock, rig, g["cpu_rows"], g["rows_cap_cpu"],
                                                             g["batch_tokens"], on_host=True))
        run("attention", lambda: bench_layers.attention_table(clock, rig, g["attention"], g["attention_held"], a.block_length))
        run("embed", lambda: bench_layers.embed_table(clock, rig, g["tokens"], g["tokens_held"]))
        if rig.dense_layer is not None:
            run("dense_mlp", lambda: bench_layers.mlp_table("dense_mlp", clock, rig, g["tokens"], g["tokens_held"]))
        run("moe_dense", lambda: bench_layers.mlp_table("moe_dense", clock, rig, g["tokens"], g["tokens_held"]))
        run("moe_overhead", lambda: bench_store.moe_overhead_table(clock, rig, g["tokens"], g["tokens_held"]))
        run("lm_head", lambda: bench_layers.lm_head_table(clock, rig, g["lm_rows"], g["lm_held"]))
        step = bench_layers.step_overhead(clock, rig, a.block_length, timing.repeats)
        run("copy_h2d", lambda: bench_copies.h2d_table(clock, rig, g["k"], g["k_held"]))
        d2h_grid, d2h_held = bench_copies.d2h_sizes(rig, a.quick)
        run("copy_d2h", lambda: bench_copies.single_table("copy_d2h", clock, rig, d2h_grid, d2h_held, pinned=True))
        threads = sorted({1, torch.get_num_threads()} | ({max(1, torch.get_num_threads() // 2)} if not a.quick else set()))
        run("cpu_expert_threads", lambda: bench_experts.threads_table(clock, rig, threads, g["threads_tokens"]),
            optional=True)
        duplex_ratio = None
        if device.type == "cuda":
            # informational: a few sizes from one expert up to 64 MiB keep these tables to seconds
            big = [b for b in d2h_grid if rig.store.expert_bytes <= b <= 64 * 2**20][:3] or d2h_grid[-1:]
            for name in ("copy_h2d_pageable", "copy_d2h_pageable"):
                run(name, lambda name=name: bench_copies.single_table(name, clock, rig, big, [], pinned=False), optional=True)
            run("copy_duplex", lambda: bench_copies.duplex_table(clock, rig, big, tables["copy_d2h"]), optional=True)
            if "copy_duplex" in tables:
                duplex_ratio = float(max(tables["copy_duplex"].extra["ratio"]))

    summary = holdout_summary(tables)
    calibration = {
        "method": "micro-benchmarks only (validate.calibrate); no end-to-end generation was run or used",
        "device": a.device, "dtype": env["dtype"], "threads": env["threads"], "quick": bool(a.quick),
        "model": rig.full_spec.name, "block_length": a.block_length,
        "timing": {"warmup": timing.warmup, "repeats": timing.repeats, "flush_bytes": timing.flush_bytes,
                   "statistic": "median of single calls, each after a cache flush", "samples": clock.samples},
        "seconds": round(time.perf_counter() - t_start, 2), "skipped": skipped, "step_overhead": dict(step),
        "duplex_ratio": duplex_ratio,
        "holdout": {name: t.holdout for name, t in tables.items() if t.holdout},
        "notes": {name: t.note for name, t in tables.items() if t.note},
        "raw": {name: t.extra for name, t in tables.items() if t.extra},
    }
    profile = build_profile(rig, tables, step, env, calibration, duplex_ratio)
    out = Path(a.out) if a.out else Path("runs") / f"profile-{a.device}-{model.replace('/', '_')}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    atomic_write_text(out, json.dumps(profile, indent=1) + "\n")
    print(f"\n{'table':<20}{'points':>7}{'held-out':>9}{'median |err|':>15}{'max |err|':>12}")
    for row in summary:
        print(_table_line(row))
    print(f"step overhead {step['step_overhead_s'] * 1e6:.1f} us per forward (loop {step['loop_per_forward_s'] * 1e6:.1f} us"
          f" - sampler {step['sampler_s'] * 1e6:.1f} us); link shared_duplex={profile['link']['shared_duplex']}"
          + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    print(f"wrote {out} in {time.perf_counter() - t_start:.1f} s")
    return profile, out


def main(argv: Sequence[str] | None = None) -> int:
    calibrate(parse_args(argv))
    return 0


if __name__ == "__main__":
    run_cli(main)
