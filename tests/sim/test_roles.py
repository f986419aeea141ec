"""Roles, not names: a new policy is its class (with a role) and its test. Registered here, inside the test, it
appears in explore's rows and table, in a study's headline, in the paper table and in the reports, with no other
edit."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("simpy", exc_type=ImportError)  # absent on the GPU machine: skip, not a collection error
pytest.importorskip("tqdm", exc_type=ImportError)

import offload.policies as policies  # noqa: E402
from offload.policies import KEEP, POLICIES, ROLES, LayerDecision, LayerView, Policy  # noqa: E402
from sim.explore import main  # noqa: E402
from sim.study import headline  # noqa: E402
from simcases import sim_row  # noqa: E402


class Toy(Policy):
    """A toy contender: experts 0..B-1 resident, never moved (cpu-route's placement under another name)."""

    name = "toy"
    role = "ours"

    def decide(self, view: LayerView) -> LayerDecision:
        return KEEP


class ToyBaseline(Toy):
    name = "toy-base"
    role = "baseline"


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(POLICIES, Toy.name, Toy)


def test_every_policy_has_a_known_role_and_the_lists_derive_from_them():
    assert all(cls.role in ROLES for cls in POLICIES.values())
    assert policies.BASELINES == policies.with_role(*policies.BASELINE_ROLES) == ("cpu-route", "static", "fetch-lru")
    assert policies.TAU_POLICIES == ("tide",) and "oracle" not in policies.RUNNABLE
    assert policies.with_role("ceiling") == ("all-gpu",) and policies.with_role("paper") == ("tide-opt",)


def test_a_toy_policy_appears_in_explore_rows_table_and_report(toy, tmp_path, capsys):
    out = tmp_path / "run"
    args = "--model llada2-tiny --gen-length 32 --seeds 1 --modes block-cache --quiet --jobs 1".split()
    args += ["--policies", "cpu-route", "static", "toy", "--out", str(out), "--json", str(tmp_path / "r.json")]
    assert main(args) == 0
    rows = json.loads((tmp_path / "r.json").read_text())
    assert [r["policy"] for r in rows] == ["cpu-route", "static", "toy"]
    table = capsys.readouterr().out
    assert "\n  toy " in table  # a row of the console table
    assert ">toy</td>" in (out / "report.html").read_text()  # a row of the report's table


def test_a_toy_policy_appears_in_a_study_headline_and_the_paper_table(toy, tmp_path, capsys):
    spec = {
        "name": "toy-study",
        "models": ["llada2-tiny"],
        "hardware": ["h100-pcie5"],
        "budgets": [16],
        "modes": ["block-cache"],
        "policies": ["cpu-route", "fetch-lru", "static", "tide-opt", "toy"],
        "tau": [1],
        "gen_length": 32,
        "seed": 0,
        "executors": ["tide-reference", "tide-moe"],
        "table": "paper-repro",
        "paper_setting": {"mode": "block-cache", "budget": {"llada2-tiny": 16}},
    }
    path = tmp_path / "toy.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "study"
    assert main(["--study", str(path), "--quiet", "--jobs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for executor in ("tide-reference", "tide-moe"):
        (h,) = json.loads((out / executor / "headline.json").read_text())
        assert h["toy"] > 0 and h["toy_vs_tide_opt"] == pytest.approx(h["toy"] / h["tide-opt"])
        study_md = (out / executor / "study.md").read_text()
        assert "| toy |" in study_md.splitlines()[0] and "| toy / tide-opt |" in study_md.splitlines()[0]
        assert "toy" in (out / executor / "report.html").read_text()
    paper = (out / "toy-study.md").read_text()
    head = paper.splitlines()[0]
    assert "| toy |" in head and "| toy / tide-opt |" in head and "| toy / bound |" in head
    assert paper in printed and [line.split(" | ")[0] for line in paper.splitlines()[2:]] == [
        "| tide-reference",
        "| tide-moe",
    ]


def test_a_toy_baseline_counts_as_the_best_baseline(monkeypatch):
    monkeypatch.setitem(POLICIES, ToyBaseline.name, ToyBaseline)
    rows = [
        sim_row("t", pol, tps, point="p", model="m", hardware="h")
        for pol, tps in (("cpu-route", 10.0), ("toy-base", 12.0), ("riptide", 18.0))
    ]
    (h,) = headline(rows)
    assert h["baseline_policy"] == "toy-base" and h["baseline"] == 12.0 and h["riptide"] == 18.0
