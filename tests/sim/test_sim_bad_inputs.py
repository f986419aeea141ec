"""Bad inputs to the simulator's CLIs and study files end in one line and exit status 2 at once (issue 17 item 6):
--seeds bounded, every study field of the wrong type named; one default prompt length."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.cli import DEFAULT_PROMPT_LENGTH
from offload.errors import TideError
from sim.study_spec import MAX_SEEDS, load_study, study_from_dict

PAPER = json.loads((Path(__file__).resolve().parents[2] / "sim" / "studies" / "paper.json").read_text())


def cli(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "sim.explore", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )
    return p, time.perf_counter() - t0


def assert_one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    err = p.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err


@pytest.mark.parametrize("args", [["--seeds", "1000000"], ["--seeds", "0"], ["--study", "paper", "--seeds", "65"]])
def test_seeds_are_bounded(tmp_path, args):
    """`sim.explore --seeds 1000000` ran without bound and printed nothing."""
    p, took = cli(*args, "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_line_error(p, f"--seeds must be an integer in [1, {MAX_SEEDS}]")
    assert took < 60 and not (tmp_path / "run").exists()


def test_seeds_limit_is_in_the_help(tmp_path):
    p, _ = cli("--help", cwd=tmp_path)
    text = " ".join(p.stdout.split())
    assert f"at most {MAX_SEEDS}" in text and MAX_SEEDS == 64
    assert f"prompt tokens (default {DEFAULT_PROMPT_LENGTH})" in text


def test_a_study_file_with_fractions_half(tmp_path):
    """`"fractions": "half"` gave an AttributeError at sim/study_spec.py."""
    f = tmp_path / "s.json"
    f.write_text(json.dumps({**PAPER, "fractions": "half"}))
    p, took = cli("--study", str(f), cwd=tmp_path)
    assert_one_line_error(p, 'fractions must be a non-empty list of numbers, got "half"')
    assert took < 60


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("fractions", "half", "fractions must be a non-empty list of numbers"),
        ("fractions", [0.5, "x"], "fractions must be a non-empty list of numbers"),
        ("fractions", [True], "fractions must be a non-empty list of numbers"),
        ("models", "llada2.0-mini", "models must be a non-empty list of strings"),
        ("hardware", [1], "hardware must be a non-empty list of strings"),
        ("modes", {"a": 1}, "modes must be a non-empty list of strings"),
        ("policies", [], "policies must be a non-empty list of strings"),
        ("tau", [1.5], "tau must be a non-empty list of integers"),
        ("tau", "1", "tau must be a non-empty list of integers"),
        ("gen_length", "1024", "gen_length must be an integer >= 1"),
        ("seed", 1.0, "seed must be an integer >= 0"),
        ("seeds", 65, "seeds must be an integer in [1, 64]"),
        ("seeds", "3", "seeds must be an integer in [1, 64]"),
        ("reserve_gib", "4", "reserve_gib must be a number >= 0"),
        ("reserve_gib", True, "reserve_gib must be a number >= 0"),
        ("name", 7, "name must be a non-empty string"),
        ("name", "", "name must be a non-empty string"),
        ("description", ["x"], "description must be a string"),
        ("paper_setting", "prefix-recompute", "paper_setting must be an object"),
        ("paper_setting", {"mode": "autoregressive", "budget": {}}, "its mode must be one of the study's modes"),
        ("paper_setting", {"mode": "block-cache", "budget": {"llada2.0-mini": "most"}}, "budget maps models"),
        ("paper_setting", {"mode": "block-cache", "budget": {"other": 8}}, "budget names other"),
        ("paper_setting", {"mode": "block-cache", "width": 3}, "paper_setting must be an object"),
    ],
)
def test_every_study_field_has_its_type_checked(key, value, needle):
    with pytest.raises(TideError) as exc:
        study_from_dict({**PAPER, key: value}, "s.json")
    msg = str(exc.value)
    assert msg.startswith("study s.json: ") and needle in msg and "\n" not in msg, msg


def test_the_packaged_studies_still_load():
    for name in ("paper", "paper-repro"):
        s = load_study(name)
        assert 1 <= s.seeds <= MAX_SEEDS and s.paper_setting["mode"] in s.modes


def test_one_default_prompt_length_in_the_generators():
    from traces.synthetic import SyntheticConfig
    from traces.synthetic_ar import ARConfig

    assert SyntheticConfig().prompt_length == ARConfig().prompt_length == DEFAULT_PROMPT_LENGTH
    from sim.explore import parse_args

    assert parse_args([]).prompt_length == DEFAULT_PROMPT_LENGTH
