"""The golden grid: simulated rows of a fixed grid of short traces, recorded before a refactor and reproduced after.

Grid: every policy (defaults) x {prefix-recompute, block-cache} on llada2-tiny, llada2.0-mini and llada2.0-flash,
and autoregressive decode on mixtral-8x7b, x both executor presets x overlapped and serial x 3 budgets
(E/8, E/4, E/2), on the H100 preset. Each row keeps what a refactor must not change: the simulated time, every
per-step time, the busy time of each resource, the counters, the mandatory-GPU floor and the per-layer
maximum residency. Events and wall time are not kept (the engine's speed work changes them on purpose).

    python tests/golden/grid.py           rewrite tests/golden/rows.json (only for a named, deliberate change)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

HERE = Path(__file__).parent
ROWS = HERE / "rows.json"
MODELS = (
    ("llada2-tiny", ("prefix-recompute", "block-cache")),
    ("llada2.0-mini", ("prefix-recompute", "block-cache")),
    ("llada2.0-flash", ("prefix-recompute", "block-cache")),
    ("mixtral-8x7b", ("autoregressive",)),
)
POLICIES = ("all-gpu", "cpu-route", "static", "fetch-lru", "tide", "tide-opt", "oracle", "riptide")
EXECUTORS = ("tide-moe", "tide-reference")
HARDWARE = "h100-pcie5"


def trace_of(model: Any, mode: str) -> Any:
    from traces.synthetic import default_config, generate
    from traces.synthetic_ar import default_ar_config, synthetic_ar_trace

    if mode == "autoregressive":
        return synthetic_ar_trace(model, default_ar_config(model, gen_length=24, prompt_length=16, seed=0))
    return generate(
        model,
        default_config(model, mode, gen_length=64, block_length=16, prompt_length=16, steps=8, seed=0, eos_stop=False),
    )


def cases() -> Iterator[tuple[str, str, str, str, bool, int]]:
    from offload.model_spec import ModelSpec

    for name, modes in MODELS:
        E = ModelSpec.load(name).num_experts
        for mode in modes:
            for policy in POLICIES:
                for executor in EXECUTORS:
                    for serial in (False, True):
                        for budget in (max(1, E // 8), E // 4, E // 2):
                            yield name, mode, policy, executor, serial, budget


def key(c: tuple) -> str:
    name, mode, policy, executor, serial, budget = c
    return f"{name}|{mode}|{policy}|{executor}|{'serial' if serial else 'overlap'}|B{budget}"


def row(result: Any, mandatory_gpu_s: float) -> dict[str, Any]:
    st = np.asarray(result.step_times_s, dtype=np.float64)
    return {
        "sim_time_s": result.sim_time_s,
        "step_times_s": st.tolist(),
        "busy_s": {k: float(v) for k, v in result.busy_s.items()},
        "counters": {k: int(v) for k, v in asdict(result.counters).items()},
        "mandatory_gpu_s": float(mandatory_gpu_s),
        "max_resident": np.asarray(result.max_resident).tolist(),
        "tau": result.tau,
        "steps": int(result.steps),
    }


def compute(select: Any = None) -> dict[str, dict[str, Any]]:
    from offload.cost import RooflineCostModel
    from offload.executor import ExecutorProfile
    from offload.hardware import HardwareProfile
    from offload.model_spec import ModelSpec
    from offload.policies import make_policy
    from sim.engine import mandatory_gpu_time, simulate

    hw = HardwareProfile.load(HARDWARE)
    out: dict[str, dict[str, Any]] = {}
    traces: dict[tuple[str, str], Any] = {}
    for c in cases():
        if select is not None and not select(c):
            continue
        name, mode, policy, executor, serial, budget = c
        model = ModelSpec.load(name)
        if (name, mode) not in traces:
            traces[(name, mode)] = trace_of(model, mode)
        cost = RooflineCostModel(model, hw)
        r = simulate(traces[(name, mode)], make_policy(policy), cost, budget, serial=serial, executor=executor)
        out[key(c)] = row(r, mandatory_gpu_time(traces[(name, mode)], cost, ExecutorProfile.load(executor)))
    return out


def trace_digest(name: str, mode: str) -> str:
    from offload.model_spec import ModelSpec

    t = trace_of(ModelSpec.load(name), mode)
    h = hashlib.sha256(np.ascontiguousarray(t.counts).tobytes())
    for a in (t.tokens_forwarded, t.context_tokens, t.block, t.step_in_block, t.kind):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def main() -> int:
    from offload.atomic_io import atomic_write_text

    doc = {
        "about": __doc__.split("\n\n")[0],
        "traces": {f"{n}|{m}": trace_digest(n, m) for n, modes in MODELS for m in modes},
        "rows": compute(),
    }
    atomic_write_text(ROWS, json.dumps(doc, indent=0, sort_keys=True) + "\n")
    print(f"wrote {len(doc['rows'])} rows to {ROWS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
