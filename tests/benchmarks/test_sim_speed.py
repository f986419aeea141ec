"""benchmarks/sim_speed.py on tiny settings: its replay table and page, its targets and verdicts, and the
paper study's grid over full-length draws (run on a small study)."""

from __future__ import annotations

from dataclasses import replace
from types import ModuleType

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

TINY = ["--no-pin", "--models", "llada2-tiny", "--policies", "tide(tau=4)", "all-gpu", "--executors", "tide-moe"]


@pytest.fixture()
def sim_speed() -> ModuleType:
    """benchmarks.sim_speed from the checkout, with the thread variables it sets on import restored."""
    from test_benchmark_cli import _bench

    return _bench("sim_speed")


def test_quick_run_prints_and_publishes_the_replay_table(sim_speed, tmp_path, capsys):
    page = tmp_path / "sim-speed.md"
    assert sim_speed.main([*TINY, "--quick", "--publish", str(page)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| llada2-tiny |")]
    assert [r.split(" | ")[2] for r in rows] == ["tide(tau=4)", "all-gpu"]
    assert "gen_length 128" in out and "No replay here has a target" in out and "## Studies" not in out
    text = page.read_text()
    assert text.startswith("# Simulator speed") and "- command: `python benchmarks/sim_speed.py" in text
    assert all(r in text for r in rows)


def test_a_full_length_replay_is_held_to_its_target(sim_speed, monkeypatch, capsys):
    # the tiny model stands in for flash: "full length" and its targets shrunk to what it can run in a second
    monkeypatch.setattr(sim_speed, "FULL_LENGTH", 64)
    monkeypatch.setattr(sim_speed, "REPLAY_TARGETS", {"llada2-tiny": {"*": 1e6, "all-gpu": 1e-9}})
    assert sim_speed.main([*TINY, "--quick", "--gen-length", "64", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 1e+06 | ok |" in out and "| 1e-09 | OVER |" in out
    assert "1 of 2 replays with a target are over it: llada2-tiny tide-moe all-gpu" in out


def test_the_issues_targets():
    from benchmarks.sim_speed import default_policies, replay_target

    assert "tide(tau=4)" in default_policies() and "tide" not in default_policies()
    assert replay_target("llada2.0-flash", "tide(tau=4)") == 0.3
    assert replay_target("llada2.0-flash", "all-gpu") == 0.3
    assert replay_target("llada2.0-flash", "riptide(prefetch=false)") == 1.0
    assert replay_target("llada2.0-mini", "tide(tau=4)") is None


def test_studies_are_timed_and_judged(sim_speed, monkeypatch, capsys):
    monkeypatch.setattr(sim_speed, "time_default_study", lambda jobs: (9.5, 300, 7.0))
    assert sim_speed.main([*TINY, "--gen-length", "64", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "| `python -m sim.explore --no-report --quiet --jobs 1` | 9.5 | 300 | 31.6 | 8 | OVER |" in out


def test_paper_study_grid_replays_full_length_draws(sim_speed, tmp_path):
    from sim.study_spec import load_study

    small = replace(
        load_study("paper"),
        models=("llada2-tiny",),
        hardware=("h100-pcie5",),
        modes=("block-cache",),
        policies=("all-gpu", "tide"),
        tau=(4,),
        seeds=1,
        gen_length=(64,),
    )
    from offload.trace_io import read_trace
    from sim.study import make_traces

    traces = make_traces(replace(small, eos_stop=False), tmp_path)  # what time_paper_study replays

    (replay,) = traces[("llada2-tiny", "block-cache", None)]
    assert read_trace(replay.path).generated_tokens == 64  # no EOS stop: every block generated
    wall, runs = sim_speed.time_paper_study(small, jobs=1)
    assert runs == 3 * 2 and wall > 0  # budgets 25/50/75% of 32 experts x 2 policies, one draw, one mode
