"""Assemble a hardware profile (``offload.hardware`` format) from measured tables.

The tables are what the simulator uses. The scalar sections every profile must have (gpu, cpu, link) are
derived from the same tables, for tools that read them (budget checks, roofline fallbacks):

  gpu.matmul_tflops = 6 n h i / t_gpu(n) at the largest measured n     (TFLOP/s, 1e12)
  gpu.hbm_gbps      = expert_bytes / t_gpu(1)                          (GB/s, 1e9; a lower bound)
  gpu.kernel_overhead_us = gpu_expert.call_seconds / 3                  (3 launches per expert batch)
  cpu.*             likewise from cpu_expert;  cpu.threads = torch threads at calibration
  link.h2d_gbps     = bytes / t at the largest copy_h2d point;  link.d2h_gbps likewise
  link.latency_us   = t of the smallest single copy
  link.shared_duplex = device=cpu, or copy_duplex ratio > 1.5 (see validate.bench_copies)
  gpu.memory_gib    = the CUDA device's memory, or the host's on device=cpu

``single_device`` is true on device=cpu. ``model`` records the model shape and dtype the tables hold for.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from offload.hardware import FORMAT, HardwareProfile, model_record
from runtime.environment import host_memory_gib
from validate.rig import Rig
from validate.tables import Measured

_FLOOR = 1e-6  # rates must be positive in the format; a degenerate measurement must not make them 0


def _rate(num: float, secs: float) -> float:
    return max(_FLOOR, num / max(secs, 1e-12))


def build_profile(rig: Rig, tables: Mapping[str, Measured], step: Mapping[str, float], env: Mapping[str, Any],
                  calibration: Mapping[str, Any], duplex_ratio: float | None) -> dict[str, Any]:
    spec, dev = rig.spec, rig.device
    cuda = dev.type == "cuda"
    h, i = spec.hidden_size, spec.moe_intermediate_size
    eb = rig.store.expert_bytes
    g, c = tables["gpu_expert"], tables["cpu_expert"]
    h2d, d2h = tables["copy_h2d"], tables["copy_d2h"]
    shared = (not cuda) or (duplex_ratio is not None and duplex_ratio > 1.5)
    single_times = [s for x, s in zip(h2d.x, h2d.seconds) if x < eb] or list(h2d.seconds[:1])
    gpu_name = env.get("gpu") if cuda else f"host CPU as the device (--device cpu): {env.get('cpu')}"
    memory = torch.cuda.get_device_properties(dev).total_memory / 2**30 if cuda else host_memory_gib()
    elem = eb // (3 * h * i)
    d: dict[str, Any] = {
        "format": FORMAT,
        "name": f"calibrated-{dev.type}-{rig.full_spec.name}",
        "description": (f"Calibrated by micro-benchmarks (python -m validate.calibrate) on {env.get('host')} at "
                        f"{env.get('date')}: {gpu_name}; {spec.hidden_size}-wide {rig.full_spec.name} layers in "
                        f"{env.get('dtype')}, {env.get('threads')} torch threads."),
        "sources": ["validate.calibrate: medians of repeated micro-benchmarks of the runtime's own kernels, modules "
                    "and copy paths; no end-to-end run was used"],
        "gpu": {"name": str(gpu_name), "memory_gib": float(memory),
                "matmul_tflops": _rate(6 * g.x[-1] * h * i, g.seconds[-1]) / 1e12,
                "hbm_gbps": _rate(eb, g.seconds[0]) / 1e9,
                "kernel_overhead_us": float((g.call or 0.0) / 3 * 1e6)},
        "cpu": {"name": str(env.get("cpu")), "threads": int(torch.get_num_threads()),
                "matmul_tflops": _rate(6 * c.x[-1] * h * i, c.seconds[-1]) / 1e12,
                "dram_gbps": _rate(eb, c.seconds[0]) / 1e9, "expert_overhead_us": 0.0},
        "link": {"name": "PCIe (measured)" if cuda else "memcpy (device=cpu)",
                 "h2d_gbps": _rate(h2d.x[-1], h2d.seconds[-1]) / 1e9, "d2h_gbps": _rate(d2h.x[-1], d2h.seconds[-1]) / 1e9,
                 "latency_us": float(min(single_times) * 1e6), "shared_duplex": bool(shared)},
        "step_overhead_us": float(step["step_overhead_s"] * 1e6),
        "tables": {name: t.to_json() for name, t in tables.items()},
        "single_device": not cuda,
        "model": model_record(rig.full_spec, elem),
        "calibration": dict(calibration),
        "environment": dict(env),
    }
    HardwareProfile.from_dict(d, origin="calibrated profile")  # the format's own checks, before anything is written
    return d


def holdout_summary(tables: Mapping[str, Measured]) -> list[tuple[str, int, int, float | None, float | None]]:
    """(table, grid points, held-out points, median |rel err|, max |rel err|) per table."""
    out = []
    for name, t in tables.items():
        n = len(t.x) * (len(t.y) if t.y is not None else 1)
        ho = t.holdout or {}
        errs = np.abs(np.asarray(ho.get("rel_error", []), float))
        out.append((name, n, int(errs.size), float(np.median(errs)) if errs.size else None,
                    float(errs.max()) if errs.size else None))
    return out
