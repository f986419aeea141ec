"""The profile format's optional calibration fields and how the cost model and the simulator use them."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import copy
import json

import numpy as np

from offload.cost import RooflineCostModel
from sim.engine import simulate
from offload.errors import TideError
from offload.hardware import HardwareProfile, Table1D, layer_shape_hash, model_record
from offload.model_spec import ModelSpec
from offload.policies import make_policy


@pytest.fixture(scope="module")
def h100() -> HardwareProfile:
    return HardwareProfile.load("h100-pcie5")


@pytest.fixture
def tiny(tiny_model) -> ModelSpec:
    return tiny_model


def _variant(spec: ModelSpec, name: str, **changes) -> ModelSpec:
    return ModelSpec.from_config({**spec.raw_config, **changes}, name=name)


T1 = {"tokens": [1, 64], "seconds": [1e-4, 3e-4]}
EXT = {
    "gpu_expert": {"tokens": [1, 8], "seconds": [1e-5, 2e-5], "call_seconds": 7e-5},
    "cpu_expert": {"tokens": [1, 8], "seconds": [1e-4, 2e-4], "call_seconds": 3e-5},
    "embed": {"tokens": [1, 64], "seconds": [1e-5, 2e-5]},
    "dense_mlp": T1, "moe_dense": T1, "moe_overhead": {"tokens": [1, 64], "seconds": [5e-5, 6e-5]},
    "lm_head": {"tokens": [1, 32], "seconds": [2e-4, 4e-4]},
    "copy_duplex": {"bytes": [1, 2], "seconds": [1e-6, 2e-6]},
    "cpu_expert_threads": {"threads": [1, 2], "tokens": [1, 8], "seconds": [[1e-4, 2e-4], [6e-5, 1e-4]]},
}


def _ext(h100, tiny, **extra) -> dict:
    d = copy.deepcopy(h100.to_dict())
    d["tables"] = copy.deepcopy(EXT)
    d.update(moe_layer_overhead_us=40.0, single_device=True, model=model_record(tiny, tiny.dtype_bytes),
             calibration={"holdout": {}})
    d.update(extra)
    return d


def test_presets_keep_their_shape(h100):
    d = h100.to_dict()
    assert not {"moe_layer_overhead_us", "single_device", "model", "calibration"} & set(d)
    assert h100.moe_layer_overhead_us == 0 and not h100.single_device and not h100.model


def test_round_trip_with_extensions(h100, tiny):
    hw = HardwareProfile.from_dict(_ext(h100, tiny))
    assert hw.tables["gpu_expert"].call == 7e-5 and hw.single_device and hw.moe_layer_overhead_us == 40.0
    back = HardwareProfile.from_dict(json.loads(json.dumps(hw.to_dict())))
    assert back == hw
    assert back.to_dict()["tables"]["cpu_expert_threads"]["threads"] == [1.0, 2.0]


@pytest.mark.parametrize("path,value,needle", [
    (("tables", "embed", "call_seconds"), 1e-5, "takes no call_seconds"),
    (("tables", "gpu_expert", "call_seconds"), -1.0, "call_seconds"),
    (("tables", "cpu_expert_threads", "seconds"), [[1e-4, 2e-4]], "one row per threads value"),
    (("single_device",), "yes", "single_device must be true or false"),
    (("moe_layer_overhead_us",), -1, "moe_layer_overhead_us"),
    (("model",), {"name": "x"}, "layer_shape_hash"),
    (("calibration",), [1], "calibration must be an object"),
])
def test_bad_extensions(h100, tiny, path, value, needle):
    d = _ext(h100, tiny)
    obj = d
    for k in path[:-1]:
        obj = obj[k]
    obj[path[-1]] = value
    with pytest.raises(TideError) as exc:
        HardwareProfile.from_dict(d)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_model_check(h100, tiny):
    hw = HardwareProfile.from_dict(_ext(h100, tiny))
    RooflineCostModel(tiny, hw)  # the model it was measured for
    deeper = _variant(tiny, "tiny-7L", num_hidden_layers=7)
    assert layer_shape_hash(deeper) == layer_shape_hash(tiny) and deeper.config_hash != tiny.config_hash
    RooflineCostModel(deeper, hw)  # same layer shape, more layers: the per-layer tables hold
    wider = _variant(tiny, "wide", hidden_size=32)
    with pytest.raises(TideError, match="recalibrate"):
        RooflineCostModel(wider, hw)
    fp32 = _variant(tiny, "tiny32", dtype="float32")
    with pytest.raises(TideError, match="2-byte"):
        RooflineCostModel(fp32, hw)
    # roofline-only profiles, and tables without a model record, stay model-independent
    RooflineCostModel(wider, h100)
    no_record = _ext(h100, tiny)
    del no_record["model"]
    RooflineCostModel(wider, HardwareProfile.from_dict(no_record))


def test_cost_model_formulas(h100, tiny):
    hw = HardwareProfile.from_dict(_ext(h100, tiny))
    cm = RooflineCostModel(tiny, hw)
    n, c = np.array([1, 64]), np.array([64, 64])
    # moe_pre = attention + moe_dense + moe_overhead (the table, not the scalar)
    np.testing.assert_allclose(cm.moe_pre(n, c), cm.attention(n, c) + [1e-4, 3e-4] + [5e-5, 6e-5])
    # step_fixed = overhead + embed + L_d (attention + dense_mlp) + lm_head(m), lm_head 0 for m = 0
    want = h100.step_overhead_us * 1e-6 + np.array([1e-5, 2e-5]) + cm.attention(n, c) + [1e-4, 3e-4] + [2e-4, 0.0]
    np.testing.assert_allclose(cm.step_fixed(n, c, np.array([1, 0])), want)
    counts = np.zeros(tiny.num_experts, dtype=np.int64)
    counts[[0, 3]] = [1, 8]
    assert cm.gpu_experts(counts) == pytest.approx(7e-5 + 1e-5 + 2e-5)
    assert cm.cpu_experts(counts) == pytest.approx(3e-5 + 1e-4 + 2e-4)
    assert cm.gpu_experts(np.zeros_like(counts)) == 0 and cm.cpu_experts(np.zeros_like(counts)) == 0
    # single device: serial (the engine moves no activations there); weight copies keep their price
    assert cm.serial and cm.h2d(4096) > 0
    # without the table, the scalar per-layer overhead is charged
    d = _ext(h100, tiny)
    del d["tables"]["moe_overhead"]
    cm2 = RooflineCostModel(tiny, HardwareProfile.from_dict(d))
    np.testing.assert_allclose(cm2.moe_pre(n, c) - cm.moe_pre(n, c), 40e-6 - np.array([5e-5, 6e-5]))


def test_simulator_charges_the_per_layer_overhead(h100, tiny, tiny_trace_factory):
    trace = tiny_trace_factory(with_topk=False)
    base = h100.to_dict()
    with_over = {**base, "moe_layer_overhead_us": 250.0}
    results = [simulate(trace, make_policy("all-gpu"), RooflineCostModel(tiny, HardwareProfile.from_dict(d)))
               for d in (base, with_over)]
    extra = trace.num_steps * trace.num_moe_layers * 250e-6
    assert results[1].sim_time_s - results[0].sim_time_s == pytest.approx(extra)
    assert results[1].busy_s["gpu"] - results[0].busy_s["gpu"] == pytest.approx(extra)


def test_table_call_default_is_none():
    assert Table1D((1.0,), (2.0,)).call is None
