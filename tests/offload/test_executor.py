"""Executor profiles: presets, validation, and the closed-form prices of ``offload.cost.ExecutorCost``."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pytest

from offload.cost import ConstantCostModel, ExecutorCost, RooflineCostModel
from offload.errors import TideError
from offload.executor import DEFAULT_EXECUTOR, EXECUTOR_PRESETS, ExecutorProfile
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec

_META = {"name", "description", "sources", "ranges"}


def test_presets_load_and_round_trip():
    assert DEFAULT_EXECUTOR == "tide-moe" and ExecutorProfile.load() == ExecutorProfile.load("tide-moe")
    for name in EXECUTOR_PRESETS:
        x = ExecutorProfile.load(name)
        assert x.name == name
        assert ExecutorProfile.from_dict(json.loads(json.dumps(x.to_dict()))) == x


def test_tide_moe_is_the_store():
    """The store: batched pinned copies, overlap, 8 staging slots in halves, host DRAM shared by copies and CPU
    experts; the per-layer host work is inside the calibrated moe_overhead table, so not charged again."""
    x = ExecutorProfile.load("tide-moe")
    assert (x.copy_granularity, x.host_memory, x.act_copies, x.lm_head_rows) == ("batched", "pinned", "batched", "block")
    assert x.overlap and x.shared_dram and not (x.demote_d2h or x.lm_head_fp32)
    assert x.gpu_expert_overhead_us == x.cpu_expert_overhead_us == x.host_sync_us == x.decide_s("riptide") == 0
    assert x.staging_slots == 8 and x.stage_chunk == 4


def test_reference_cites_every_figure():
    x = ExecutorProfile.load("tide-reference")
    for f in fields(ExecutorProfile):
        if f.name not in _META:
            assert x.sources.get(f.name), f.name  # every figure says where it comes from
    assert "TIDE.md" in x.sources["copy_granularity"] and "1325" in x.sources["lm_head_rows"]
    # the guesses carry a range that holds the figure (checked on loading)
    for key in ("gpu_expert_overhead_us", "cpu_expert_overhead_us", "host_sync_us", "decide_us.riptide"):
        assert key in x.ranges
    assert (x.copy_granularity, x.host_memory, x.act_copies, x.lm_head_rows) == ("projection", "pageable", "per_expert", "prefix")
    assert x.demote_d2h and x.lm_head_fp32 and not x.overlap
    assert x.decide_s("riptide") == pytest.approx(99e-6) and x.decide_s("no-such-policy") == x.decide_default_us * 1e-6


@pytest.mark.parametrize("patch,needle", [
    ({"copy_granularity": "bulk"}, "copy_granularity must be one of batched, expert, projection"),
    ({"host_memory": "locked"}, "host_memory must be one of pinned, pageable"),
    ({"overlap": "yes"}, "overlap must be true or false"),
    ({"staging_slots": -1}, "staging_slots must be an integer in [0, 4096]"),
    ({"staging_slots": 2.5}, "staging_slots must be an integer"),
    ({"gpu_expert_overhead_us": -3}, "gpu_expert_overhead_us must be a number of microseconds in [0, 1e+06]"),
    ({"host_sync_us": float("nan")}, "host_sync_us must be a number"),
    ({"decide_us": {"tide": "fast"}}, "decide_us.tide must be a number of microseconds"),
    ({"copies": 3}, "unknown executor field(s) 'copies'"),
    ({"format": "tide-moe-executor/9"}, "unsupported executor format"),
    ({"ranges": {"host_sync_us": [5, 1]}}, "ranges.host_sync_us must be [low, high]"),
    ({"host_sync_us": 80, "ranges": {"host_sync_us": [5, 50]}}, "host_sync_us = 80.0 lies outside its range [5, 50]"),
    ({"sources": {"speed": "a guess"}}, "'speed', which is no executor field"),
])
def test_bad_values_are_one_line_errors(patch, needle):
    with pytest.raises(TideError) as e:
        ExecutorProfile.from_dict({"name": "x", **patch}, origin="x.json")
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("x.json: ")


def test_load_by_path_and_unknown_name(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"name": "mine", "overlap": False, "staging_slots": 8}))
    x = ExecutorProfile.load(str(path))
    assert x.name == "mine" and not x.overlap and (x.stage_chunk, x.stage_buffers) == (4, 2)
    assert (ExecutorProfile(name="one", staging_slots=1).stage_chunk, ExecutorProfile(name="one", staging_slots=1).stage_buffers) == (1, 1)
    with pytest.raises(TideError, match="unknown executor 'nope': not a preset"):
        ExecutorProfile.load("nope")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TideError, match="malformed executor profile"):
        ExecutorProfile.load(str(bad))


# ---- prices ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Latency(ConstantCostModel):
    """Copies with a fixed latency: 0.5 s + 0.01 s/B pinned, 0.5 s + 0.02 s/B pageable (0 for 0 bytes)."""

    def h2d(self, nbytes: Any) -> np.ndarray:
        b = np.asarray(nbytes, dtype=np.float64)
        return np.where(b > 0, 0.5 + 0.01 * b, 0.0)

    d2h = h2d

    def h2d_pageable(self, nbytes: Any) -> np.ndarray:
        b = np.asarray(nbytes, dtype=np.float64)
        return np.where(b > 0, 0.5 + 0.02 * b, 0.0)

    d2h_pageable = h2d_pageable


def _xc(cost: Any, L: int = 1, E: int = 4, **fields_: Any) -> ExecutorCost:
    return ExecutorCost.of(cost, ExecutorProfile(name="t", **fields_), L, E)


def test_weight_copies_in_closed_form():
    ids = np.array([0, 1, 2])  # 3 experts of 100 B
    cost = _Latency()
    assert _xc(cost).weights_h2d(0, ids) == pytest.approx((0.5 + 3.0, 300))                      # one batch
    assert _xc(cost, copy_granularity="expert").weights_h2d(0, ids)[0] == pytest.approx(3 * (0.5 + 1.0))
    assert _xc(cost, copy_granularity="projection").weights_h2d(0, ids)[0] == pytest.approx(9 * (0.5 + 1 / 3))
    # pageable: half the rate, and each byte crosses DRAM three times (bounce buffer)
    t, v = _xc(cost, copy_granularity="projection", host_memory="pageable").weights_h2d(0, ids)
    assert t == pytest.approx(9 * (0.5 + 2 / 3)) and v == 900
    assert _xc(cost, demote_d2h=True).demote_d2h(0, np.array([3]))[0] == pytest.approx(1.5)
    assert _xc(cost).weights_h2d(0, np.array([], dtype=np.int64)) == (0.0, 0.0)


def test_pinned_capacity_makes_the_rest_pageable():
    # 250 B pinned = 2 experts: layer 0's experts 0 and 1 (pinned layer by layer, in expert order)
    xc = _xc(ConstantCostModel(pinned_bytes=250), L=2, E=4)
    assert xc.pinned.sum() == 2 and xc.pinned[0, :2].all()
    t, v = xc.weights_h2d(0, np.array([1, 2, 3]))
    assert t == pytest.approx(1.0 + 2 * 2.0) and v == 100 + 3 * 200  # 1 pinned (1 s), 2 pageable (2 s each)
    assert xc.weights_h2d(1, np.array([0]))[0] == pytest.approx(2.0)
    # a pageable executor pins nothing whatever the capacity
    assert not _xc(ConstantCostModel(), host_memory="pageable").pinned.any()


def test_activation_copies_batched_or_per_cpu_expert():
    counts = np.array([3, 0, 2, 0])  # two CPU experts, 5 rows of 1 B
    cost = _Latency()
    assert _xc(cost).activations("d2h", counts) == pytest.approx((0.5 + 0.05, 5))
    assert _xc(cost, act_copies="per_expert").activations("h2d", counts)[0] == pytest.approx(2 * 0.5 + 0.05)
    assert _xc(cost, act_copies="per_expert", host_memory="pageable").activations("d2h", counts)[0] == \
        pytest.approx(2 * 0.5 + 0.10)


def test_expert_overheads_per_active_expert():
    counts = np.array([3, 0, 2, 1])
    xc = _xc(ConstantCostModel(), gpu_expert_overhead_us=1e5, cpu_expert_overhead_us=2e5)
    assert xc.gpu_experts(counts) == pytest.approx(3 * 0.1 + 3 * 0.1)
    assert xc.cpu_experts(counts) == pytest.approx(3 * 1.0 + 3 * 0.2)
    assert xc.cpu_dram_bytes(counts) == 3 * 100 + 2 * 6


def test_lm_head_over_the_prefix_in_fp32():
    spec, hw = ModelSpec.load("llada2.0-mini"), HardwareProfile.load("h100-pcie5")
    cost = RooflineCostModel(spec, hw)
    n, c, m = np.array([160, 96]), np.array([160, 96]), np.array([32, 0])
    assert np.array_equal(_xc(cost).step_fixed(n, c, m), cost.step_fixed(n, c, m))  # block rows: unchanged
    ref = _xc(cost, lm_head_rows="prefix", lm_head_fp32=True).step_fixed(n, c, m)
    rows = np.array([160, 0])  # the whole prefix, only where the forward makes logits
    cast = rows * spec.vocab_size * (spec.dtype_bytes + 4) / (hw.gpu.hbm_gbps * 1e9) + (rows > 0) * hw.gpu.kernel_overhead_us * 1e-6
    np.testing.assert_allclose(ref, cost.step_fixed(n, c, rows) + cast, rtol=1e-12)
    assert ref[0] > cost.step_fixed(n, c, m)[0]


def test_pageable_rate_from_the_hardware_profile():
    spec = ModelSpec.load("llada2.0-mini")
    hw = HardwareProfile.load("h100-pcie5")
    cost = RooflineCostModel(spec, hw)
    b = 6e6
    assert float(cost.h2d_pageable(b)) == pytest.approx(8e-6 + b / (0.5 * 50e9))
    assert float(cost.d2h_pageable(b)) == pytest.approx(8e-6 + b / (0.5 * 52.8e9))
    assert cost.dram_bytes_per_s == pytest.approx(215e9) and cost.pinned_bytes == float("inf")
    d = hw.to_dict()
    d.pop("ranges")  # a machine of its own: the preset's ranges no longer describe it
    d["host"] = {"dram_gbps": 100.0, "pinned_gib": 1.0, "pageable_fraction": 0.25}
    cost2 = RooflineCostModel(spec, HardwareProfile.from_dict(d))
    assert cost2.pinned_bytes == 2**30 and float(cost2.h2d_pageable(b)) == pytest.approx(8e-6 + b / (0.25 * 50e9))
    xc = ExecutorCost.of(cost2, ExecutorProfile.load("tide-moe"), spec.num_moe_layers, spec.num_experts)
    assert xc.pinned.sum() == 2**30 // spec.expert_bytes


def test_batched_and_memoised_prices_equal_one_at_a_time_to_the_bit():
    # the engine prices a staged layer's chunks as rows of one matrix, and each copy size once: same floats
    spec = ModelSpec.load("llada2-tiny")
    cost = RooflineCostModel(spec, HardwareProfile.load("h100-pcie5"))
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 40, (6, spec.num_experts)) * (rng.random((6, spec.num_experts)) < 0.2)
    for us in (0.0, 7.0):
        xc = _xc(cost, L=1, E=spec.num_experts, gpu_expert_overhead_us=us)
        assert xc.gpu_experts_rows(rows).tolist() == [xc.gpu_experts(r) for r in rows]
    xc, fresh = _xc(cost, L=1, E=spec.num_experts), _xc(cost, L=1, E=spec.num_experts)
    for ids in ([0, 1], [2, 3], [0, 1, 2]):
        assert xc.weights_h2d(0, np.array(ids)) == xc.weights_h2d(0, np.array(ids))  # the second from the memo
        assert xc.weights_h2d(0, np.array(ids)) == fresh._price("h2d", len(ids), 0)


@pytest.mark.parametrize("host,needle", [
    ({"dram_gbps": 0}, "host.dram_gbps must be a positive number or null"),
    ({"pinned_gib": -1}, "host.pinned_gib must be a non-negative number or null"),
    ({"pageable_fraction": 1.5}, "host.pageable_fraction must be in (0, 1]"),
    ({"dram": 3}, "unknown host field(s) 'dram'"),
])
def test_bad_host_section(host, needle):
    d = HardwareProfile.load("h100-pcie5").to_dict()
    d["host"] = host
    with pytest.raises(TideError) as e:
        HardwareProfile.from_dict(d, origin="hw.json")
    assert needle in str(e.value)


def test_presets_give_a_host_dram_figure_with_its_source():
    for name in ("a100-pcie4", "h100-pcie5", "h200-pcie5", "rtx4090-pcie4"):
        hw = HardwareProfile.load(name)
        assert hw.host is not None and hw.host.dram_gbps > 0
        assert any(s.startswith("host.dram_gbps:") and "range" in s for s in hw.sources)


def test_executor_for_prefers_named_then_calibrated_then_default(tmp_path):
    from offload.executor import DEFAULT_EXECUTOR, beside, executor_for

    hw = tmp_path / "profile.json"
    hw.write_text("{}")
    assert executor_for(hw) == DEFAULT_EXECUTOR  # no executor profile calibrated with it
    assert executor_for("h100-pcie5") == DEFAULT_EXECUTOR  # a preset name
    beside(hw).write_text("{}")
    assert executor_for(hw) == str(tmp_path / "profile.executor.json")
    assert executor_for(hw, "tide-reference") == "tide-reference"
