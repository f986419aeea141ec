"""The README's quick start is what CI and benchmarks/first_hour.py run: two bash blocks, each self-contained
(it makes or enters the venv), the first the main job, the second the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.readme_blocks import QuickStartError, in_venv, quick_start_blocks

ROOT = Path(__file__).resolve().parents[2]


def test_readme_quick_start_is_two_self_contained_blocks():
    main_block, test_block = quick_start_blocks()
    for block in (main_block, test_block):
        first = block.splitlines()[0]
        assert "-m venv .venv" in first and ". .venv/bin/activate" in first, first
        assert 'pip install "torch==2.13.0" -e' in block  # the local CPU build, never an unpinned CUDA torch
    assert "python -m sim.explore" in main_block and '".[sim]"' in main_block
    assert "python -m pytest" in test_block and '".[test]"' in test_block


def test_in_venv_replaces_every_venv_path(tmp_path):
    main_block, _ = quick_start_blocks()
    moved = in_venv(main_block, tmp_path / "v")
    assert ".venv" not in moved and moved.count(str(tmp_path / "v")) == 2


def test_a_readme_of_another_shape_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Quick start\n\n```bash\necho one\n```\n\n## Next\n\n```bash\necho two\n```\n")
    with pytest.raises(QuickStartError, match="exactly two bash blocks"):
        quick_start_blocks(readme)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "readme_blocks.py"), str(readme)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and len(proc.stderr.splitlines()) == 1


def test_ci_reads_the_blocks_one_per_line():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "readme_blocks.py")], capture_output=True, text=True, check=True
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    assert [line.replace("\\n", "\n") for line in lines] == list(quick_start_blocks())
