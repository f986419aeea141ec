"""sim.explore end to end on a small study, and its one-line errors on bad input."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error
pytest.importorskip("tqdm", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import json

from offload.trace_io import read_trace
import subprocess
import sys


from sim.explore import main
from offload.errors import TideError
from offload.policies.policy_file import read_policy_file
import numpy as np

from offload.policies import POLICIES, TAU_POLICIES, make_policy
from offload.trace_io import write_trace

SMALL = ["--gen-length", "64", "--prompt-length", "32", "--tau", "1", "3", "--quiet", "--seeds", "1"]


def test_small_study_writes_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out), "--json", str(tmp_path / "rows.json"), "--jobs", "2", "--timeline"]) == 0
    text = capsys.readouterr().out
    assert "recommended:" in text and "tide" in text
    for f in ("config.json", "results.json", "report.html", "recommended-policy.json", "timeline.json",
              "traces/prefix-recompute.npz", "traces/block-cache.npz"):
        assert (out / f).is_file(), f
    rows = json.loads((tmp_path / "rows.json").read_text())
    # 2 traces x (every policy once, tau policies once per tau)
    assert len(rows) == 2 * (len(POLICIES) + len(TAU_POLICIES))
    for r in rows:
        assert {"tokens_per_s", "sim_time_s", "h2d_bytes", "d2h_bytes", "hit_ratio", "promotions", "demotions",
                "cpu_assignments", "gpu_assignments"} <= set(r)  # the names README promises
        assert r["tokens_per_s"] > 0 and 0 <= r["hit_ratio"] <= 1
    assert {r["tau"] for r in rows if r["policy"] == "tide"} == {1, 3}
    config = json.loads((out / "config.json").read_text())
    assert config["budget"]["experts_per_layer"] == 128 and config["hardware"]["name"] == "H100-80GB-PCIe5"
    choice = read_policy_file(out / "recommended-policy.json")
    assert choice.policy != "all-gpu"  # the budget (128 of 256) rules the ceiling out
    assert POLICIES[choice.policy].causal  # the oracle is a bound, never a recommendation
    assert choice.experts_per_layer == 128
    best = max((r for r in rows if r["policy"] != "all-gpu" and r["causal"]), key=lambda r: r["tokens_per_s"])
    assert choice.predicted["tokens_per_s"] == pytest.approx(best["tokens_per_s"])


def test_parallel_equals_serial(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    args = [*SMALL, "--modes", "block-cache", "--no-report"]
    main([*args, "--out", str(tmp_path / "ra"), "--json", str(a), "--jobs", "1"])
    main([*args, "--out", str(tmp_path / "rb"), "--json", str(b), "--jobs", "2"])
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert [r["sim_time_s"] for r in ra] == [r["sim_time_s"] for r in rb]


def test_replays_a_trace_file(tmp_path):
    main([*SMALL, "--modes", "block-cache", "--no-report", "--out", str(tmp_path / "r1")])
    trace = tmp_path / "r1" / "traces" / "block-cache.npz"
    main(["--trace", str(trace), "--policies", "cpu-route", "--no-report", "--quiet",
          "--out", str(tmp_path / "r2"), "--json", str(tmp_path / "r2.json")])
    rows = json.loads((tmp_path / "r2.json").read_text())
    assert [r["trace"] for r in rows] == ["block-cache"]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sim.explore", "--quiet", "--no-report", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args,needle", [
    (["--model", "no-such-model"], "unknown model"),
    (["--hardware", "no-such-gpu"], "unknown hardware"),
    (["--tau", "0"], "tau"),
    (["--gpu-experts-per-layer", "0"], "at least one expert"),
    (["--gpu-experts-per-layer", "300"], "exceeds"),
    (["--model", "llada2.0-flash", "--gpu-experts-per-layer", "256"], "more than the 80 GiB"),
    (["--gpu-memory-gb", "0.01"], "cannot hold one expert"),
    (["--policies", "magic"], "unknown policy"),
    (["--trace", "/nonexistent/trace.npz"], "no such file"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, args, needle):
    proc = _cli(*args, "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err
    assert needle in err


def test_bad_config_and_mismatched_trace(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text("{not json")
    proc = _cli("--model", str(cfg), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "malformed config.json" in proc.stderr
    cfg.write_text(json.dumps({"model_type": "llama"}))
    proc = _cli("--model", str(cfg), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "unsupported model_type" in proc.stderr
    main([*SMALL, "--modes", "block-cache", "--no-report", "--out", str(tmp_path / "mini")])
    proc = _cli("--model", "llada2.0-flash", "--trace", str(tmp_path / "mini/traces/block-cache.npz"),
                "--gpu-experts-per-layer", "64", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "was recorded for llada2.0-mini (config hash" in proc.stderr
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00" * 100)
    proc = _cli("--trace", str(garbage), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "not a readable trace" in proc.stderr


def test_seeds_give_medians_ranges_and_a_share_of_wins(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--gen-length", "64", "--prompt-length", "32", "--tau", "2", "--quiet", "--no-report", "--modes",
            "block-cache", "--policies", "cpu-route", "static", "tide", "--seeds", "3", "--seed", "5"]
    assert main([*args, "--out", str(out), "--json", str(tmp_path / "rows.json")]) == 0
    text = capsys.readouterr().out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 3 * 3 and sorted({r["trace"] for r in rows}) == [f"block-cache-draw{d}" for d in (0, 1, 2)]
    assert "median [min-max] over 3 trace draws" in text and "fastest in" in text
    # draw d: trace seed --seed + d; draws 1 and 2 with the generator's uncertain parameters drawn
    heads = [read_trace(out / "traces" / f"block-cache-draw{d}.npz").header["origin"] for d in range(3)]
    assert [h["seed"] for h in heads] == [5, 6, 7]
    choice = read_policy_file(out / "recommended-policy.json")
    p = choice.predicted
    assert p["trace_draws"] == 3 and 0 < p["wins_share"] <= 1
    assert p["tokens_per_s_min"] <= p["tokens_per_s"] <= p["tokens_per_s_max"]
    mine = sorted(r["tokens_per_s"] for r in rows if r["policy"] == choice.policy)
    assert p["tokens_per_s"] == pytest.approx(mine[1])  # the median of three
    others = [sorted(r["tokens_per_s"] for r in rows if r["policy"] == q)[1] for q in ("cpu-route", "static", "tide")]
    assert p["tokens_per_s"] == pytest.approx(max(others))  # the highest median wins


def test_seeds_must_be_positive_and_are_synthetic_only(tmp_path):
    with pytest.raises(TideError, match=r"--seeds must be an integer in \[1, 64\]"):
        main(["--seeds", "0", "--quiet"])
    with pytest.raises(TideError, match="--seeds would be ignored"):
        main(["--trace", str(tmp_path / "t.npz"), "--seeds", "2"])


def test_every_row_carries_the_bound_and_no_run_beats_it(tmp_path):
    """issue 11: the bound (sim.bound) in every JSON row; each policy's simulated time is at least its bound."""
    args = ["--gen-length", "64", "--prompt-length", "32", "--tau", "1", "4", "--quiet", "--no-report", "--seeds", "1",
            "--model", "llada2-tiny", "--out", str(tmp_path / "r"), "--json", str(tmp_path / "rows.json")]
    assert main(args) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {r["policy"] for r in rows} == set(POLICIES)
    for r in rows:
        assert r["bound_s"] > 0 and r["bound_tokens_per_s"] == pytest.approx(r["generated_tokens"] / r["bound_s"])
        assert r["sim_time_s"] >= r["bound_s"] * (1 - 1e-9), r["label"]
    # one bound per trace and budget, shared by every policy that keeps to the budget
    for mode in ("prefix-recompute", "block-cache"):
        assert len({r["bound_s"] for r in rows if r["mode"] == mode and r["policy"] != "all-gpu"}) == 1


