"""Runtime throughput of every policy side by side, in one process on one machine (prints; asserts nothing).

CPU (default): the random-weight ``llada2-tiny`` preset.
GPU (H100 class), needs only torch (+ numpy) and this repository:

    python benchmarks/runtime_policies.py --device cuda --model llada2.0-mini --num-layers 5 --budget 128 \
        --gen-length 256 --out-dir $OUT

(a LLaDA2.0-mini shape with random weights and 4 MoE layers, 128 of 256 experts per layer resident).
Weights are built once; each (policy, mode) gets a fresh expert store and one warm-up block before the timed
generation. On CUDA it also measures pinned and pageable copy rates in both directions (GB/s, 1e9 B/s; CUDA
events over 256 MiB copies of random bytes, ``validate.bench_copies.copy_rates``).

Writes to --out-dir: ``runtime_results.json`` (environment, settings, per run: tokens/s, counters, forward
times ``step_times_s`` and whole-step times ``step_wall_s`` that sum to ``wall_s``) and ``runtime_traces.tar``
(the routing trace of every timed run, for ``validate.compare``), rewritten after every run.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from runtime.checkpoint import random_weights  # noqa: E402
from runtime.config import RuntimeConfig  # noqa: E402
from runtime.diffusion import GenerationSettings, generate  # noqa: E402
from runtime.environment import environment  # noqa: E402
from runtime.expert_store import ExpertStore  # noqa: E402
from runtime.model import LLaDA2MoE  # noqa: E402
from offload.policies import make_policy  # noqa: E402
from offload.atomic_io import atomic_write_bytes, atomic_write_text
from offload.trace_io import write_trace  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_policy(text: str) -> tuple[str, dict]:
    """``tide:4`` -> ("tide", {"tau": 4}); ``cpu-route`` -> ("cpu-route", {})."""
    name, _, tau = text.partition(":")
    return name, ({"tau": int(tau)} if tau else {})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--model", default="llada2-tiny")
    p.add_argument("--num-layers", type=int, default=None)
    p.add_argument("--budget", type=int, default=None, help="experts per layer (default: half)")
    p.add_argument("--policies", nargs="+", default=["all-gpu", "cpu-route", "fetch-lru", "tide:1", "tide:4"])
    p.add_argument("--modes", nargs="+", default=["prefix-recompute", "block-cache"])
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--prompt-length", type=int, default=32)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--dtype", default=None, choices=tuple(DTYPES))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--profile", default=None,
                   help="calibrated hardware profile for cost-aware policies (the simulator's replay gives them the same)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = DTYPES[a.dtype or ("bfloat16" if device.type == "cuda" else "float32")]
    cfg = RuntimeConfig.load(a.model, num_layers=a.num_layers)
    spec = cfg.spec
    budget = a.budget or spec.num_experts // 2
    cost = None
    if a.profile:  # cost-aware policies decide from the cost model: the runtime's must be the replay's
        from offload.cost import RooflineCostModel
        from offload.hardware import HardwareProfile

        elem = torch.empty(0, dtype=dtype).element_size()
        cost = RooflineCostModel(dataclasses.replace(spec, dtype_bytes=elem), HardwareProfile.load(a.profile))
    t0 = time.perf_counter()
    state, experts = random_weights(cfg, a.seed, device=device, dtype=dtype)
    host = [{"gate": l.gate, "up": l.up, "down": l.down} for l in experts.layers]
    model = LLaDA2MoE.from_state(cfg, state, None, device=device, dtype=dtype)
    del state
    print(f"{spec.name}: {spec.num_moe_layers} MoE layers x {spec.num_experts} experts, budget {budget}, {dtype}, "
          f"{device}; weights built in {time.perf_counter() - t0:.1f} s")
    env = environment(device)
    if device.type == "cuda":
        from validate.bench_copies import copy_rates  # torch + numpy only, as this script; random-filled buffers

        env.update(copy_rates(device))
        print(f"copies (GB/s, 256 MiB): H2D pinned {env['h2d_pinned_gbps']:.1f}, pageable {env['h2d_pageable_gbps']:.1f};"
              f" D2H pinned {env['d2h_pinned_gbps']:.1f}, pageable {env['d2h_pageable_gbps']:.1f}")
    g = torch.Generator().manual_seed(a.seed)
    prompt = torch.randint(0, min(spec.vocab_size, 150000), (a.prompt_length,), generator=g).to(device)
    runs, traces = [], {}
    print(f"{'policy':<16}{'mode':<18}{'tokens/s':>10}{'fwd':>6}{'hit':>7}{'H2D GB':>9}{'D2H GB':>9}{'promo':>8}{'ms/fwd':>9}")
    for mode in a.modes:
        for text in a.policies:
            name, params = parse_policy(text)
            policy = make_policy(name, **params)
            store = ExpertStore(spec, host, policy, None if not policy.needs_budget else np.full(spec.num_moe_layers, budget),
                                device=device, dtype=dtype, block_length=a.block_length, mode=mode, cost=cost)
            model.set_executor(store)
            settings = GenerationSettings(gen_length=a.gen_length, block_length=a.block_length, steps=a.steps, mode=mode,
                                          eos_early_stop=False, seed=a.seed)
            warm = GenerationSettings(gen_length=a.block_length, block_length=a.block_length, steps=a.steps, mode=mode,
                                      eos_early_stop=False)
            generate(model, store, cfg, prompt, warm)  # kernels, allocator, caches warm
            policy = make_policy(name, **params)  # fresh policy state and placement for the timed run
            store = ExpertStore(spec, host, policy, None if not policy.needs_budget else np.full(spec.num_moe_layers, budget),
                                device=device, dtype=dtype, block_length=a.block_length, mode=mode, cost=cost)
            model.set_executor(store)
            res = generate(model, store, cfg, prompt, settings)
            m = store.metrics()
            committed = res.trace.generated_tokens
            row = {"policy": name, "params": params, "label": policy.label(), "mode": mode, "budget": budget,
                   "device": device.type, "dtype": str(dtype).replace("torch.", ""),
                   "tokens_per_s": committed / res.wall_s, "wall_s": res.wall_s, "generated_tokens": committed,
                   "forwards": res.forwards, "step_times_s": res.step_times_s.tolist(),
                   "step_wall_s": np.asarray(res.extra.get("step_wall_s", [])).tolist(),
                   "cpu_s": res.extra.get("cpu_s"), "step_cpu_s": np.asarray(res.extra.get("step_cpu_s", [])).tolist(),
                   **{k: m[k] for k in ("h2d_bytes", "d2h_bytes", "hit_ratio", "promotions", "demotions",
                                        "cpu_assignments", "gpu_assignments", "h2d_weight_bytes")}}
            runs.append(row)
            traces[f"{mode}__{policy.label()}.npz"] = res.trace
            print(f"{policy.label():<16}{mode:<18}{row['tokens_per_s']:>10.2f}{res.forwards:>6}{m['hit_ratio']:>7.3f}"
                  f"{m['h2d_bytes'] / 1e9:>9.3f}{m['d2h_bytes'] / 1e9:>9.3f}{m['promotions']:>8}"
                  f"{1e3 * float(np.mean(res.step_times_s)):>9.2f}")
            if a.out_dir:  # after every run: a run cut short by a time limit still leaves the finished ones
                _write(Path(a.out_dir), env, a, spec, runs, traces)
    if a.out_dir:
        print(f"wrote {Path(a.out_dir) / 'runtime_results.json'} and {Path(a.out_dir) / 'runtime_traces.tar'}")


def _write(od: Path, env: dict, a: argparse.Namespace, spec, runs: list, traces: dict) -> None:
    out = {"environment": env, "settings": {k: v for k, v in vars(a).items() if k != "out_dir"},
           "model": spec.summary(), "runs": runs}
    od.mkdir(parents=True, exist_ok=True)
    # the traces first: a results file never names a run whose trace is missing
    atomic_write_bytes(od / "runtime_traces.tar", lambda f: _tar(f, traces, od))
    atomic_write_text(od / "runtime_results.json", json.dumps(out, indent=1) + "\n")


def _tar(f, traces: dict, tmpdir: Path) -> None:
    with tarfile.open(fileobj=f, mode="w") as tar:
        for name, trace in traces.items():
            tmp = tmpdir / f".{name}"
            write_trace(trace, tmp)
            data = tmp.read_bytes()
            tmp.unlink()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
