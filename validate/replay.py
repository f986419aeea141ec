"""Replay a measured run in the simulator: same trace, same policy and parameters, same budget, the profile
calibrated on the machine the run came from and the executor calibrated with it (``offload.executor.beside``;
None: the ``tide-moe`` preset).

The model spec is rebuilt from the profile's model record (or ``--model``) with the run's number of MoE
layers and its dtype, and must reproduce the trace's config_hash; the cost model then refuses a profile
measured for another layer shape or dtype (``offload.hardware.HardwareProfile.check_model``).

Timing: the engine's own schedule (``sim.engine``). On a single-device profile (runtime --device cpu) the cost
model is ``serial``, so the engine runs in its serial mode: every work item one after the other, activation
copies 0 s. Busy time per resource and seconds per kind of work (``offload.results.WHAT``) come from the
engine's timeline, wait intervals excluded.
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from offload.cost import RooflineCostModel
from sim.engine import simulate
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import MODEL_PRESETS, ModelSpec
from offload.policies import make_policy
from offload.results import WHAT, SimResult
from validate.runs import Run

_WAIT = WHAT.index("wait")


@dataclass(frozen=True, eq=False)
class Replay:
    run: Run
    result: SimResult              # the simulator's run of the same trace, policy and budget
    by_what: dict[str, float]      # seconds per kind of work
    serial: bool


def spec_for(run: Run, profile: HardwareProfile, model: ModelSpec | None = None) -> ModelSpec:
    """The run's model spec: the profile's (or ``model``'s) config with the trace's MoE layers and the run's dtype."""
    name = str(run.trace.header["model"].get("name", ""))
    if model is not None:
        config = dict(model.raw_config)
    elif profile.model.get("config"):
        config = dict(profile.model["config"])
    elif name in MODEL_PRESETS:  # an uncalibrated preset profile: the run's own model, named by its trace
        model = ModelSpec.load(name)
        config = dict(model.raw_config)
    else:
        raise TideError(f"profile {profile.name} records no model config and the run's model {name!r} is not a "
                        f"preset: pass --model")
    first = int(config.get("first_k_dense_replace", 0))
    config.update(num_hidden_layers=first + run.trace.num_moe_layers, dtype=run.record.dtype)
    config.pop("torch_dtype", None)
    spec = ModelSpec.from_config(config, name=str(run.trace.header["model"].get("name", "model")))
    want = run.trace.header["model"].get("config_hash")
    if want != spec.config_hash:
        raise TideError(f"{run.source}: run {run.name} was recorded on a model of another shape (config hash {want}) "
                        f"than {'--model ' + model.name if model is not None else profile.model.get('name', 'the profile model')} "
                        f"with {run.trace.num_moe_layers} MoE "
                        f"layers ({spec.config_hash})")
    return spec


def replay(run: Run, profile: HardwareProfile, model: ModelSpec | None = None,
           executor: ExecutorProfile | None = None) -> Replay:
    spec = spec_for(run, profile, model)
    cost = RooflineCostModel(spec, profile)
    rec = run.record
    res = simulate(run.trace, make_policy(rec.policy, **rec.params), cost, rec.budget, timeline=True,
                   trace_name=run.name, executor=executor)
    tl = res.timeline
    w = np.where(tl.what != _WAIT, tl.end - tl.start, 0.0)
    by_what = {name: float(w[tl.what == i].sum()) for i, name in enumerate(WHAT) if i != _WAIT}
    return Replay(run=run, result=res, by_what=by_what, serial=bool(cost.serial))
