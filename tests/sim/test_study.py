"""The paper study's grid, headline arithmetic, a small end-to-end study, and sweeps on a local Ray instance."""
from __future__ import annotations

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error
pytest.importorskip("tqdm", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error

import json


from sim.explore import main, policy_grid
from offload.hardware import HardwareProfile
from offload.model_spec import ModelSpec
from offload.errors import TideError
from sim.study import grid_points, headline, markdown_table, max_fitting_budget, paper_setting
from sim.study_spec import load_study
from simcases import sim_row

SMALL = ["--gen-length", "32", "--tau", "1", "4", "--quiet", "--no-report",
         "--policies", "all-gpu", "cpu-route", "fetch-lru", "tide"]


def test_budget_cap_fits_the_gpu():
    flash, h100 = ModelSpec.load("llada2.0-flash"), HardwareProfile.load("h100-pcie5")
    b = max_fitting_budget(flash, h100)
    used = flash.non_expert_bytes + b * flash.num_moe_layers * flash.expert_bytes
    assert used <= h100.gpu_memory_bytes - 4 * 2**30 < used + flash.num_moe_layers * flash.expert_bytes
    assert max_fitting_budget(ModelSpec.load("llada2.0-mini"), h100) == 256  # mini fits whole


def test_grid_collapses_capped_budgets_and_marks_the_paper_setting():
    study = load_study("paper")
    points = grid_points(study)
    mini = {p.budget for p in points if "mini" in p.model}
    flash = sorted({p.budget for p in points if "flash" in p.model})
    assert mini == {64, 128, 192}
    assert flash[0] == 64 and len(flash) == 2  # 50% and 75% both cap at what fits 80 GB
    paper = [p for p in points if paper_setting(p, points, study)]
    assert {(p.model, p.budget) for p in paper} == {("llada2.0-mini", 128), ("llada2.0-flash", flash[1])}
    assert all(p.mode == "prefix-recompute" for p in paper)


def test_headline_ratios():
    # all-gpu's row records every expert (32) as its budget, as the engine's do
    rows = [sim_row("t", pol, t, tau=tau, budget=32 if pol == "all-gpu" else 8, mode="block-cache", point="p",
                    model="m", hardware="h")
            for pol, t, tau in (("cpu-route", 10.0, None), ("fetch-lru", 20.0, None), ("tide", 25.0, 2),
                                ("tide", 30.0, 4), ("all-gpu", 100.0, None))]
    (h,) = headline(rows)
    assert h["baseline"] == pytest.approx(20.0) and h["baseline_policy"] == "fetch-lru" and h["budget"] == 8
    assert h["tide"] == pytest.approx(30.0) and h["tide_best_tau"] == [4] and h["tide_vs_base"] == pytest.approx(1.5)
    assert h["riptide"] is None and h["riptide_vs_oracle"] is None and h["draws"] == 1
    assert h["recommended"] == "tide(tau=4)" and h["recommended_wins"] == 1.0  # all-gpu keeps no budget of 8


def test_headline_medians_and_ranges_over_draws():
    """Per draw the best baseline and tide's best tau; each ratio taken within a draw, then median and range."""
    spec = {0: (10.0, 20.0, (25.0, 30.0)), 1: (30.0, 15.0, (27.0, 24.0)), 2: (12.0, 11.0, (9.0, 33.0))}
    rows = []
    for draw, (cpu, lru, (t1, t4)) in spec.items():
        rows += [sim_row(f"t{draw}", pol, t, tau=tau, budget=8, mode="block-cache", point="p", model="m", hardware="h",
                         draw=draw)
                 for pol, t, tau in (("cpu-route", cpu, None), ("fetch-lru", lru, None), ("tide", t1, 1),
                                     ("tide", t4, 4))]
    (h,) = headline(rows)
    # best baselines 20, 30, 12; tide best 30 (tau 4), 27 (tau 1), 33 (tau 4); ratios 1.5, 0.9, 2.75
    assert h["draws"] == 3 and h["baseline"] == pytest.approx(20.0) and h["baseline_range"] == pytest.approx([12, 30])
    assert h["tide"] == pytest.approx(30.0) and h["tide_range"] == pytest.approx([27, 33])
    assert h["tide_vs_base"] == pytest.approx(1.5) and h["tide_vs_base_range"] == pytest.approx([0.9, 2.75])
    assert h["tide_best_tau"] == [4, 1, 4] and h["baseline_policy"] in ("fetch-lru", "cpu-route")
    assert h["recommended"] == "tide best" and h["recommended_wins"] == pytest.approx(2 / 3)
    table = markdown_table([h])
    assert "30.0 [27.0-33.0] (4/1)" in table and "tide best (67%)" in table


def test_policy_grid():
    assert policy_grid(["tide", "cpu-route", "tide"], [4, 1]) == [("tide", {"tau": 1}), ("tide", {"tau": 4}),
                                                                  ("cpu-route", {})]
    # a spec with tau runs once as written; a spec given twice (or equal to a swept one) runs once
    assert policy_grid(["tide(tau=3)", "riptide(prefetch=false)", "tide", "tide(tau=1)"], [1, 2]) == [
        ("tide", {"tau": 3}), ("riptide", {"prefetch": False}), ("tide", {"tau": 1}), ("tide", {"tau": 2})]


def test_a_study_is_a_file(tmp_path):
    spec = {"name": "tiny", "models": ["llada2-tiny"], "hardware": ["h100-pcie5"], "fractions": [0.5],
            "modes": ["block-cache"], "policies": ["cpu-route", "tide(tau=2)"], "tau": [1], "gen_length": 32,
            "seed": 1, "paper_setting": {"mode": "block-cache", "budget": {"llada2-tiny": 16}}}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert main(["--study", str(path), "--quiet", "--no-report", "--jobs", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["label"] for r in rows] == ["cpu-route", "tide(tau=2)"] and all(r["budget"] == 16 for r in rows)
    assert json.loads((out / "headline.json").read_text())[0]["paper_setting"] is True
    assert json.loads((out / "config.json").read_text())["study"]["models"] == ["llada2-tiny"]


@pytest.mark.parametrize("edit,match", [
    ({"fractions": [0]}, r"fractions must be in \(0, 1\]"), ({"modes": ["decode"]}, "modes must be among"),
    ({"tau": []}, "tau must be a non-empty list"), ({"policies": ["tide(tua=1)"]}, "no parameter tua"),
    ({"gen_length": 0}, "gen_length must be an integer >= 1"), ({"extra": 1}, "unknown field extra"),
    ({"seeds": 0}, r"seeds must be an integer in \[1, 64\], got 0"), ({"seeds": 2.5}, "seeds must be an integer"),
])
def test_bad_study_files_are_one_line_errors(tmp_path, edit, match):
    spec = {**json.loads(json.dumps(load_study("paper").to_dict())), **edit}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(TideError, match=match) as exc:
        load_study(str(path))
    assert "\n" not in str(exc.value)
    with pytest.raises(TideError, match="no such file"):
        load_study(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("args,match", [
    (["--study", "paper", "--model", "llada2.0-flash"], "--model would be ignored"),
    (["--study", "paper", "--prompt-length", "8", "--timeline"], "--prompt-length, --timeline would be ignored"),
    (["--trace", "x.npz", "--gen-length", "8"], "--trace replays recorded traces: --gen-length would be ignored"),
])
def test_flags_a_run_would_ignore_are_refused(args, match):
    with pytest.raises(TideError, match=match):
        main(args)


def test_small_paper_study_end_to_end(tmp_path):
    out = tmp_path / "study"
    assert main(["--study", "paper", *SMALL, "--seeds", "2", "--out", str(out), "--jobs", "2"]) == 0
    rows = json.loads((out / "results.json").read_text())
    lines = json.loads((out / "headline.json").read_text())
    assert len(lines) == 20 and len(rows) == 20 * 2 * 5  # points x draws x policy runs
    assert sum(h["paper_setting"] for h in lines) == 4
    assert all(h["draws"] == 2 and h["static"] is None for h in lines)  # static was not asked for
    for h in lines:  # every ranged column: min <= median <= max
        assert h["baseline_range"][0] <= h["baseline"] <= h["baseline_range"][1]
        assert h["tide_vs_base_range"][0] <= h["tide_vs_base"] <= h["tide_vs_base_range"][1]
    table = (out / "study.md").read_text()
    assert table.count("**paper**") == 4 and table.startswith("| setting |") and table.count(" [") >= 20
    assert json.loads((out / "config.json").read_text())["study"]["seeds"] == 2


def test_sweep_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is an optional extra (pip install -e '.[ray]')")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        args = [*SMALL, "--modes", "block-cache", "--seeds", "1", "--policies", "cpu-route", "tide"]
        main([*args, "--ray", "auto", "--out", str(tmp_path / "r"), "--json", str(tmp_path / "ray.json")])
    finally:
        ray.shutdown()
    main([*args, "--jobs", "1", "--out", str(tmp_path / "l"), "--json", str(tmp_path / "local.json")])
    on_ray = json.loads((tmp_path / "ray.json").read_text())
    local = json.loads((tmp_path / "local.json").read_text())
    assert [r["label"] for r in on_ray] == [r["label"] for r in local]
    assert [r["sim_time_s"] for r in on_ray] == [r["sim_time_s"] for r in local]


def test_an_autoregressive_study(tmp_path):
    """issue 13: autoregressive decode is a study mode like the diffusion ones (synthetic AR traces per draw)."""
    spec = {"name": "ar", "models": ["qwen3-30b-a3b"], "hardware": ["h100-pcie5"], "fractions": [0.25],
            "modes": ["autoregressive"], "policies": ["cpu-route", "static", "tide"], "tau": [1, 8],
            "gen_length": 48, "seed": 0, "seeds": 2}
    path = tmp_path / "ar.json"
    path.write_text(json.dumps(spec))
    assert main(["--study", str(path), "--quiet", "--no-report", "--jobs", "1", "--out", str(tmp_path / "o")]) == 0
    (h,) = json.loads((tmp_path / "o" / "headline.json").read_text())
    assert h["mode"] == "autoregressive" and h["draws"] == 2 and h["budget"] == 32
    assert h["static"] is not None and h["tide_best_tau"] and h["recommended"] in ("cpu-route", "static", "tide best",
                                                                                    "tide(tau=1)", "tide(tau=8)")


def test_generation_length_and_trace_files_are_study_axes(tmp_path):
    """A list of gen_length is an axis of the grid; recorded trace files replace the synthetic draws (those of one
    mode are its draws); a study of files refuses the synthetic options."""
    spec = {"name": "gens", "models": ["llada2-tiny"], "hardware": ["h100-pcie5"], "budgets": [16],
            "modes": ["block-cache"], "policies": ["cpu-route", "static"], "tau": [1], "gen_length": [32, 64],
            "seed": 0, "seeds": 2}
    (tmp_path / "gens.json").write_text(json.dumps(spec))
    assert main(["--study", str(tmp_path / "gens.json"), "--quiet", "--no-report", "--jobs", "1",
                 "--out", str(tmp_path / "g")]) == 0
    lines = json.loads((tmp_path / "g" / "headline.json").read_text())
    assert [h["mode"] for h in lines] == ["block-cache, 32 tokens", "block-cache, 64 tokens"]
    assert all(h["draws"] == 2 and h["budget"] == 16 for h in lines)
    files = sorted(str(p) for p in (tmp_path / "g" / "traces").glob("block-cache-32-draw*.npz"))
    spec = {k: spec[k] for k in ("models", "hardware", "budgets", "policies", "tau")}
    (tmp_path / "files.json").write_text(json.dumps({**spec, "name": "files", "traces": files}))
    assert main(["--study", str(tmp_path / "files.json"), "--quiet", "--no-report", "--jobs", "1",
                 "--out", str(tmp_path / "f")]) == 0
    (h,) = json.loads((tmp_path / "f" / "headline.json").read_text())
    assert h["mode"] == "block-cache" and h["draws"] == 2 and h["static"] == lines[0]["static"]
    with pytest.raises(TideError, match="replays trace files: --seeds would be ignored"):
        main(["--study", str(tmp_path / "files.json"), "--seeds", "2"])
    (tmp_path / "bad.json").write_text(json.dumps({**spec, "name": "bad", "traces": files, "seed": 1}))
    with pytest.raises(TideError, match="takes the rest from the traces: seed would be ignored"):
        load_study(str(tmp_path / "bad.json"))
