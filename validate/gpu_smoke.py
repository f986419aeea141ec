"""``python3 -m validate.gpu_smoke``: the first checks on a new machine, each recorded the moment it ends.

    python3 -m validate.gpu_smoke --out SMOKE.json [--device cuda|cpu] [--quick] [--max-seconds S]

Checks (each a record ``{"name", "ok", "seconds", ...figures}``; the JSON is rewritten atomically after every
check, so a run killed by its time limit keeps the finished ones):

  environment   runtime.environment plus the host CPU's ISA flags that decide host-expert speed (AVX2, AVX-512,
                AVX512-BF16, AMX), from /proc/cpuinfo
  grouped_mm    the store's expert kernel (``runtime.kernels.grouped_experts``: torch._grouped_mm on sm90/sm100
                bf16) against the per-expert loop, at the model's expert shape, with empty groups and with more
                than 1023 groups (cut into runs); error = ||out - ref|| / ||ref|| against a float64 reference,
                bf16 passes under 2e-2, float32 under 1e-4, never NaN
  store_sync    every causal policy on the device store, with random delays injected on the compute, copy and
                activation streams (``runtime.streams``: a spin kernel per launch on CUDA, the threaded stand-in
                on cpu): outputs bit-identical to the same policy without delays, counters equal to a
                host-only store, outputs close to all-gpu's (placement changes where an expert runs, so bf16
                rounding differs between host and device)
  copies        pinned and pageable host<->device rates, buffers filled with random bytes first
                (``runtime.copy_rates.copy_rates``)
  host_expert   one expert on the host in bfloat16 and float32, on 1 thread and on all threads: ms per call,
                GFLOP/s (2 x 3 h i per row) and GB/s of weights read (3 h i x element size)

Needs torch and numpy only. ``--device cpu`` (the script's dry run) runs every check on the CPU with the tiny
preset. Exit status 1 if a check failed, 0 otherwise; the JSON says which and why.
"""
from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from runtime.environment import environment
from offload.cli import Parser
from offload.errors import TideError, run_cli
from offload.model_spec import ModelSpec
from offload.atomic_io import atomic_write_text

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-4}


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> dict[str, bool]:
    """Which of ISA_FLAGS the first CPU lists (all False where /proc/cpuinfo is unreadable)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return {f: False for f in ISA_FLAGS}
    line = next((l for l in text.splitlines() if l.startswith(("flags", "Features"))), "")
    have = set(line.partition(":")[2].split())
    return {f: f in have for f in ISA_FLAGS}


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf if out has a NaN or an Inf."""
    o, r = out.double().cpu(), ref.double().cpu()
    if not torch.isfinite(o).all():
        return float("inf")
    return float(torch.linalg.vector_norm(o - r) / max(float(torch.linalg.vector_norm(r)), 1e-300))


class Recorder:
    """Runs checks one by one and rewrites the JSON after each."""

    def __init__(self, out: Path, deadline_s: float | None) -> None:
        self.out, self.deadline = out, deadline_s
        self.t0 = time.perf_counter()
        self.doc: dict[str, Any] = {"complete": False, "checks": []}
        self._write()

    def _write(self) -> None:
        atomic_write_text(self.out, json.dumps(self.doc, indent=1, default=float) + "\n")

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if self.deadline is not None and time.perf_counter() - self.t0 > self.deadline:
            self.doc["checks"].append({"name": name, "ok": None, "skipped": "out of time"})
            self._write()
            return
        t = time.perf_counter()
        try:
            rec = {"name": name, **fn()}
            rec.setdefault("ok", True)
        except Exception as exc:  # noqa: BLE001 - a failed check is a result; the next checks still run
            rec = {"name": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(limit=6)}
        rec["seconds"] = round(time.perf_counter() - t, 3)
        self.doc["checks"].append(rec)
        self._write()
        status = "ok" if rec["ok"] else ("FAILED " + rec.get("error", ""))
        print(f"  {name:<12} {rec['seconds']:7.1f} s  {status}", flush=True)

    def finish(self) -> bool:
        self.doc["complete"] = True
        self.doc["seconds"] = round(time.perf_counter() - self.t0, 2)
        self._write()
        return all(c["ok"] is not False for c in self.doc["checks"])


