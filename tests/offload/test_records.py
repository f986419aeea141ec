"""The records (offload.results): every type survives to_json -> JSON text -> from_json unchanged, and reading
refuses a missing, unknown or mistyped key with a one-line TideError."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from offload.cost import ConstantCostModel, RooflineCostModel
from offload.errors import TideError
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.results import Counters, RunRecord, SimRecord, from_json, to_json

COUNTERS = Counters(h2d_bytes=1300, d2h_bytes=300, h2d_weight_bytes=1000, promotions=10, demotions=9,
                    cpu_assignments=30, gpu_assignments=90)
SIM = SimRecord(policy="tide", params={"tau": 4}, trace="block-cache", mode="block-cache", tau=4, budget=128,
                causal=True, policy_report={}, generated_tokens=1024, sim_time_s=2.0, counters=COUNTERS,
                busy_s={"gpu": 1.5, "cpu": 0.5, "h2d": 0.25, "d2h": 0.0}, step_time_mean_s=0.01,
                step_time_p50_s=0.009, steps=200, events=4000, wall_s=0.5, tags={"point": "p", "fractions": [0.5]})
RUN = RunRecord(policy="riptide", params={"prefetch": False}, mode="prefix-recompute", model="llada2-tiny",
                random_weights=True, device="cpu", dtype="float32", budget=8,
                settings={"gen_length": 16, "block_length": 8, "eos_early_stop": False}, prompt_tokens=8,
                tokens=(5, 7, 11), generated_tokens=16, forwards=8, wall_s=0.4, step_times_s=(0.04,) * 8,
                step_wall_s=(0.05,) * 8, cpu_s=None, step_cpu_s=(), counters=COUNTERS, max_resident=(8, 8),
                layer_budgets=(6, 10), host_pinned=False, environment={"threads": 1})
RECORDS = [COUNTERS, SIM, RUN]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_round_trip_through_json_text(record):
    text = json.dumps(to_json(record), allow_nan=False)
    assert from_json(type(record), json.loads(text)) == record


def test_json_is_flat_with_the_derived_values():
    """The keys the result files always had: counters inline, derived values written (and not read back)."""
    d = to_json(RUN)
    assert d["h2d_bytes"] == 1300 and d["hit_ratio"] == 0.75 and "counters" not in d
    assert d["label"] == "riptide(prefetch=false)" and d["tokens_per_s"] == 16 / 0.4 and d["tokens"] == [5, 7, 11]
    assert d["step_times_s"] == [0.04] * 8 and d["cpu_s"] is None
    s = to_json(SIM)
    assert s["point"] == "p" and "tags" not in s  # tags inline, as a study's rows have them
    assert s["utilisation"] == {"gpu": 0.75, "cpu": 0.25, "h2d": 0.125, "d2h": 0.0} and s["tokens_per_s"] == 512
    changed = dict(s, tokens_per_s=1.0, label="x")  # derived: recomputed, whatever the file says
    assert from_json(SimRecord, changed) == SIM


def test_numpy_values_are_written_as_python_ones():
    c = Counters(*(np.int64(v) for v in dataclasses.astuple(COUNTERS)))
    d = to_json(c)
    assert all(type(v) is int for k, v in d.items() if k != "hit_ratio") and from_json(Counters, d) == COUNTERS


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_missing_key_is_one_line(record):
    d = to_json(record)
    del d["promotions"]  # every record holds the counters
    with pytest.raises(TideError, match="missing key 'promotions'") as exc:
        from_json(type(record), d)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("record", [COUNTERS, RUN], ids=lambda r: type(r).__name__)
def test_unknown_key_is_one_line(record):
    with pytest.raises(TideError, match="unknown key.*'committed_tokens'") as exc:
        from_json(type(record), {**to_json(record), "committed_tokens": 16})
    assert "\n" not in str(exc.value)


def test_sim_record_keeps_unknown_keys_as_tags():
    """A study's grid coordinates are the task's tags, written inline: reading gives them back as tags."""
    back = from_json(SimRecord, {**to_json(SIM), "capped": True})
    assert back.tags == {**SIM.tags, "capped": True} and dataclasses.replace(back, tags=SIM.tags) == SIM


def test_sim_record_written_with_the_retired_lower_bound_still_loads():
    """Rows written while records carried lower_bound_s (the mandatory GPU work, now sim.engine's
    mandatory_gpu_time) load without it, and it does not become a tag."""
    assert from_json(SimRecord, {**to_json(SIM), "lower_bound_s": 1.0}) == SIM


@pytest.mark.parametrize("key,value,expected", [
    ("promotions", "10", "expected int, got str"), ("promotions", True, "expected int, got bool"),
    ("wall_s", None, "expected float, got NoneType"), ("step_times_s", 0.4, "expected tuple"),
    ("tokens", [1, 2.5], "expected int, got float"), ("settings", [], "expected dict"),
])
def test_mistyped_value_is_one_line(key, value, expected):
    with pytest.raises(TideError, match=expected) as exc:
        from_json(RunRecord, {**to_json(RUN), key: value})
    assert "\n" not in str(exc.value) and repr(key) in str(exc.value)


def test_numbers_widen_and_optional_fields_take_null():
    back = from_json(RunRecord, {**to_json(RUN), "wall_s": 1, "cpu_s": 2})
    assert back.wall_s == 1.0 and type(back.wall_s) is float and back.cpu_s == 2.0
    with pytest.raises(TideError, match="expected a JSON object, got list"):
        from_json(RunRecord, [to_json(RUN)])


def test_counters_of_the_executor_totals():
    """hit_ratio: GPU share of the token-assignments, 1 when nothing was routed."""
    assert COUNTERS.hit_ratio == 0.75
    assert dataclasses.replace(COUNTERS, cpu_assignments=0, gpu_assignments=0).hit_ratio == 1.0


def test_cost_models_say_whether_the_link_is_shared():
    hw = HardwareProfile.load("h100-pcie5")
    model = ModelSpec.load("llada2.0-mini")
    assert RooflineCostModel(model, hw).shared_duplex is hw.link.shared_duplex is False
    shared = dataclasses.replace(hw, link=dataclasses.replace(hw.link, shared_duplex=True))
    assert RooflineCostModel(model, shared).shared_duplex is True
    assert (ConstantCostModel().shared_duplex, ConstantCostModel().serial) == (False, False)
