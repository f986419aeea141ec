"""Hardware profiles (presets, round trips, tables, bad input) and the roofline cost model on hand cases."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from offload.cost import RooflineCostModel
from offload.errors import TideError
from offload.hardware import FORMAT, HARDWARE_PRESETS, HardwareProfile, Table1D, Table2D
from offload.model_spec import ModelSpec


def _err(excinfo, *needles):
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, TideError) and "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


@pytest.fixture(scope="module")
def mini() -> ModelSpec:
    return ModelSpec.load("llada2.0-mini")


@pytest.fixture(scope="module")
def h100() -> HardwareProfile:
    return HardwareProfile.load("h100-pcie5")


TABLES = {
    "gpu_expert": {"tokens": [1, 8, 64], "seconds": [1e-5, 2e-5, 1e-4]},
    "cpu_expert": {"tokens": [1, 2], "seconds": [1e-3, 1.5e-3]},
    "attention": {"tokens": [1, 32], "context": [128, 1024], "seconds": [[1e-5, 2e-5], [4e-5, 1e-4]]},
    "copy_h2d": {"bytes": [0, 1e6, 2e6], "seconds": [1e-5, 3e-5, 5e-5]},
    "copy_d2h": {"bytes": [1000, 2000], "seconds": [1e-5, 2e-5]},
}


def _profile_dict(h100: HardwareProfile, tables=None) -> dict:
    d = copy.deepcopy(h100.to_dict())
    d["tables"] = copy.deepcopy(TABLES if tables is None else tables)
    return d


# ---- presets -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(HARDWARE_PRESETS))
def test_preset_loads_and_cites_sources(name):
    hw = HardwareProfile.load(name)
    assert hw.name and hw.description
    assert len(hw.sources) >= 2 and all(isinstance(s, str) and s.strip() for s in hw.sources)
    assert hw.gpu.memory_gib > 0 and hw.gpu.hbm_gbps > 0 and hw.gpu.matmul_tflops > 0
    assert hw.cpu.dram_gbps > 0 and hw.cpu.threads > 0
    assert hw.link.h2d_gbps > 0 and hw.link.d2h_gbps > 0
    # link much slower than HBM (hardware.md: about 1 : 50-100 per byte)
    assert hw.gpu.hbm_gbps / hw.link.h2d_gbps > 10
    assert hw.gpu_memory_bytes == int(hw.gpu.memory_gib * 2**30)


@pytest.mark.parametrize("name", sorted(HARDWARE_PRESETS))
def test_round_trip(name):
    hw = HardwareProfile.load(name)
    d = hw.to_dict()
    assert d["format"] == FORMAT
    assert HardwareProfile.from_dict(d, origin=name) == hw
    assert HardwareProfile.from_dict(json.loads(json.dumps(d)), origin=name) == hw


def test_round_trip_with_tables_through_a_file(tmp_path, h100):
    d = _profile_dict(h100)
    d["environment"] = {"gpu": "H100", "driver": "x"}
    hw = HardwareProfile.from_dict(d)
    assert set(hw.tables) == set(TABLES)
    assert isinstance(hw.tables["attention"], Table2D) and isinstance(hw.tables["copy_h2d"], Table1D)
    back = HardwareProfile.from_dict(json.loads(json.dumps(hw.to_dict())))
    assert back == hw
    assert back.to_dict()["tables"]["copy_h2d"]["bytes"] == [0.0, 1e6, 2e6]
    p = tmp_path / "calibrated.json"
    p.write_text(json.dumps(hw.to_dict()))
    assert HardwareProfile.load(p) == hw
    assert HardwareProfile.load(str(p)).environment == {"gpu": "H100", "driver": "x"}


# ---- tables ------------------------------------------------------------------------------------------------

def test_table1d():
    t = Table1D((1.0, 3.0), (10.0, 20.0))
    np.testing.assert_allclose(t([1, 2, 3]), [10, 15, 20])
    assert t(0) == 10  # clamped below the first x
    assert t(5) == 30  # extrapolated along the last segment
    down = Table1D((1.0, 2.0), (2.0, 1.0))
    assert down(10) == 0  # never below 0
    assert Table1D((4.0,), (7.0,))([0, 4, 100]).tolist() == [7, 7, 7]


def test_table2d_bilinear_hand_case():
    t = Table2D((1.0, 3.0), (10.0, 20.0), ((1.0, 2.0), (3.0, 6.0)))
    assert t(2, 15) == pytest.approx(3.0)           # (1 + 2 + 3 + 6) / 4
    assert t(1, 10) == 1 and t(3, 20) == 6 and t(1, 20) == 2 and t(3, 10) == 3
    assert t(2, 10) == pytest.approx(2.0) and t(1, 15) == pytest.approx(1.5)
    assert t(2.5, 12) == pytest.approx((0.25 * 1.2 + 0.75 * 3.6))  # rows at y = 12: 1.2 and 3.6
    assert t(5, 10) == pytest.approx(5.0)           # extrapolated along tokens
    assert t(1, 30) == pytest.approx(3.0)           # extrapolated along context
    assert t(0, 10) == 1 and t(1, 0) == 1           # clamped below
    out = t(np.array([[1, 3], [2, 2]]), np.array([[10, 20], [15, 10]]))
    assert out.shape == (2, 2)
    np.testing.assert_allclose(out, [[1, 6], [3, 2]])
    single = Table2D((4.0,), (10.0, 20.0), ((1.0, 3.0),))
    np.testing.assert_allclose(single(np.array([1, 100]), np.array([15, 15])), [2, 2])
    neg = Table2D((1.0, 2.0), (1.0,), ((5.0,), (1.0,)))
    assert neg(10, 1) == 0  # never below 0


def test_tables_take_precedence(h100, mini):
    hw = HardwareProfile.from_dict(_profile_dict(h100))
    cm, roof = RooflineCostModel(mini, hw), RooflineCostModel(mini, h100)
    launch = 3 * hw.gpu.kernel_overhead_us * 1e-6
    E = mini.num_experts
    counts = np.zeros(E, dtype=np.int64)
    counts[[0, 1, 2, 3]] = [1, 4, 128, 8]
    slope = (1e-4 - 2e-5) / (64 - 8)
    want = 1e-5 + (1e-5 + 3 / 7 * 1e-5) + (1e-4 + 64 * slope) + 2e-5 + launch
    assert cm.gpu_experts(counts) == pytest.approx(want)
    assert cm.gpu_experts(counts) != pytest.approx(roof.gpu_experts(counts))
    # batched over steps: [2, E]
    both = np.stack([counts, np.zeros(E, dtype=np.int64)])
    np.testing.assert_allclose(cm.gpu_experts(both), [want, 0.0])
    # CPU: interpolation and extrapolation, no per-expert overhead added on top of a measured table
    c2 = np.zeros(E, dtype=np.int64)
    c2[[5, 6]] = [2, 3]
    assert cm.cpu_experts(c2) == pytest.approx(1.5e-3 + 2.0e-3)
    assert cm.cpu_experts(np.zeros(E, dtype=np.int64)) == 0
    # copies: interpolated, extrapolated, clamped below; zero bytes still cost nothing
    np.testing.assert_allclose(cm.h2d([5e5, 1e6, 3e6]), [2e-5, 3e-5, 7e-5])
    assert cm.h2d(0) == 0
    np.testing.assert_allclose(cm.d2h([500, 1500, 3000, 0]), [1e-5, 1.5e-5, 3e-5, 0])
    # attention: bilinear, extrapolated along tokens and context
    assert cm.attention(1, 128) == pytest.approx(1e-5)
    assert cm.attention(32, 1024) == pytest.approx(1e-4)
    assert cm.attention(16.5, 576) == pytest.approx((1e-5 + 2e-5 + 4e-5 + 1e-4) / 4)
    assert cm.attention(63, 128) == pytest.approx(1e-5 + 2 * 3e-5)
    assert cm.attention(1, 1920) == pytest.approx(3e-5)
    # moe_pre and step_fixed use the attention table; the rest stays roofline
    n, c = np.array([4, 32]), np.array([256, 1024])
    np.testing.assert_allclose(cm.moe_pre(n, c) - cm.attention(n, c), roof.moe_pre(n, c) - roof.attention(n, c))
    np.testing.assert_allclose(cm.step_fixed(n, c, n) - cm.attention(n, c) * mini.first_k_dense_replace,
                               roof.step_fixed(n, c, n) - roof.attention(n, c) * mini.first_k_dense_replace)


def test_partial_tables_fall_back_to_roofline(h100, mini):
    hw = HardwareProfile.from_dict(_profile_dict(h100, {"copy_h2d": TABLES["copy_h2d"]}))
    cm, roof = RooflineCostModel(mini, hw), RooflineCostModel(mini, h100)
    counts = np.zeros(mini.num_experts, dtype=np.int64)
    counts[:3] = [1, 2, 3]
    assert cm.gpu_experts(counts) == roof.gpu_experts(counts)
    assert cm.cpu_experts(counts) == roof.cpu_experts(counts)
    assert cm.d2h(1e6) == roof.d2h(1e6)
    assert cm.attention(4, 100) == roof.attention(4, 100)
    assert cm.h2d(1e6) == pytest.approx(3e-5) != roof.h2d(1e6)


# ---- roofline hand checks ----------------------------------------------------------------------------------

def test_copies(h100, mini):
    cm = RooflineCostModel(mini, h100)
    b = mini.expert_bytes
    assert cm.h2d(b) == pytest.approx(8e-6 + b / 50e9)
    assert cm.d2h(b) == pytest.approx(8e-6 + b / 52.8e9)
    assert cm.h2d(0) == 0 and cm.d2h(0) == 0
    np.testing.assert_allclose(cm.h2d(np.array([0, b, 2 * b])), [0, 8e-6 + b / 50e9, 8e-6 + 2 * b / 50e9])
    assert cm.expert_bytes == b and cm.token_bytes == 4096


def test_zero_counts_cost_nothing(h100, mini):
    cm = RooflineCostModel(mini, h100)
    z = np.zeros((3, mini.num_experts), dtype=np.int64)
    np.testing.assert_array_equal(cm.gpu_experts(z), 0)
    np.testing.assert_array_equal(cm.cpu_experts(z), 0)
    assert cm.gpu_experts(z).shape == (3,)


def test_one_token_is_memory_bound(h100, mini):
    cm = RooflineCostModel(mini, h100)
    counts = np.zeros(mini.num_experts, dtype=np.int64)
    counts[7] = 1
    h, i = 2048, 512
    launch = 3 * 5e-6
    exact = 2 * (3 * h * i + 2 * h) / 3000e9 + launch
    assert 6 * h * i / 800e12 < 2 * (3 * h * i + 2 * h) / 3000e9  # the byte term wins
    assert cm.gpu_experts(counts) == pytest.approx(exact)
    assert cm.gpu_experts(counts) == pytest.approx(mini.expert_bytes / 3000e9 + launch, rel=1e-2)
    # the CPU reads the same bytes from DRAM, plus its per-expert overhead
    assert cm.cpu_experts(counts) == pytest.approx(2 * (3 * h * i + 2 * h) / 215e9 + 25e-6)
    # two active experts: two GEMM groups, one set of launches
    counts[9] = 1
    assert cm.gpu_experts(counts) == pytest.approx(2 * (exact - launch) + launch)


def test_many_tokens_are_compute_bound(h100, mini):
    cm = RooflineCostModel(mini, h100)
    counts = np.zeros(mini.num_experts, dtype=np.int64)
    counts[0] = 10_000
    flops = 6 * 10_000 * 2048 * 512
    assert flops / 800e12 > 2 * (3 * 2048 * 512 + 2 * 10_000 * 2048) / 3000e9
    assert cm.gpu_experts(counts) == pytest.approx(flops / 800e12 + 15e-6)


def test_step_costs_positive_and_growing(h100, mini):
    cm = RooflineCostModel(mini, h100)
    n = np.array([1, 32, 512])
    pre = cm.moe_pre(n, n + 100)
    fixed = cm.step_fixed(n, n + 100, n)
    assert np.all(np.diff(pre) > 0) and np.all(np.diff(fixed) > 0)
    assert np.all(fixed > h100.step_overhead_us * 1e-6)


# ---- bad profiles ------------------------------------------------------------------------------------------

def _mutated(h100, path, value=None, delete=False, tables=None):
    d = _profile_dict(h100, tables)
    obj = d
    for k in path[:-1]:
        obj = obj[k]
    if delete:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value
    return d


BAD = [
    (("cpu",), None, True, ("lacks section 'cpu'",)),
    (("link",), None, True, ("lacks section 'link'",)),
    (("link", "h2d_gbps"), -1.0, False, ("link.h2d_gbps must be a non-negative number",)),
    (("gpu", "hbm_gbps"), float("nan"), False, ("gpu.hbm_gbps",)),
    (("gpu", "hbm_gbps"), 0.0, False, ("gpu.hbm_gbps must be positive",)),
    (("cpu", "dram_gbps"), "fast", False, ("cpu.dram_gbps",)),
    (("gpu", "bogus"), 1, False, ("bad field",)),
    (("gpu", "name"), None, True, ("bad field",)),
    (("format",), "tide-moe-hardware/2", False, ("unsupported hardware profile format", "tide-moe-hardware/1")),
    (("step_overhead_us",), -5, False, ("step_overhead_us",)),
    (("step_overhead_us",), float("inf"), False, ("step_overhead_us",)),
    (("sources",), "one string", False, ("sources must be a list of strings",)),
    (("environment",), [1, 2], False, ("environment must be an object",)),
    (("tables",), [1], False, ("tables must be an object",)),
    (("tables", "gpu_expert", "tokens"), [1, 1, 2], False, ("gpu_expert", "strictly increasing")),
    (("tables", "copy_h2d", "bytes"), [3, 2, 1], False, ("copy_h2d", "strictly increasing")),
    (("tables", "attention", "context"), [1024, 128], False, ("attention axes must be strictly increasing",)),
    (("tables", "gpu_expert", "seconds"), [1e-5, 2e-5], False, ("gpu_expert has 3 x values but 2 times",)),
    (("tables", "attention", "seconds"), [[1e-5, 2e-5]], False, ("one row per tokens value",)),
    (("tables", "attention", "seconds"), [[1e-5], [2e-5]], False, ("one value per context value",)),
    (("tables", "gpu_expert", "seconds"), [1e-5, -2e-5, 1e-4], False, ("non-negative",)),
    (("tables", "gpu_expert", "tokens"), "1,2,3", False, ("gpu_expert.tokens",)),
    (("tables", "gpu_expert", "tokens"), None, True, ("gpu_expert.tokens",)),
    (("tables", "cpu_expert"), [1, 2], False, ("table cpu_expert must be an object",)),
    (("tables", "gpu_experts"), {"tokens": [1], "seconds": [1]}, False, ("unknown table 'gpu_experts'",)),
]


@pytest.mark.parametrize("path,value,delete,needles", BAD, ids=[f"{'.'.join(p)}-{i}" for i, (p, *_) in enumerate(BAD)])
def test_bad_profile(h100, path, value, delete, needles):
    d = _mutated(h100, path, value, delete)
    with pytest.raises(TideError) as ei:
        HardwareProfile.from_dict(d, origin="my-profile.json")
    _err(ei, "my-profile.json", *needles)


def test_profile_not_an_object():
    with pytest.raises(TideError) as ei:
        HardwareProfile.from_dict([1, 2])  # type: ignore[arg-type]
    _err(ei, "must be a JSON object")


def test_load_errors(tmp_path):
    with pytest.raises(TideError) as ei:
        HardwareProfile.load("tpu-v9")
    _err(ei, "unknown hardware 'tpu-v9'", "h100-pcie5")
    p = tmp_path / "hw.json"
    p.write_text('{"format": "tide-moe-hardware/1",\n "gpu": }')
    with pytest.raises(TideError) as ei:
        HardwareProfile.load(p)
    _err(ei, "malformed hardware profile", str(p))
    p.write_text(json.dumps({"format": FORMAT, "gpu": {}}))
    with pytest.raises(TideError) as ei:
        HardwareProfile.load(p)
    _err(ei, str(p))