def test_trace_header_gives_model_and_budget(tmp_path):
    """issue 12 item 10: replaying a runtime trace needs no --model or budget flag: its header names them."""
    from runtime.diffusion import GenerationSettings
    from runtime.session import random_prompt

    pytest.importorskip("torch")
    import argparse

    from runtime.session import Session

    a = argparse.Namespace(threads=None, device="cpu", dtype=None, model="llada2-tiny", num_layers=None, seed=0,
                           strict=False, trust_remote_code=False)
    session = Session.from_args(a)
    budget = np.full(session.cfg.spec.num_moe_layers, 12)
    result, _ = session.run(make_policy("tide", tau=2), budget, random_prompt(session.cfg, 8, 0, session.device),
                            GenerationSettings(gen_length=32, block_length=8, steps=4))
    path = write_trace(result.trace, tmp_path / "run.npz")
    assert main(["--trace", str(path), "--policies", "cpu-route", "tide", "--tau", "2", "--quiet", "--no-report",
                 "--out", str(tmp_path / "r"), "--json", str(tmp_path / "rows.json")]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {r["budget"] for r in rows} == {12}  # the run's budget, not the default capped at every expert
    assert json.loads((tmp_path / "r" / "config.json").read_text())["model"]["name"] == "llada2-tiny"


@pytest.mark.parametrize("args,match", [
    (["--policies", "oracle"], "nothing the runtime can execute"),
    (["--gpu-memory-gb", "500"], "is more than NVIDIA H100 80GB has for experts"),
    (["--gen-length", "1048576"], "limited to 32768 tokens"),
])
def test_unbounded_or_silent_requests_are_refused_up_front(args, match):
    """issue 12 items 11 and 12: refused in one line before any work, not run or silently capped."""
    with pytest.raises(TideError, match=match) as exc:
        main([*args, "--quiet", "--no-report", "--out", "/nonexistent/never-written"])
    assert "\n" not in str(exc.value)


def test_a_long_sweep_says_how_many_runs_and_about_how_long(tmp_path, capsys, monkeypatch):
    """Above ESTIMATE_ABOVE_S the run count and an estimate come before the sweep; below it, nothing more."""
    import re

    import sim.explore as explore

    args = [*SMALL, "--modes", "block-cache", "--no-report", "--jobs", "1"]
    main([*args, "--out", str(tmp_path / "quiet"), "--json", str(tmp_path / "a.json")])
    assert ", est. " not in capsys.readouterr().out
    monkeypatch.setattr(explore, "ESTIMATE_ABOVE_S", 0.0)
    main([*args, "--out", str(tmp_path / "told"), "--json", str(tmp_path / "b.json")])
    lines = capsys.readouterr().out.splitlines()
    runs = len(POLICIES) + len(TAU_POLICIES)
    said = [line for line in lines if ", est. " in line]
    assert len(said) == 1 and re.fullmatch(rf"about {runs} runs, est\. \d+ s on 1 worker", said[0]), said
    # the timed run's row is kept in its place: the same rows as the run that printed nothing
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert [(r["policy"], r["tau"], r["sim_time_s"]) for r in a] == [(r["policy"], r["tau"], r["sim_time_s"]) for r in b]


def test_duration_reads_like_a_person_would_say_it():
    from sim.explore import duration

    assert [duration(s) for s in (0.4, 45, 70, 3725)] == ["0 s", "45 s", "1 min 10 s", "1 h 2 min"]


def test_a_long_study_says_about_how_long_after_its_run_count(tmp_path, capsys, monkeypatch):
    import sim.explore as explore

    spec = {"name": "tiny", "models": ["llada2-tiny"], "hardware": ["h100-pcie5"], "fractions": [0.5],
            "modes": ["block-cache"], "policies": ["cpu-route", "tide"], "tau": [1, 2], "gen_length": 32,
            "seed": 1}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    monkeypatch.setattr(explore, "ESTIMATE_ABOVE_S", 0.0)
    assert main(["--study", str(path), "--quiet", "--no-report", "--jobs", "1", "--out", str(tmp_path / "o")]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("study tiny"))
    assert lines[at].endswith("= 3 runs") and lines[at + 1].startswith("3 runs, est. ")
    rows = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["label"] for r in rows] == ["cpu-route", "tide(tau=1)", "tide(tau=2)"]  # the timed run in its place
