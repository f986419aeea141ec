"""Hardware figure ranges (offload.hardware) and sim.sensitivity: validation, with_figure, swings, flips, order."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error
pytest.importorskip("tqdm", exc_type=ImportError)

import copy
import json

from offload.errors import TideError
from offload.executor import ExecutorProfile
from offload.hardware import HARDWARE_PRESETS, RANGE_FIGURES, HardwareProfile
from offload.model_spec import ModelSpec
from offload.trace_io import write_trace
from sim.sensitivity import Figure, FigureSwing, Outcome, sensitivity, uncertain_figures, varied
from sim.sweep import Task, model_payload

TINY = ModelSpec.load("llada2-tiny")
POLICIES = [("cpu-route", {}), ("static", {}), ("fetch-lru", {}), ("tide", {"tau": 4}), ("tide-opt", {})]


@pytest.fixture(scope="module")
def h100() -> dict:
    return HardwareProfile.load("h100-pcie5").to_dict()


@pytest.fixture(scope="module")
def tiny_trace(tmp_path_factory) -> str:
    from traces.synthetic import generate
    from traces.synthetic_draws import synthetic_draw

    cfg = synthetic_draw(TINY, "block-cache", 0, 0, gen_length=64, block_length=32, prompt_length=32)
    return str(write_trace(generate(TINY, cfg), tmp_path_factory.mktemp("tr") / "block-cache.npz"))


def _tasks(trace: str, hw: dict) -> list[Task]:
    return [Task(trace, "block-cache", model_payload(TINY), hw, TINY.num_experts // 2, p, prm) for p, prm in POLICIES]


def _with_ranges(h100: dict, ranges: dict) -> dict:
    d = copy.deepcopy(h100)
    d["ranges"] = ranges
    return d


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


# ---- ranges in hardware profiles ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HARDWARE_PRESETS))
def test_presets_give_a_range_and_a_reason_for_every_guessed_figure(name):
    hw = HardwareProfile.load(name)
    for path in ("gpu.matmul_tflops", "gpu.hbm_gbps", "gpu.kernel_overhead_us", "cpu.matmul_tflops", "cpu.dram_gbps",
                 "cpu.expert_overhead_us", "link.h2d_gbps", "link.d2h_gbps", "link.latency_us", "step_overhead_us",
                 "host.dram_gbps"):
        lo, hi = hw.ranges[path]
        assert lo <= hw.figure(path) <= hi and lo < hi, path
    reasons = next(s for s in hw.sources if s.startswith("ranges"))
    assert all(p in reasons for p in hw.ranges)
    assert HardwareProfile.from_dict(json.loads(json.dumps(hw.to_dict()))) == hw  # ranges survive the round trip


def test_profiles_without_ranges_load_as_before(h100):
    d = copy.deepcopy(h100)
    del d["ranges"]
    hw = HardwareProfile.from_dict(d)
    assert hw.ranges == {} and "ranges" not in hw.to_dict()


@pytest.mark.parametrize("ranges,needles", [
    ({"cpu.tflops": [1, 2]}, ("ranges names unknown figure 'cpu.tflops'",)),
    ({"cpu.threads": [8, 64]}, ("unknown figure 'cpu.threads'",)),
    ({"cpu.matmul_tflops": [21.0, 2.0]}, ("ranges.cpu.matmul_tflops has low 21 > high 2",)),
    ({"cpu.matmul_tflops": [5.0, 21.0]}, ("cpu.matmul_tflops = 4 lies outside its range [5, 21]",)),
    ({"cpu.matmul_tflops": [2.0]}, ("ranges.cpu.matmul_tflops must be [low, high]",)),
    ({"gpu.hbm_gbps": [0.0, 3350.0]}, ("ranges.gpu.hbm_gbps must be [low, high] of positive numbers",)),
    ({"host.pageable_fraction": [0.3, 1.5]}, ("host.pageable_fraction", "(0, 1]")),
    ({"host.pinned_gib": [0.0, 64.0]}, ("ranges.host.pinned_gib given but the profile sets no host.pinned_gib",)),
    ([1, 2], ("ranges must be an object",)),
])
def test_bad_ranges_are_one_line_errors(h100, ranges, needles):
    with pytest.raises(TideError) as e:
        HardwareProfile.from_dict(_with_ranges(h100, ranges), origin="my-hw.json")
    _one_line(e, "my-hw.json", *needles)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k in ("gpu", "cpu", "link", "host"):
            out.update(_flat(v, f"{k}."))
        else:
            out[prefix + k] = v
    return out


@pytest.mark.parametrize("path", sorted(RANGE_FIGURES))
def test_with_figure_changes_exactly_one_figure(h100, path):
    hw = HardwareProfile.from_dict(h100)
    value = 0.4 if path == "host.pageable_fraction" else 123.0
    new = hw.with_figure(path, value)
    assert new.figure(path) == value and hw.figure(path) != value  # the original is untouched (frozen)
    before, after = _flat(hw.to_dict()), _flat(new.to_dict())
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {path}


def test_with_figure_refuses_bad_values_in_one_line(h100):
    hw = HardwareProfile.from_dict(h100)
    with pytest.raises(TideError) as e:
        hw.with_figure("gpu.hbm_gbps", 0.0)
    _one_line(e, "gpu.hbm_gbps must be a positive number")
    with pytest.raises(TideError) as e:
        hw.with_figure("gpu.speed", 1.0)
    _one_line(e, "unknown hardware figure 'gpu.speed'")


# ---- the analysis -------------------------------------------------------------------------------------------
def test_degenerate_range_has_zero_swing_and_costs_no_run(h100, tiny_trace):
    v = h100["cpu"]["matmul_tflops"]
    s = sensitivity(_tasks(tiny_trace, _with_ranges(h100, {"cpu.matmul_tflops": [v, v]})), False, workers=1)
    (row,) = s.rows
    assert s.runs == 0 and row.swing == 0 and row.paper_swing == 0 and row.flips == (False, False)
    assert not row.flagged() and row.low == row.high == s.base


def test_a_figure_that_flips_the_recommendation_is_reported(h100, tiny_trace, tmp_path):
    # a free CPU expert at the low end makes the CPU side cheap enough that a CPU-using placement wins
    hw = _with_ranges(h100, {"cpu.expert_overhead_us": [0.0, 1e4], "link.latency_us": [8.0, 8.0]})
    s = sensitivity(_tasks(tiny_trace, hw), False, workers=1)
    row = next(r for r in s.rows if r.figure.path == "cpu.expert_overhead_us")
    assert any(row.flips) and row.flagged()
    flipped = row.low if row.flips[0] else row.high
    assert flipped.choice != s.base.choice
    assert "FLIP" in s.table() and s.rows[0] is row  # a flip outranks the degenerate figure
    from sim.sensitivity import write_sensitivity

    d = json.loads(write_sensitivity(tmp_path / "sensitivity.json", s).read_text())
    assert d["flagged"] == ["cpu.expert_overhead_us"] and d["figures"][0]["flips"] == list(row.flips)


def _swing(label: str, lo: float, hi: float) -> FigureSwing:
    base = Outcome("tide", "block-cache", "tide(tau=4)", 2.0, 1.5)
    return FigureSwing(Figure("hardware", label, 1.0, 0.5, 2.0), base, Outcome("tide", "block-cache", "tide", lo, 1.5),
                       Outcome("tide", "block-cache", "tide", hi, 1.5))


def test_table_is_sorted_by_swing(h100, tiny_trace):
    s = sensitivity(_tasks(tiny_trace, h100), False, workers=2)
    swings = [r.swing for r in s.rows]
    assert swings == sorted(swings, reverse=True) and len(s.rows) == len(HardwareProfile.from_dict(h100).ranges)
    lines = s.table().splitlines()[2:]
    assert [ln.split()[0] for ln in lines] == [r.figure.label for r in s.rows]
    # and the swing itself: max |R(end) / R_base - 1|
    hand = _swing("x", 1.8, 2.5)
    assert hand.deltas == pytest.approx((-0.1, 0.25)) and hand.swing == pytest.approx(0.25) and hand.flagged()
    assert not _swing("y", 1.9, 2.1).flagged()


def test_executor_figures_join_when_the_run_uses_that_executor(h100, tiny_trace):
    ref = ExecutorProfile.load("tide-reference").to_dict()
    figs = {f.label: f for f in uncertain_figures(h100, ref)}
    assert {"cpu.matmul_tflops", "executor.decide_us.tide", "executor.cpu_expert_overhead_us"} <= set(figs)
    assert not any(f.owner == "executor" for f in uncertain_figures(h100, None))  # the default executor: none
    task = Task(tiny_trace, "block-cache", model_payload(TINY), h100, 16, "tide", {"tau": 4}, executor=ref)
    t2 = varied(task, figs["executor.decide_us.tide"], 30.0)
    assert ExecutorProfile.from_dict(t2.executor).decide_us["tide"] == 30.0 and task.executor["decide_us"]["tide"] == 14.0
    t3 = varied(task, figs["cpu.matmul_tflops"], 21.0)
    assert t3.hardware["cpu"]["matmul_tflops"] == 21.0 and t3.executor == ref


# ---- sim.explore --sensitivity ------------------------------------------------------------------------------
def test_explore_sensitivity_writes_json_and_a_report_section(h100, tmp_path, capsys):
    from sim.explore import main

    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps(_with_ranges(h100, {"cpu.expert_overhead_us": [0.0, 60.0]})))
    out = tmp_path / "run"
    assert main(["--model", "llada2-tiny", "--hardware", str(hw), "--modes", "block-cache", "--gen-length", "64",
                 "--prompt-length", "32", "--policies", "static", "fetch-lru", "tide", "--tau", "4", "--seeds", "1",
                 "--quiet", "--jobs", "1", "--sensitivity", "--out", str(out)]) == 0
    assert "sensitivity: recommended" in capsys.readouterr().out
    d = json.loads((out / "sensitivity.json").read_text())
    assert [f["figure"] for f in d["figures"]] == ["cpu.expert_overhead_us"] and d["runs"] == 2 * 3
    html = (out / "report.html").read_text()
    assert 'id="sensitivity"' in html and "fig-sensitivity" in html


def test_explore_refuses_sensitivity_with_a_study():
    from sim.explore import main

    with pytest.raises(TideError) as e:
        main(["--study", "paper", "--sensitivity"])
    _one_line(e, "--sensitivity", "--study")
