"""``python -m runtime.bench``: runtime tokens/s of every policy side by side, in one process (asserts nothing).

CPU (default): random-weight ``llada2-tiny``. On a GPU, with torch and numpy only (a LLaDA2.0-mini shape with
random weights, 4 MoE layers, 128 of 256 experts per layer resident):

    python -m runtime.bench --device cuda --model llada2.0-mini --num-layers 5 --gpu-experts-per-layer 128 --out OUT

The weights are built once (:class:`runtime.session.Session`); each (policy, mode) runs a warm-up block, then
the timed generation, each on a fresh policy and store. Printed tokens/s count committed tokens per second of
wall time (what the simulator predicts); column cpu is the CPU share the timed run got (offload.cpu_share: below
0.8 the machine was busy, a warning on stderr says so, and validate.compare will not compare its timings). On CUDA the environment record adds pinned and pageable copy rates
in both directions (GB/s, 256 MiB copies: ``runtime.copy_rates``).

--out receives, rewritten after every run (a run cut short keeps the finished ones), ``runtime_results.json``
(environment, settings, one :class:`offload.results.RunRecord` per run) and ``runtime_traces.tar`` (each
timed run's routing trace, ``MODE__LABEL.npz``): what ``validate.compare`` reads.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from offload.atomic_io import atomic_write_bytes, atomic_write_text
from offload.cli import add_budget, add_hardware, budget_from, Parser
from offload.cpu_share import STARVED_BELOW, busy_warning, starved
from offload.errors import TideError, run_cli
from offload.policies import policy_from_text
from offload.results import RunRecord, to_json
from offload.trace import Trace
from offload.trace_io import write_trace
from runtime.config import RuntimeConfig
from runtime.diffusion import GenerationSettings, check_positions
from runtime.environment import environment
from runtime.session import Session, add_session_arguments, check_prompt_length, cost_model, random_prompt


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m runtime.bench", description=__doc__.split("\n\n")[0])
    add_session_arguments(p, gen_length=64, modes="many")
    add_budget(p, default="half the experts")
    p.add_argument("--policies", nargs="+", default=["all-gpu", "cpu-route", "fetch-lru", "tide(tau=1)", "tide(tau=4)"],
                   help="name or name(k=v, ...) each, e.g. tide(tau=2) riptide(prefetch=false)")
    add_hardware(p, what=": prices cost-aware policies (tide-opt, riptide) as the simulator's replay will")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory: runtime_results.json and "
                   "runtime_traces.tar, rewritten after every run (default: none written)")
    a = p.parse_args(argv)
    policies = [policy_from_text(text) for text in a.policies]  # a bad spec fails now, not after the build
    if a.hardware is not None and not any(p.uses_cost for p in policies):
        raise TideError("no policy here decides from a cost model: --hardware would be ignored")
    # settings and positions fail now too, before the weights are built
    check_prompt_length(a.prompt_length)
    cfg = RuntimeConfig.load(a.model, num_layers=a.num_layers)
    for mode in a.modes:
        s = GenerationSettings(gen_length=a.gen_length, block_length=a.block_length, steps=a.steps, mode=mode)
        s.check()
        check_positions(cfg, a.prompt_length, s)
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    t0 = time.perf_counter()
    session = Session.from_args(a)
    spec, device, dtype = session.cfg.spec, session.device, session.dtype
    layer_budget = budget_from(a, spec, default=spec.num_experts // 2)
    budget = int(layer_budget.max())
    # cost-aware policies decide from the cost model: the runtime's must be the replay's
    cost = None if a.hardware is None else cost_model(session.cfg, a.hardware, dtype)
    print(f"{spec.name}: {spec.num_moe_layers} MoE layers x {spec.num_experts} experts, budget {budget}, {dtype}, "
          f"{device}; weights built in {time.perf_counter() - t0:.1f} s")
    env = environment(device)
    if device.type == "cuda":
        from runtime.copy_rates import copy_rates

        env.update(copy_rates(device))
        print(f"copies (GB/s, 256 MiB): H2D pinned {env['h2d_pinned_gbps']:.1f}, pageable {env['h2d_pageable_gbps']:.1f};"
              f" D2H pinned {env['d2h_pinned_gbps']:.1f}, pageable {env['d2h_pageable_gbps']:.1f}")
    prompt = random_prompt(session.cfg, a.prompt_length, a.seed, device)
    runs: list[RunRecord] = []
    traces: dict[str, Trace] = {}
    print(f"{'policy':<16}{'mode':<18}{'tokens/s':>10}{'fwd':>6}{'hit':>7}{'H2D GB':>9}{'D2H GB':>9}{'promo':>8}{'ms/fwd':>9}{'cpu':>6}")
    for mode in a.modes:
        timed = GenerationSettings(gen_length=a.gen_length, block_length=a.block_length, steps=a.steps, mode=mode,
                                   stop_at_eos=False, seed=a.seed)
        warm = GenerationSettings(gen_length=a.block_length, block_length=a.block_length, steps=a.steps, mode=mode,
                                  stop_at_eos=False)
        for text in a.policies:
            session.run(policy_from_text(text), layer_budget, prompt, warm, cost=cost)  # kernels, caches warm
            # a fresh policy (state, placement) and store for the timed run
            res, rec = session.run(policy_from_text(text), layer_budget, prompt, timed, cost=cost)
            runs.append(rec)
            traces[f"{mode}__{rec.label}.npz"] = res.trace
            c = rec.counters
            print(f"{rec.label:<16}{mode:<18}{rec.tokens_per_s:>10.2f}{rec.forwards:>6}{c.hit_ratio:>7.3f}"
                  f"{c.h2d_bytes / 1e9:>9.3f}{c.d2h_bytes / 1e9:>9.3f}{c.promotions:>8}{1e3 * np.mean(rec.step_times_s):>9.2f}"
                  f"{'-' if rec.cpu_share is None else f'{rec.cpu_share:.2f}':>6}", flush=True)
            warning = busy_warning(rec.cpu_share, f"{rec.label} [{mode}]")
            if warning:
                print(warning, file=sys.stderr, flush=True)
            if a.out:
                _write(Path(a.out), env, a, spec.summary(), runs, traces)
    if a.out:
        print(f"wrote {Path(a.out) / 'runtime_results.json'} and {Path(a.out) / 'runtime_traces.tar'}")
    busy = [f"{r.label} [{r.mode}]" for r in runs if starved(r.cpu_share)]
    if busy:
        print(f"warning: {len(busy)} of {len(runs)} runs got less than {STARVED_BELOW:.0%} of the CPU (column cpu): "
              f"the machine was busy, their timings are not comparable with each other or a simulation: "
              f"{', '.join(busy)}", file=sys.stderr)
    return 0


def _write(od: Path, env: dict, a: argparse.Namespace, model: dict, runs: list, traces: dict[str, Trace]) -> None:
    out = {"environment": env, "settings": {k: v for k, v in vars(a).items() if k != "out"},
           "model": model, "runs": [to_json(r) for r in runs]}
    od.mkdir(parents=True, exist_ok=True)
    # the traces first: a results file never names a run whose trace is missing
    atomic_write_bytes(od / "runtime_traces.tar", lambda f: _tar(f, traces, od))
    atomic_write_text(od / "runtime_results.json", json.dumps(out, indent=1) + "\n")


def _tar(f: BinaryIO, traces: dict[str, Trace], tmpdir: Path) -> None:
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
    run_cli(main)
