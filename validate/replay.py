"""Replay a measured run in the simulator: same trace, same policy and parameters, same budget, the profile
calibrated on the machine the run came from.

The model spec is rebuilt from the profile's model record (or ``--model``) with the run's number of MoE
layers and its dtype, and must reproduce the trace's config_hash; the cost model then refuses a profile
measured for another layer shape or dtype (``offload.hardware.HardwareProfile.check_model``).

Timing accounting:
  * two devices (CUDA): the engine's own schedule, simulated time = completion of the last work item,
    per-step time = differences of step end times (``sim.engine``).
  * one serial device (profile ``single_device``: runtime --device cpu): nothing overlaps there, so each
    work item the engine schedules is charged one after the other, and activation copies, which do not exist
    on one device, cost 0:
        step_s[s] = sum of the durations of step s's work items (wait intervals and act_d2h / act_h2d excluded)
    sim_time = sum_s step_s[s]. The engine's own makespan equals this for policies without prefetch or
    overlap_cpu, except for the activation copies (sim.engine proposal: honour ``cost.serial``).

Busy time per resource and seconds per kind of work (``offload.results.WHAT``) come from the engine's timeline,
with the same exclusions on a serial device.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from offload.cost import RooflineCostModel
from sim.engine import simulate
from offload.errors import TideError
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.results import RESOURCES, WHAT
from validate.runs import COUNTERS, Run

_ACT = (WHAT.index("act_d2h"), WHAT.index("act_h2d"))
_WAIT = WHAT.index("wait")


@dataclass(frozen=True, eq=False)
class Replay:
    run: Run
    sim_time_s: float
    tokens_per_s: float
    step_s: np.ndarray
    counters: dict[str, int]
    busy_s: dict[str, float]       # per resource (gpu, cpu, h2d, d2h)
    by_what: dict[str, float]      # seconds per kind of work
    serial: bool


def spec_for(run: Run, profile: HardwareProfile, model: ModelSpec | None = None) -> ModelSpec:
    """The run's model spec: the profile's (or ``model``'s) config with the trace's MoE layers and the run's dtype."""
    if model is not None:
        config = dict(model.raw_config)
    elif profile.model.get("config"):
        config = dict(profile.model["config"])
    else:
        raise TideError(f"profile {profile.name} records no model config: pass --model")
    first = int(config.get("first_k_dense_replace", 0))
    config.update(num_hidden_layers=first + run.trace.num_moe_layers, dtype=run.dtype)
    config.pop("torch_dtype", None)
    spec = ModelSpec.from_config(config, name=str(run.trace.header["model"].get("name", "model")))
    want = run.trace.header["model"].get("config_hash")
    if want != spec.config_hash:
        raise TideError(f"{run.source}: run {run.name} was recorded on a model of another shape (config hash {want}) "
                        f"than {profile.model.get('name', 'the given model')} with {run.trace.num_moe_layers} MoE "
                        f"layers ({spec.config_hash})")
    return spec


def replay(run: Run, profile: HardwareProfile, model: ModelSpec | None = None) -> Replay:
    spec = spec_for(run, profile, model)
    cost = RooflineCostModel(spec, profile)
    policy = make_policy(run.policy, **run.params)
    L = run.trace.num_moe_layers
    if run.layer_budget is not None:
        budget = np.asarray(run.layer_budget, dtype=np.int64)
    else:
        budget = np.full(L, run.budget if run.budget is not None else spec.num_experts, dtype=np.int64)
    res = simulate(run.trace, policy, cost, budget, shared_duplex=profile.link.shared_duplex, timeline=True,
                   trace_name=run.name)
    tl = res.timeline
    dur = tl.end - tl.start
    keep = tl.what != _WAIT
    serial = bool(profile.single_device)
    if serial:
        keep &= ~np.isin(tl.what, _ACT)
    w = np.where(keep, dur, 0.0)
    if serial:
        step_s = np.bincount(tl.step, weights=w, minlength=run.trace.num_steps)[: run.trace.num_steps]
        sim_time = float(step_s.sum())
    else:
        step_s, sim_time = np.asarray(res.step_times_s), float(res.sim_time_s)
    busy = {r: float(w[tl.resource == i].sum()) for i, r in enumerate(RESOURCES)}
    by_what = {name: float(w[tl.what == i].sum()) for i, name in enumerate(WHAT) if i != _WAIT}
    metrics: dict[str, Any] = res.metrics()
    return Replay(run=run, sim_time_s=sim_time, tokens_per_s=res.generated_tokens / sim_time if sim_time > 0 else 0.0,
                  step_s=step_s, counters={k: int(metrics[k]) for k in COUNTERS}, busy_s=busy, by_what=by_what,
                  serial=serial)