# ---- checks --------------------------------------------------------------------------------------------------
def _reference(x: torch.Tensor, counts: np.ndarray, w: Sequence[torch.Tensor]) -> torch.Tensor:
    """The experts in higher precision, one active group at a time: float64 on the CPU, float32 (upcast
    operands) on a GPU, where a float64 copy of every stack would not fit next to the data."""
    from runtime.kernels import expert_mlp

    hi = torch.float64 if x.device.type == "cpu" else torch.float32
    ends = np.concatenate([[0], np.cumsum(counts)])
    parts = [expert_mlp(x[int(ends[g]):int(ends[g + 1])].to(hi), *(t[g].to(hi) for t in w))
             for g in np.flatnonzero(counts).tolist()]
    return torch.cat(parts) if parts else x.new_empty((0, w[2].shape[-2]), dtype=hi)


def check_grouped_mm(spec: ModelSpec, device: torch.device, dtype: torch.dtype, quick: bool) -> dict[str, Any]:
    from runtime import kernels

    gen = torch.Generator(device=device).manual_seed(0)
    E, h, i = spec.num_experts, spec.hidden_size, spec.moe_intermediate_size
    # E random experts drawn on the device; a stack of G > E groups repeats them (G distinct draws of a
    # LLaDA2.0-mini expert would take minutes on one host core)
    base = [(torch.randn(E, i, h, generator=gen, device=device) * h ** -0.5).to(dtype),
            (torch.randn(E, i, h, generator=gen, device=device) * h ** -0.5).to(dtype),
            (torch.randn(E, h, i, generator=gen, device=device) * i ** -0.5).to(dtype)]
    cases = []
    for G, rows_per in ((E, 4), (kernels.MAX_GROUPS + 77, 1)):
        counts = np.random.default_rng(G).integers(0, 2 * rows_per + 1, G)
        counts[::3] = 0  # empty groups
        counts[G // 2: G // 2 + min(G // 4, kernels.MAX_GROUPS)] = 0  # a long empty run
        idx = torch.arange(G, device=device) % E
        w = [t[idx].contiguous() for t in base]
        x = torch.randn(int(counts.sum()), h, generator=gen, device=device).to(dtype)
        ref = _reference(x, counts, w)
        fused = kernels.can_use_grouped_mm(x, *w)
        if fused or (hasattr(torch, "_grouped_mm") and device.type == "cpu" and dtype == torch.float32):
            got = kernels._grouped_mm_path(x, counts, *w)  # the cut into runs, also where the store falls back
        else:
            got = kernels.grouped_experts(x, counts, *w)
        loop = kernels._fallback(x, counts, *w, None)
        e_k, e_l = rel_error(got, ref), rel_error(loop, ref)
        cases.append({"groups": G, "rows": int(counts.sum()), "empty_groups": int((counts == 0).sum()),
                      "grouped_mm_used": bool(fused), "rel_err_kernel": e_k, "rel_err_loop": e_l,
                      "ok": e_k < TOLERANCE[dtype] and e_l < TOLERANCE[dtype]})
        del w
    return {"ok": all(c["ok"] for c in cases), "dtype": str(dtype).replace("torch.", ""), "cases": cases}


def routing_steps(spec: ModelSpec, steps: int, tokens: int, seed: int, dtype: torch.dtype) -> list:
    """Per step: per MoE layer (x [T, h], topk_ids [T, k], weights [T, k]) with skewed, drifting routing."""
    g = torch.Generator().manual_seed(seed)
    L, E, k, h = spec.num_moe_layers, spec.num_experts, spec.top_k, spec.hidden_size
    base = -1.2 * torch.log1p(torch.stack([torch.randperm(E, generator=g) for _ in range(L)]).float())
    out = []
    for _ in range(steps):
        drift = 0.3 * torch.randn(L, 1, E, generator=g)
        scores = base[:, None, :] + drift + torch.randn(L, tokens, E, generator=g)
        vals, ids = torch.topk(scores, k, dim=-1)
        x = torch.randn(L, tokens, h, generator=g).to(dtype)
        out.append([(x[l], ids[l].to(torch.int64), torch.softmax(vals[l], -1).float()) for l in range(L)])
    return out


def causal_policies() -> list[tuple[str, dict[str, Any]]]:
    from offload.policies import POLICIES

    cases = [(n, {}) for n, cls in POLICIES.items() if cls.causal and n != "tide"]
    return cases + [("tide", {"tau": 1}), ("tide", {"tau": 4})]


def _store_outputs(spec: ModelSpec, experts: list, name: str, params: dict, budget: int, device: torch.device,
                   dtype: torch.dtype, streams: Any, steps: list, cost: Any) -> tuple[list[torch.Tensor], Any]:
    from runtime.expert_store import ExpertStore
    from offload.executor import ExecutorProfile
    from offload.policies import StepInfo, make_policy

    policy = make_policy(name, **params)
    store = ExpertStore(spec, experts, policy, None if not policy.needs_budget else budget, device, dtype,
                        executor=ExecutorProfile(name="staging-4", staging_slots=4), block_length=32,
                        mode="block-cache", cost=cost, streams=streams)
    outs = []
    with torch.inference_mode():
        for s, layers in enumerate(steps):
            store.begin_step(StepInfo(index=s, block=0, step_in_block=s, kind=0, tokens_forwarded=layers[0][0].shape[0]))
            for l, (x, ids, w) in enumerate(layers):
                outs.append(store.forward(l, x.to(device), ids.to(device), w.to(device)).cpu())
        store.check_slots()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return outs, store.counters()


def check_store_sync(spec: ModelSpec, device: torch.device, dtype: torch.dtype, quick: bool) -> dict[str, Any]:
    from runtime.streams import CudaStreams, Delays, HostStreams, ThreadStreams
    from offload.cost import RooflineCostModel
    from offload.hardware import HardwareProfile

    g = torch.Generator().manual_seed(1)
    L, E, h, i = spec.num_moe_layers, spec.num_experts, spec.hidden_size, spec.moe_intermediate_size
    experts = [{"gate": (torch.randn(E, i, h, generator=g) * h ** -0.5).to(dtype),
                "up": (torch.randn(E, i, h, generator=g) * h ** -0.5).to(dtype),
                "down": (torch.randn(E, h, i, generator=g) * i ** -0.5).to(dtype)} for _ in range(L)]
    host32 = [{n: t.float() for n, t in d.items()} for d in experts]
    steps = routing_steps(spec, 3 if quick else 5, 32, 0, dtype)
    budget = max(1, E // 2)
    cost = RooflineCostModel(spec, HardwareProfile.load("h100-pcie5"))  # what riptide and tide-opt decide from
    delays = Delays(compute=2e-4, copy=2e-4, act=2e-4, seed=3) if device.type == "cuda" else \
        Delays(compute=1e-3, copy=1e-3, act=1e-3, seed=3)

    def streams(delayed: bool) -> Any:
        if device.type == "cuda":
            return CudaStreams(device, delays if delayed else None)
        return ThreadStreams(delays) if delayed else HostStreams()

    ref, _ = _store_outputs(spec, experts, "all-gpu", {}, budget, device, dtype, streams(False), steps, cost)
    keys = ("promotions", "demotions", "cpu_assignments", "gpu_assignments", "hit_ratio")  # not bytes: dtypes differ
    rows = []
    for name, params in causal_policies():
        plain, m_plain = _store_outputs(spec, experts, name, params, budget, device, dtype, streams(False), steps, cost)
        delayed, m_del = _store_outputs(spec, experts, name, params, budget, device, dtype, streams(True), steps, cost)
        _, m_host = _store_outputs(spec, host32, name, params, budget, torch.device("cpu"), torch.float32,
                                   HostStreams(), steps, cost)
        same = all(torch.equal(a, b) for a, b in zip(plain, delayed))
        counters = all(getattr(m_del, k) == getattr(m_host, k) == getattr(m_plain, k) for k in keys)
        err = max(rel_error(a, b) for a, b in zip(delayed, ref))
        rows.append({"policy": name, "params": params, "delayed_equals_plain": same, "counters_equal_host": counters,
                     "rel_err_vs_all_gpu": err, "promotions": m_del.promotions, "cpu_assignments": m_del.cpu_assignments,
                     "ok": same and counters and err < TOLERANCE[dtype]})
    return {"ok": all(r["ok"] for r in rows), "budget": budget, "delays_s": [delays.compute, delays.copy, delays.act],
            "policies": rows}


def check_copies(device: torch.device, quick: bool) -> dict[str, Any]:
    from runtime.copy_rates import copy_rates

    rates = copy_rates(device, nbytes=(16 if quick else 256) * 2**20)
    return {"ok": all(v > 0 for v in rates.values() if isinstance(v, (int, float))), **rates}


def check_host_expert(spec: ModelSpec, quick: bool) -> dict[str, Any]:
    from runtime.kernels import expert_mlp

    h, i = spec.hidden_size, spec.moe_intermediate_size
    rows_grid = (1, 32) if quick else (1, 32, 256)
    before = torch.get_num_threads()
    all_threads = max(1, os.cpu_count() or 1)
    out = []
    try:
        for dtype in (torch.bfloat16, torch.float32):
            g = torch.Generator().manual_seed(2)
            w = [torch.randn(i, h, generator=g).to(dtype), torch.randn(i, h, generator=g).to(dtype),
                 torch.randn(h, i, generator=g).to(dtype)]
            for threads in sorted({1, all_threads}):
                torch.set_num_threads(threads)
                for rows in rows_grid:
                    x = torch.randn(rows, h, generator=g).to(dtype)
                    expert_mlp(x, *w)  # warm-up
                    reps = 3 if quick else 7
                    times = []
                    for _ in range(reps):
                        t = time.perf_counter()
                        expert_mlp(x, *w)
                        times.append(time.perf_counter() - t)
                    sec = float(np.median(times))
                    wbytes = 3 * h * i * w[0].element_size()
                    out.append({"dtype": str(dtype).replace("torch.", ""), "threads": threads, "rows": rows,
                                "ms": 1e3 * sec, "gflops": 6 * rows * h * i / sec / 1e9, "weight_gbps": wbytes / sec / 1e9})
    finally:
        torch.set_num_threads(before)
    return {"ok": all(r["ms"] > 0 for r in out), "shape": [h, i], "runs": out}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog="python3 -m validate.gpu_smoke", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON to (re)write after every check")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--model", default=None, help="preset or config.json for the shapes (default llada2.0-mini on "
                   "cuda, llada2-tiny on cpu); the store check uses its first two MoE layers")
    p.add_argument("--quick", action="store_true", help="fewer cases (the CPU dry run)")
    p.add_argument("--max-seconds", type=float, default=None, help="skip the checks not started by then")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TideError(f"--device cuda requested but CUDA is not available (torch {torch.__version__})")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    full = ModelSpec.load(a.model or ("llada2.0-mini" if device.type == "cuda" else "llada2-tiny"))
    from runtime.config import RuntimeConfig

    spec = RuntimeConfig.load(a.model or full.name, num_layers=full.first_k_dense_replace + 2).spec
    rec = Recorder(Path(a.out), a.max_seconds)
    print(f"smoke checks on {a.device} ({spec.name} shapes, {str(dtype).replace('torch.', '')})", flush=True)
    rec.run("environment", lambda: {**environment(device, dtype), "cpu_flags": cpu_flags()})
    rec.run("grouped_mm", lambda: check_grouped_mm(spec, device, dtype, a.quick))
    rec.run("store_sync", lambda: check_store_sync(spec, device, dtype, a.quick))
    rec.run("copies", lambda: check_copies(device, a.quick))
    rec.run("host_expert", lambda: check_host_expert(full, a.quick))
    ok = rec.finish()
    print(f"wrote {a.out}: {'all checks passed' if ok else 'FAILED checks, see the JSON'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    run_cli(main)
