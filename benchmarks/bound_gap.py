"""How far each policy is from the LP lower bound (sim.bound) on one setting: measured figures only.

Default: the paper setting, llada2.0-mini on the h100-pcie5 preset, B = 128 experts per layer, prefix-recompute,
the synthetic trace sim.explore uses by default (seed 0, gen length 1024, prompt 128). Prints the bound's
tokens/s (an upper limit on any policy's), then every registered policy's tokens/s and policy / bound.

    python benchmarks/bound_gap.py [--model llada2.0-mini] [--hardware h100-pcie5] [--budget 128]
        [--mode prefix-recompute] [--gen-length 1024] [--prompt-length 128] [--seed 0] [--dram-gbps X]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from offload.cli import DEFAULT_PROMPT_LENGTH  # noqa: E402
from offload.cost import RooflineCostModel  # noqa: E402
from offload.errors import run_cli  # noqa: E402
from offload.hardware import HardwareProfile  # noqa: E402
from offload.model_spec import ModelSpec  # noqa: E402
from offload.policies import POLICIES, make_policy  # noqa: E402
from sim.bound import lower_bound  # noqa: E402
from sim.engine import simulate  # noqa: E402
from traces.synthetic import default_config, generate  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llada2.0-mini")
    p.add_argument("--hardware", default="h100-pcie5")
    p.add_argument("--budget", type=int, default=128)
    p.add_argument("--mode", default="prefix-recompute")
    p.add_argument("--gen-length", type=int, default=1024)
    p.add_argument("--prompt-length", type=int, default=DEFAULT_PROMPT_LENGTH)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dram-gbps", type=float, default=None, help="bound host DRAM too (GB/s); the engine may not")
    a = p.parse_args(argv)
    spec, hw = ModelSpec.load(a.model), HardwareProfile.load(a.hardware)
    cost = RooflineCostModel(spec, hw)
    trace = generate(spec, default_config(spec, a.mode, gen_length=a.gen_length, prompt_length=a.prompt_length,
                                          seed=a.seed))
    t0 = time.perf_counter()
    b = lower_bound(trace, cost, a.budget, dram_bytes_per_s=None if a.dram_gbps is None else a.dram_gbps * 1e9)
    wall = time.perf_counter() - t0
    full = lower_bound(trace, cost, None)
    print(f"{a.model} on {a.hardware}, B = {a.budget}, {a.mode}: {trace.num_steps} steps, "
          f"{trace.generated_tokens} tokens")
    print(f"bound: {b.tokens_per_s:.2f} tok/s ({b.seconds:.4f} s; binding {', '.join(b.binding)}; "
          f"GPU {b.gpu_s:.4f} s of which mandatory {b.mandatory_gpu_s:.4f}, CPU {b.cpu_s:.4f}, H2D {b.h2d_s:.4f}, "
          f"D2H {b.d2h_s:.4f}; {b.streamed_experts:.0f} weight copies; {b.solver.variables} LP variables, "
          f"{wall:.3f} s)")
    print(f"{'policy':<12} {'tok/s':>9} {'policy/bound':>13} {'sim s':>9}")
    for name in POLICIES:
        policy = make_policy(name)
        r = simulate(trace, policy, cost, a.budget, shared_duplex=hw.link.shared_duplex)
        ref = b if policy.needs_budget else full  # all-gpu runs with every expert resident whatever B is
        note = "" if policy.needs_budget else "  (all experts resident: vs the B = E bound)"
        print(f"{name:<12} {r.tokens_per_s:9.2f} {r.tokens_per_s / ref.tokens_per_s:13.3f} {r.sim_time_s:9.4f}{note}")
    return 0


if __name__ == "__main__":
    run_cli(main)
