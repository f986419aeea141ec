"""sim.report: the HTML report, written from a few hand-made rows."""
from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

pytest.importorskip("plotly")

from offload.errors import TideError  # noqa: E402
from simcases import sim_row as row  # noqa: E402
from sim.report import SECTION_TITLES, speedups, write_report  # noqa: E402


def rows() -> list[Any]:
    out = []
    for trace, scale in (("prefix-recompute", 1.0), ("block-cache", 2.0)):
        out += [row(trace, "all-gpu", 100 * scale, budget=256, hit=1.0), row(trace, "cpu-route", 20 * scale, hit=0.3),
                row(trace, "fetch-lru", 25 * scale, hit=1.0)]
        out += [row(trace, "tide", (30 + t) * scale, tau=t, hit=0.9 - 0.05 * t) for t in (1, 2, 4, 8)]
    return out


def test_report_written(tmp_path):
    config = {"model": "llada2.0-flash", "hardware": "h100-pcie5", "budget": 64, "taus": [1, 2, 4, 8],
              "note": "<script>alert(1)</script>"}
    out = write_report(tmp_path / "report.html", rows(), config, title="Test report")
    assert out == tmp_path / "report.html" and out.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left behind
    text = out.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    # the plotly.js bundle is embedded (offline), exactly once, and nothing is fetched from a CDN
    assert text.count("plotly.js v") >= 1 and len(text) > 1_000_000
    assert 'src="https://cdn' not in text
    assert text.count("Plotly.newPlot") >= len(SECTION_TITLES)  # one call per figure
    for title in SECTION_TITLES.values():
        assert title in text
    assert "Test report" in text and "Configuration" in text and "Summary" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script>alert(1)" not in text  # config escaped
    assert "tide(tau=8)" in text and "tokens/s" in text
    assert text.count("<tr") == len(rows()) + 1  # header + one row per result


def test_speedups_against_better_baseline():
    r = rows()
    ups = dict(((x.trace, x.label), u) for x, u in zip(r, speedups(r)))
    assert ups[("prefix-recompute", "fetch-lru")] == pytest.approx(1.0)
    assert ups[("prefix-recompute", "cpu-route")] == pytest.approx(20 / 25)
    assert ups[("block-cache", "tide(tau=8)")] == pytest.approx(38 / 25)
    assert ups[("block-cache", "all-gpu")] == pytest.approx(4.0)  # compared at the trace's only baseline budget


def test_report_edge_cases(tmp_path):
    with pytest.raises(TideError):
        write_report(tmp_path / "empty.html", [], {})
    # no tau policy and no baseline: still a valid report
    out = write_report(tmp_path / "one.html", [row("ar", "all-gpu", 10.0, budget=8)], {"x": 1})
    assert "Speedup" in out.read_text(encoding="utf-8")
    # several budgets: series carry the budget
    many = [row("t", "cpu-route", 10.0, budget=b) for b in (32, 64)] + [row("t", "tide", 12.0, tau=2, budget=b) for b in (32, 64)]
    text = write_report(tmp_path / "b.html", many, {}).read_text(encoding="utf-8")
    assert "tide B=32" in text and "tide B=64" in text


def test_package_imports_without_plotly():
    code = ("import sys; sys.modules['plotly'] = None\n"
            "import sim, offload.results, offload.cost, offload.policies, sim.engine, sim.chrome_trace\n"
            "assert 'plotly.graph_objects' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
