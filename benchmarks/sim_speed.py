"""How fast the simulator replays a trace: wall time per replay, simulated events per second.

Generates one synthetic LLaDA2.0-flash trace (prefix-recompute, gen_length 1024, block 32 by default) with
``traces.synthetic``, then replays it under all-gpu, cpu-route, fetch-lru and tide(tau=4) with
``sim.engine.simulate`` on the h100-pcie5 profile at a budget of 128 experts per layer, ``--repeat`` times each,
and prints the median wall time. Target: under 2 s per replay on one core. Prints; asserts nothing.

    python benchmarks/sim_speed.py [--repeat 3] [--gpu-experts-per-layer 128] [--no-pin]
"""
from __future__ import annotations

import os

# one core means one core: no BLAS/OpenMP helper threads (set before numpy loads with the sim modules)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import dataclasses  # noqa: E402
import inspect  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without installing

from benchmarks._checks import at_least  # noqa: E402
from offload.budget import resolve_budget  # noqa: E402
from offload.cli import Parser  # noqa: E402
from offload.cost import RooflineCostModel  # noqa: E402
from offload.errors import TideError, run_cli  # noqa: E402
from offload.hardware import HardwareProfile  # noqa: E402
from offload.model_spec import ModelSpec  # noqa: E402
from offload.policies import make_policy  # noqa: E402
from offload.trace import DIFFUSION_MODES  # noqa: E402
from sim.engine import simulate  # noqa: E402

TARGET_S = 2.0
POLICIES = (("all-gpu", {}), ("cpu-route", {}), ("fetch-lru", {}), ("tide", {"tau": 4}))


def _config(default_config, model, mode: str, gen_length: int, block_length: int, seed: int):
    """The generator's default config for these settings, with the block length set however the API takes it."""
    params = inspect.signature(default_config).parameters
    takes = "block_length" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    kw = {"gen_length": gen_length, "seed": seed}
    if takes:
        kw["block_length"] = block_length
    cfg = default_config(model, mode, **kw)
    if not takes:
        if dataclasses.is_dataclass(cfg) and any(f.name == "block_length" for f in dataclasses.fields(cfg)):
            cfg = dataclasses.replace(cfg, block_length=block_length)
        elif isinstance(cfg, dict) and "block_length" in cfg:
            cfg = {**cfg, "block_length": block_length}
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llada2.0-flash")
    ap.add_argument("--hardware", default="h100-pcie5")
    ap.add_argument("--mode", default="prefix-recompute", choices=DIFFUSION_MODES)
    ap.add_argument("--gen-length", type=int, default=1024)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--gpu-experts-per-layer", type=int, default=128, help="budget: routed experts resident per MoE layer")
    ap.add_argument("--repeat", type=int, default=3, help="replays per policy; the median is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU core")
    args = ap.parse_args(argv)
    # every value checked before the pinning and the trace generation, so that a bad one costs nothing
    for option, value in (("--gen-length", args.gen_length), ("--block-length", args.block_length),
                          ("--repeat", args.repeat)):
        at_least(option, value)
    at_least("--seed", args.seed, 0)
    model = ModelSpec.load(args.model)
    hw = HardwareProfile.load(args.hardware)
    try:  # 1..E experts per layer (the simulator refuses others, but only after generating the trace)
        resolve_budget(model, None, experts_per_layer=args.gpu_experts_per_layer)
    except TideError as exc:
        raise TideError(f"--gpu-experts-per-layer: {exc}") from None

    from traces.synthetic import default_config, generate  # imported late: a sibling module, may be missing

    cfg = _config(default_config, model, args.mode, args.gen_length, args.block_length, args.seed)

    pinned = "no"
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        pinned = f"core {core}"

    cost = RooflineCostModel(model, hw)
    t0 = time.perf_counter()
    trace = generate(model, cfg)
    gen_s = time.perf_counter() - t0
    block = trace.header["generation"].get("block_length")
    print(f"python {platform.python_version()} on {platform.machine()}, pinned to one core: {pinned}")
    print(f"trace: {args.model} {trace.mode}, gen_length {args.gen_length}, block {block}: {trace.num_steps} steps x "
          f"{trace.num_moe_layers} MoE layers x {trace.num_experts} experts, top-{trace.top_k}, "
          f"{trace.generated_tokens} tokens; generated in {gen_s:.2f} s")
    print(f"hardware {hw.name}, budget {args.gpu_experts_per_layer} experts/layer, median of {args.repeat} replays per policy")
    print(f"target: under {TARGET_S:g} s per replay on one core\n")
    head = f"{'policy':<16}{'wall s (median)':>16}{'min s':>9}{'events':>11}{'events/s':>12}{'sim tokens/s':>14}" \
           f"{'sim time s':>12}  target"
    print(head)
    print("-" * len(head))
    worst = 0.0
    for name, params in POLICIES:
        walls, result = [], None
        for _ in range(args.repeat):
            policy = make_policy(name, **params)
            t0 = time.perf_counter()
            result = simulate(trace, policy, cost, budget=args.gpu_experts_per_layer, shared_duplex=hw.link.shared_duplex,
                              trace_name=trace.mode)
            walls.append(time.perf_counter() - t0)
        med = statistics.median(walls)
        worst = max(worst, med)
        print(f"{result.label:<16}{med:>16.3f}{min(walls):>9.3f}{result.events:>11,d}{result.events / med:>12,.0f}"
              f"{result.tokens_per_s:>14.2f}{result.sim_time_s:>12.2f}  {'ok' if med < TARGET_S else 'OVER'}")
    print(f"\nslowest median replay {worst:.3f} s: {'within' if worst < TARGET_S else 'OVER'} the {TARGET_S:g} s target")
    return 0


if __name__ == "__main__":
    run_cli(main)
