"""Measure how long a policy's ``decide()`` takes on the host, per (step, MoE layer), by replaying a trace.

The engine charges an executor's ``decide_us`` table (``offload.executor``), else a calibrated hardware profile's
measured ``decide_us`` (``validate.bench_decide``, which drives the policy without simpy through
``offload.policies.drive``), on its host thread; this gives the figures for an executor's table. The replay is the simulator's own (``sim.engine.simulate`` with the default executor), so the
policy sees the views, residency and cost model it sees in a simulated or runtime run; only the wall time of
each ``decide`` call is kept (``time.perf_counter_ns`` around it).

    python -m sim.decide_time --policies riptide tide-opt --gen-length 256

prints microseconds per decide() (median, mean, p90) for each policy; :func:`measure_decide` returns them.
Timings are of this machine's Python: run on the host whose figures the executor should carry.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from offload.policies import make_policy, policy_from_text
from offload.policies.base import Policy


@dataclass(frozen=True)
class DecideTime:
    policy: str
    calls: int
    median_us: float
    mean_us: float
    p90_us: float


def measure_decide(trace: Any, policy: Policy, cost: Any, budget: Any = None) -> DecideTime:
    """Replay ``trace`` under ``policy`` and time every ``decide`` call (the instance's method is wrapped)."""
    from sim.engine import simulate

    times: list[int] = []
    inner = policy.decide

    def timed(view: Any) -> Any:
        t0 = time.perf_counter_ns()
        out = inner(view)
        times.append(time.perf_counter_ns() - t0)
        return out

    policy.decide = timed  # type: ignore[method-assign]  # the engine calls self.policy.decide(view)
    try:
        simulate(trace, policy, cost, budget)
    finally:
        del policy.decide  # back to the class's method
    us = np.asarray(times, dtype=np.float64) / 1e3
    if us.size == 0:
        return DecideTime(policy.name, 0, 0.0, 0.0, 0.0)
    return DecideTime(policy.name, int(us.size), float(np.median(us)), float(us.mean()), float(np.percentile(us, 90)))


def main(argv: Sequence[str] | None = None) -> int:
    from offload.cli import Parser, add_budget, add_hardware, add_model, budget_from
    from offload.cost import RooflineCostModel
    from offload.hardware import HardwareProfile
    from offload.model_spec import ModelSpec
    from traces.synthetic import default_config, generate

    p = Parser(prog="python -m sim.decide_time", description=__doc__.split("\n\n")[0])
    add_model(p, default="llada2.0-mini")
    add_hardware(p, default="h100-pcie5")
    add_budget(p, default="128")
    p.add_argument("--policies", nargs="+", default=["cpu-route", "static", "fetch-lru", "tide(tau=4)", "tide-opt", "riptide"])
    p.add_argument("--mode", default="prefix-recompute")
    p.add_argument("--gen-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    model, hw = ModelSpec.load(a.model), HardwareProfile.load(a.hardware)
    budget = budget_from(a, model, default=min(128, model.num_experts), hw=hw)
    cost = RooflineCostModel(model, hw)
    trace = generate(model, default_config(model, a.mode, gen_length=a.gen_length, seed=a.seed))
    print(f"{'policy':<16}{'calls':>8}{'median us':>11}{'mean us':>10}{'p90 us':>10}")
    for text in a.policies:
        policy_from_text(text)
        from offload.policies import parse_policy

        name, params = parse_policy(text)
        d = measure_decide(trace, make_policy(name, **params), cost, budget)
        print(f"{text:<16}{d.calls:>8}{d.median_us:>11.1f}{d.mean_us:>10.1f}{d.p90_us:>10.1f}")
    return 0


if __name__ == "__main__":
    from offload.errors import run_cli

    run_cli(main)
