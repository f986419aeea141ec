"""The policies' measured decide() time (timed by offload.step's stepper, tests/offload/test_step.py), the
executor profile's ``decide_us`` table (its only home: a hardware profile naming one is refused) and the
engine charging it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from offload.cost import RooflineCostModel
from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.policies import make_policy
from offload.policies.base import Prefetch
from offload.policies.residency import Residency

TINY = ModelSpec.load("llada2-tiny")  # 3 MoE layers of 32 experts, top-4


def _measured(**decide: float) -> ExecutorProfile:
    """tide-moe with a measured table, as validate.calibrate writes it beside a profile."""
    return ExecutorProfile.from_dict(ExecutorProfile.load("tide-moe").to_dict() | {"decide_us": dict(decide)})


# ---- the executor's table -----------------------------------------------------------------------------------
def test_a_hardware_profile_with_decide_us_says_where_it_lives():
    d = HardwareProfile.load("h100-pcie5").to_dict() | {"decide_us": {"tide": 14.0}}
    with pytest.raises(TideError, match="decide_us now lives in an executor profile") as exc:
        HardwareProfile.from_dict(d, origin="p.json")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("p.json: ") and "executor.json" in str(exc.value)
    assert "decide_us" not in HardwareProfile.load("h100-pcie5").to_dict()


def test_decide_us_round_trips_and_the_preset_has_none(tmp_path):
    assert ExecutorProfile.load("tide-moe").decide_us == {}
    x = _measured(tide=14, riptide=99.5)
    path = tmp_path / "p.executor.json"
    path.write_text(json.dumps(x.to_dict()))
    assert ExecutorProfile.load(path) == x and x.decide_us == {"tide": 14.0, "riptide": 99.5}


@pytest.mark.parametrize("bad, words", [({"tide": -1.0}, "decide_us.tide must be"), ({"tide": "x"}, "decide_us.tide"),
                                        ({"tide": float("nan")}, "decide_us.tide"), ({"tide": True}, "decide_us.tide"),
                                        ([1.0], "decide_us must be an object")])
def test_bad_decide_us_is_one_line(bad, words):
    with pytest.raises(TideError, match=words) as exc:
        ExecutorProfile.from_dict({"name": "x", "decide_us": bad}, origin="x.json")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("x.json: decide_us")


def test_decide_s_is_the_table_else_the_default():
    moe, ref = ExecutorProfile.load("tide-moe"), ExecutorProfile.load("tide-reference")
    assert moe.decide_s("riptide") == 0.0 and _measured(riptide=120.0).decide_s("riptide") == pytest.approx(120e-6)
    assert ref.decide_s("riptide") == pytest.approx(99e-6)  # the released code keeps its own table
    x = ExecutorProfile.from_dict({"name": "x", "decide_default_us": 7.0, "decide_us": {"riptide": 3.0}})
    assert x.decide_s("tide") == pytest.approx(7e-6)  # a policy the table does not name: the default


def test_a_decide_us_naming_no_policy_is_refused_where_a_run_starts():
    from offload.step import RunShape, Stepper

    x = ExecutorProfile.from_dict({"name": "x", "decide_us": {"tide": 3.0, "tid-opt": 3.0}})
    shape = RunShape(TINY.num_moe_layers, TINY.num_experts, TINY.top_k, TINY.expert_bytes, TINY.token_bytes)
    with pytest.raises(TideError, match=r"^executor x: decide_us names unknown policy tid-opt$"):
        Stepper(make_policy("tide"), 8, shape, executor=x)


# ---- a prefetch's target layer --------------------------------------------------------------------------------
def test_prefetch_outside_the_layers_is_one_line():
    pol = make_policy("all-gpu")
    res = Residency(pol, np.zeros((2, 4), dtype=bool), np.full(2, 4))
    assert [a.tolist() if hasattr(a, "tolist") else a for a in res.prefetch(Prefetch(1, np.array([2])))] == [1, [], [2]]
    with pytest.raises(TideError, match="prefetched into MoE layer -1 of 2"):
        res.prefetch(Prefetch(-1, np.array([0])))


# ---- the engine charges the measured figure -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_trace():
    pytest.importorskip("simpy", exc_type=ImportError)
    pytest.importorskip("scipy", exc_type=ImportError)
    from traces.synthetic import default_config, generate

    return generate(TINY, default_config(TINY, "prefix-recompute", gen_length=64, prompt_length=32, seed=1))


def test_engine_charges_the_executors_decide_time(tiny_trace):
    from sim.engine import simulate

    trace = tiny_trace
    cost = RooflineCostModel(TINY, HardwareProfile.load("h100-pcie5"))
    calls = trace.num_steps * trace.num_moe_layers
    serial = {"name": "serial", "overlap": False}  # nothing overlaps: times add up
    a = simulate(trace, make_policy("tide"), cost, 16, executor=ExecutorProfile.from_dict(serial))
    b = simulate(trace, make_policy("tide"), cost, 16,
                 executor=ExecutorProfile.from_dict(serial | {"decide_us": {"tide": 250.0}}))
    assert a.busy_s["host"] == 0.0 and b.busy_s["host"] == pytest.approx(calls * 250e-6, rel=1e-12)
    assert b.sim_time_s - a.sim_time_s == pytest.approx(calls * 250e-6, rel=1e-9)
    assert b.counters == a.counters  # a price, not a different plan
    # the calibrated tide-moe charges it on its host thread too; a policy the table does not name: nothing
    moe = simulate(trace, make_policy("tide"), cost, 16, executor=_measured(tide=250.0))
    assert moe.busy_s["host"] == pytest.approx(calls * 250e-6, rel=1e-12)
    assert moe.sim_time_s > simulate(trace, make_policy("tide"), cost, 16).sim_time_s
    assert simulate(trace, make_policy("static"), cost, 16, executor=_measured(tide=250.0)).busy_s["host"] == 0.0
    # tide-reference has its own table (14 us for tide, plus its 15 us host sync)
    ref = simulate(trace, make_policy("tide"), cost, 16, executor="tide-reference")
    assert ref.busy_s["host"] == pytest.approx(calls * 29e-6, rel=1e-12)
