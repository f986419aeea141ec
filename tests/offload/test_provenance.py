"""A results page names the command that wrote it, the date, the commit, the machine and the load."""

from __future__ import annotations

import re

from offload import provenance


def test_page_has_provenance_then_the_table(tmp_path):
    began = provenance.start("python -m sim.explore", ["--model", "llada2-tiny", "--publish", "x.md"])
    page = provenance.write_page(tmp_path / "sub" / "page.md", "A title", "| a |\n|---|\n| 1 |", began, "A note.")
    text = page.read_text()
    assert text.startswith("# A title\n")
    assert "- command: `python -m sim.explore --model llada2-tiny --publish x.md`" in text
    assert re.search(r"- date: \d{4}-\d\d-\d\d \d\d:\d\d UTC; wall \d+\.\d s", text)
    assert re.search(r"- commit: ([0-9a-f]{7,}( \+ uncommitted changes)?|unknown \(not a git checkout\))", text)
    assert re.search(r"- machine: .+, \d+ logical cores, \d+ GiB; Python 3\.\d+\.\d+, numpy ", text)
    assert re.search(
        r"- load: 1-min load average [0-9.]+ per core at start, [0-9.]+ at end; this command's CPU "
        r"share [0-9.]+ of \d+ cores",
        text,
    )
    assert text.index("A note.") < text.index("| a |") and text.endswith("| 1 |\n")
    assert not list(page.parent.glob(".*.tmp"))  # written atomically: no temporary file left


def test_command_line_quotes_what_the_shell_would_split():
    assert (
        provenance.start("python benchmarks/first_hour.py", ["--out", "a b"]).command
        == "python benchmarks/first_hour.py --out 'a b'"
    )
