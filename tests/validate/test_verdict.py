"""validate.compare's verdict (issue 17): counters equal or not, timings compared or not comparable, and why.

The runs are real (runtime.generate, and gpu_validate.sh's bench in its CPU dry run); their CPU share is then set
in the record, so that "starved" and "not starved" do not depend on what else this machine is running."""

from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)
pytest.importorskip("plotly", exc_type=ImportError)

import json
import re
import shutil
from pathlib import Path

from runtime import generate as runtime_generate
from validate import compare


def _idle_profile(folder: Path, dst: Path, **shares: float) -> Path:
    """gpu_validate.sh's calibrated CPU profile, its measurements marked as having had the whole CPU (``shares``:
    a table's share to set instead)."""
    prof = json.loads((folder / "profile.json").read_text())
    cal = prof["calibration"]
    cal["cpu_share"], cal["cpu_share_by_table"] = 1.0, {k: shares.get(k, 1.0) for k in cal["cpu_share_by_table"]}
    dst.write_text(json.dumps(prof))
    return dst


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path]:
    """One runtime.generate run on the CPU (one torch thread): its metrics and trace."""
    d = tmp_path_factory.mktemp("pair")
    m, t = d / "m.json", d / "t.npz"
    assert (
        runtime_generate.main(
            [
                "--device",
                "cpu",
                "--threads",
                "1",
                "--policy",
                "tide(tau=2)",
                "--gen-length",
                "32",
                "--steps",
                "8",
                "--mode",
                "block-cache",
                "--quiet",
                "--metrics-out",
                str(m),
                "--trace-out",
                str(t),
            ]
        )
        == 0
    )
    return m, t


def _with(metrics: Path, dst: Path, **changes) -> Path:
    d = json.loads(metrics.read_text())
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    dst.write_text(json.dumps(d))
    return dst


def _compare(args: list[str], out: Path, capsys) -> tuple[int, str, dict]:
    code = compare.main([*args, "--out", str(out)])
    return code, capsys.readouterr().out, json.loads((out / "compare.json").read_text())


def _no_empty_table_nor_raw_json(html: str) -> None:
    text = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert "{}" not in text and "[]" not in text
    for table in re.findall(r"<table>.*?</table>", text, flags=re.S):
        assert table.count("<tr") >= 2, table


def test_a_run_against_a_calibrated_cpu_profile_is_compared(gpu_script_cpu, pair, tmp_path, capsys):
    m, t = pair
    prof = _idle_profile(gpu_script_cpu, tmp_path / "profile.json")
    code, out, res = _compare(
        [str(_with(m, tmp_path / "m.json", cpu_share=0.95)), str(t), "--hardware", str(prof)], tmp_path / "c", capsys
    )
    assert code == 0
    assert out.startswith(
        f"counters: equal (1 run)\ntimings: compared (simulated with {prof}, a validate.calibrate "
        "profile of the runs' machine; every run got at least 80% of the CPU)\n"
    )
    assert "sim tok/s" in out and "targets (GPU)" in out
    assert res["verdict"]["timings"]["comparable"] and "overall" in res["summary"]
    html = (tmp_path / "c" / "report.html").read_text()
    assert "<div class='verdict ok'>" in html and "plotly-graph-div" in html
    _no_empty_table_nor_raw_json(html)


def test_a_starved_run_is_flagged_and_its_timings_not_compared(gpu_script_cpu, pair, tmp_path, capsys):
    m, t = pair
    prof = _idle_profile(gpu_script_cpu, tmp_path / "profile.json")
    code, out, res = _compare(
        [str(_with(m, tmp_path / "m.json", cpu_share=0.3)), str(t), "--hardware", str(prof)], tmp_path / "c", capsys
    )
    assert code == 0  # not comparable is stated, not an error
    lines = out.splitlines()
    assert lines[0] == "counters: equal (1 run)"
    assert lines[1] == (
        "timings: not comparable \u2014 the machine was busy during tide(tau=2) [block-cache] (CPU share "
        "0.30): below 0.8 the measured times hold other processes' work; rerun on an idle machine"
    )
    for absent in ("sim tok/s", "MISSED", "targets", "Kendall", "tokens/s error"):
        assert absent not in out, absent
    assert res["summary"] == {"counter_mismatches": [], "targets": {"exact_counters": True}}
    assert res["runs"][0]["cpu_share"] == 0.3
    html = (tmp_path / "c" / "report.html").read_text()
    assert "<div class='verdict no'>" in html and "plotly" not in html
    _no_empty_table_nor_raw_json(html)
    md = (tmp_path / "c" / "table.md").read_text()
    assert md.splitlines()[1].startswith("**timings: not comparable") and "simulated tok/s" not in md


def test_one_starved_run_of_a_bench_stops_the_ranking(gpu_script_cpu, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(gpu_script_cpu, run)
    _idle_profile(gpu_script_cpu, run / "profile.json")
    d = json.loads((run / "runtime_results.json").read_text())
    for i, row in enumerate(d["runs"]):
        row["cpu_share"] = 0.5 if i == 3 else 1.0
    (run / "runtime_results.json").write_text(json.dumps(d))
    code, out, res = _compare([str(run)], tmp_path / "c", capsys)
    starved = res["runs"][3]["run"]
    assert code == 0 and f"the machine was busy during {starved} (CPU share 0.50)" in out.splitlines()[1]
    assert "Kendall" not in out and "rankings" not in res["summary"]
    assert "Kendall" not in (tmp_path / "c" / "report.html").read_text()


def test_a_starved_calibration_is_not_compared_against(gpu_script_cpu, pair, tmp_path, capsys):
    m, t = pair
    prof = _idle_profile(gpu_script_cpu, tmp_path / "profile.json", gpu_expert=0.5)
    code, out, res = _compare(
        [str(_with(m, tmp_path / "m.json", cpu_share=1.0)), str(t), "--hardware", str(prof)], tmp_path / "c", capsys
    )
    assert code == 0
    assert out.splitlines()[1] == (
        "timings: not comparable \u2014 the profile's calibration was starved (gpu_expert got "
        "less than 80% of the CPU): recalibrate on an idle machine"
    )


def test_a_record_from_before_the_cpu_share_takes_cpu_over_wall(gpu_script_cpu, pair, tmp_path, capsys):
    m, t = pair
    old = _with(m, tmp_path / "m.json", cpu_share=None)
    d = json.loads(old.read_text())
    prof = _idle_profile(gpu_script_cpu, tmp_path / "profile.json")
    code, out, res = _compare([str(old), str(t), "--hardware", str(prof)], tmp_path / "c", capsys)
    assert code == 0
    assert res["runs"][0]["cpu_share"] == pytest.approx(min(1.0, d["cpu_s"] / d["wall_s"]))  # one torch thread


def test_counters_that_differ_lead_the_verdict_and_exit_1(gpu_script_cpu, pair, tmp_path, capsys):
    m, t = pair
    d = json.loads(m.read_text())
    bad = _with(m, tmp_path / "m.json", promotions=d["promotions"] + 1)
    code, out, res = _compare([str(bad), str(t)], tmp_path / "c", capsys)  # and the default preset: not comparable
    assert code == 1
    assert out.startswith("counters: DIFFER for 1 of 1 run (tide(tau=2) [block-cache]): a bug")
    assert out.splitlines()[1] == "timings: not comparable:" and "BUG" in out
    assert res["verdict"]["counters"] == {"equal": False, "runs": 1, "differ": ["tide(tau=2) [block-cache]"]}
