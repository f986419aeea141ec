"""``--publish PAGE.md``: the measuring command writes its own results page (offload/provenance.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("simpy")

from sim.explore import main as explore  # noqa: E402


def test_explore_publishes_its_table_with_provenance(tmp_path, capsys):
    page = tmp_path / "docs" / "explore.md"
    args = [
        "--model",
        "llada2-tiny",
        "--gen-length",
        "32",
        "--seeds",
        "1",
        "--policies",
        "all-gpu",
        "static",
        "--modes",
        "block-cache",
        "--quiet",
        "--no-report",
        "--jobs",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--publish",
        str(page),
    ]
    assert explore(args) == 0
    text = page.read_text()
    printed = capsys.readouterr().out
    assert text.startswith("# Explore: llada2-tiny on ")
    assert "- command: `python -m sim.explore --model llada2-tiny" in text
    recommended = next(line for line in printed.splitlines() if line.startswith("recommended:"))
    assert recommended in text  # the page holds what the console printed
    assert "static" in text and "```text" in text
