"""sim.report: the HTML report, written from a few hand-made rows and from a small explore run (issue 12,
item 15: a report that leads with the answer)."""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("plotly")

from offload.errors import TideError  # noqa: E402
from simcases import sim_row as row  # noqa: E402
from offload.hardware import HardwareProfile  # noqa: E402
from offload.policies import format_policy  # noqa: E402
from offload.results import SimRecord, from_json  # noqa: E402
from sim.report import SECTION_TITLES, figures, render_report, tau_axis, write_report  # noqa: E402
from sim.report_answer import clairvoyant_label, is_calibrated, speedups  # noqa: E402

ORACLE_LABEL = clairvoyant_label("oracle")  # the oracle's row and bar label


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


# ---- a report that leads with the answer (issue 12, item 15) -----------------------------------------------------
FIRST_SCREEN_CHARS = 3000


class _BodyText(HTMLParser):
    """The <body>'s text content as a browser shows it (script and style contents left out)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0
        self._in_body = False

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._in_body |= tag == "body"
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if self._in_body and not self._skip:
            self.parts.append(data)


def body_text(page: str) -> str:
    parser = _BodyText()
    parser.feed(page)
    return re.sub(r"\s+", " ", "".join(parser.parts))


@pytest.fixture(scope="module")
def explore_run(tmp_path_factory) -> Path:
    """A small explore run: llada2-tiny, gen length 64, two trace draws per mode, every policy."""
    pytest.importorskip("simpy", exc_type=ImportError)
    from sim.explore import main

    out = tmp_path_factory.mktemp("explore") / "run"
    assert main(["--model", "llada2-tiny", "--gen-length", "64", "--prompt-length", "32", "--seeds", "2",
                 "--tau", "1", "2", "4", "--quiet", "--jobs", "1", "--out", str(out)]) == 0
    return out


def _recommended_label(run: Path) -> str:
    choice = json.loads((run / "recommended-policy.json").read_text())
    return format_policy(choice["policy"], choice["params"])


def _rows(run: Path) -> list[SimRecord]:
    return [from_json(SimRecord, r) for r in json.loads((run / "results.json").read_text())]


def test_first_screen_states_the_recommended_policy(explore_run):
    """Proxy for "the first screen (1400x900) states the recommended policy": the word "recommended" and the
    recommended policy's label come before the first chart's div in the HTML, and within the first
    FIRST_SCREEN_CHARS (3000) characters of the <body>'s visible text (scripts and styles left out; a 1400x900
    window shows about 40 lines of 150 characters, and the lead stays well inside half of that)."""
    page = (explore_run / "report.html").read_text(encoding="utf-8")
    label = _recommended_label(explore_run)
    first_chart = page.index('class="plotly-graph-div"')
    lead = page[page.index('<section id="answer"'):page.index("</section>", page.index('<section id="answer"'))]
    assert page.index('<section id="answer"') < first_chart
    assert "Recommended" in lead and f'<b class="recommended">{label}</b>' in lead
    assert "tokens/s" in lead and "median of 2 trace draws" in lead and "fastest in" in lead
    assert "the best baseline" in lead and "of the bound" in lead
    screen = body_text(page)[:FIRST_SCREEN_CHARS]
    assert "recommended" in screen.lower() and label in screen
    # the first chart is the speedup chart, before the tau sweeps; the table and the configuration come last
    assert page.index('id="fig-speedup"') < page.index('id="fig-throughput"') < page.index('id="summary"')


def test_bold_row_is_the_recommended_causal_policy_not_the_oracle(explore_run):
    page = (explore_run / "report.html").read_text(encoding="utf-8")
    label = _recommended_label(explore_run)
    bold = re.findall(r'<tr class="best">(.*?)</tr>', page)
    assert len(bold) == 2  # one per trace draw of the recommended mode
    for tr in bold:
        cells = re.findall(r"<td>(.*?)</td>", tr)
        assert cells[2] == label and "oracle" not in tr
    assert re.search(r'<tr class="oracle"><td>[^<]*</td><td>[^<]*</td><td>' + re.escape(ORACLE_LABEL), page)
    assert page.count('<tr class="bound">') == 4 and "bound: no policy is faster" in page
    fig = figures(_rows(explore_run))["speedup"]  # the chart labels the oracle and draws the bound
    assert any(ORACLE_LABEL in list(t.y) for t in fig.data)
    assert any("bound: no policy is faster" in (a.text or "") for a in fig.layout.annotations)


def test_configuration_last_and_collapsed(explore_run):
    page = (explore_run / "report.html").read_text(encoding="utf-8")
    m = re.search(r'<details id="config"><summary>Configuration</summary><pre>(.*?)</pre></details>', page, re.S)
    assert m and "&quot;command&quot;" in m.group(1) and "<pre>" not in page[:m.start()]
    assert page.index('id="summary"') < m.start()


def _calibrated(preset: dict) -> dict:
    """A preset turned into what validate.calibrate writes: measured tables and a calibration record, no ranges."""
    d = {k: v for k, v in preset.items() if k != "ranges"}
    d["tables"] = {"copy_h2d": {"bytes": [1e6, 1e8], "seconds": [4e-5, 2.1e-3]}}
    d["calibration"] = {"repeats": 5, "held_out": {"copy_h2d": 0.02}}
    return HardwareProfile.from_dict(d, origin="calibrated.json").to_dict()


def test_caveat_for_a_preset_profile_only(explore_run):
    rows = _rows(explore_run)
    config = json.loads((explore_run / "config.json").read_text())
    assert not is_calibrated(config["hardware"]) and is_calibrated(_calibrated(config["hardware"]))
    page = (explore_run / "report.html").read_text(encoding="utf-8")
    caveat = re.search(r'<p class="caveat".*?</p>', page, re.S)
    assert caveat and page.index(caveat.group(0)) < page.index('class="plotly-graph-div"')
    assert "uncalibrated preset" in caveat.group(0) and "python -m validate.calibrate" in caveat.group(0)
    assert "--sensitivity" in caveat.group(0)
    calibrated = render_report(rows, {**config, "hardware": _calibrated(config["hardware"])})
    assert 'class="caveat"' not in calibrated and "validate.calibrate" not in calibrated


def _tide_opt(trace: str, tps: float, tau: int) -> Any:
    """tide-opt's row: the tau it chose, not a parameter."""
    return dataclasses.replace(row(trace, "tide-opt", tps, tau=tau), params={})


def test_tau_ticks_are_integers_and_tide_opt_outside_the_sweep_is_a_line():
    rs = [*rows(), _tide_opt("prefix-recompute", 33.0, 32), _tide_opt("block-cache", 70.0, 2)]
    fig = figures(rs)["throughput"]
    for axis in (fig.layout.xaxis, fig.layout.xaxis2):
        assert axis.tickmode == "array" and list(axis.tickvals) == [1, 2, 4, 8]
        assert all(isinstance(t, int) for t in axis.tickvals) and list(axis.ticktext) == ["1", "2", "4", "8"]
    opt = [t for t in fig.data if t.name.startswith("tide-opt")]
    outside = [t for t in opt if t.xaxis == "x"]  # prefix-recompute: chose 32, the sweep is 1-8
    assert all(32 not in list(t.x) for t in fig.data)  # nothing at tau = 32, outside the swept range
    assert len(outside) == 1 and outside[0].name == "tide-opt (chose tau=32)" and list(outside[0].x) == [1, 8]
    assert "tide-opt (chose tau=32)" in list(outside[0].text)  # labelled on the chart
    inside = [t for t in opt if t.xaxis == "x2"]  # block-cache: chose 2, inside: a marker at tau = 2
    assert len(inside) == 1 and list(inside[0].x) == [2] and inside[0].mode == "markers"


@pytest.mark.parametrize("taus, log", [(range(1, 17), False), ([1, 2, 4, 8, 16, 32, 64], True), (range(1, 41), False),
                                       ([3], False)])
def test_tau_axis_ticks_never_crowd(taus, log):
    import math

    axis = tau_axis(list(taus))
    ticks = axis["tickvals"]
    assert axis["tickmode"] == "array" and (axis["type"] == "log") == log
    assert all(isinstance(t, int) for t in ticks) and set(ticks) <= set(taus) and ticks[0] == min(taus)
    pos = [math.log10(t) for t in ticks] if log else ticks
    span = (pos[-1] - pos[0]) if len(ticks) > 1 else 1
    assert len(ticks) <= 16 and all(b - a >= span / 16 for a, b in zip(pos, pos[1:]))


def test_hand_rows_lead_with_the_fastest_causal_policy(tmp_path):
    """Without a recommendation passed in: the fastest causal policy other than all-gpu, never the oracle."""
    rs = rows() + [dataclasses.replace(row("block-cache", "oracle", 90.0), causal=False)]
    page = render_report(rs, {"hardware": "h100-pcie5"})
    lead = page[page.index('<section id="answer"'):page.index('class="plotly-graph-div"')]
    assert '<b class="recommended">tide(tau=8)</b> in block-cache mode' in lead and "the oracle's 90.0 tokens/s" in lead
    assert "1.52× the best baseline (fetch-lru" in lead and 'class="caveat"' in lead


# ---- issue 17, item 4: what the browser check (test_report_browser.py) needs, checked without a browser ----------
def test_run_it_names_the_policy_file_by_its_absolute_path(explore_run, tmp_path):
    """The "Run it" line works from the repository root or anywhere: the policy file by its absolute path."""
    import shlex

    page = (explore_run / "report.html").read_text(encoding="utf-8")
    m = re.search(r'<p class="meta" id="run-it">Run it: <code>(.*?)</code>', page)
    assert m
    argv = shlex.split(m.group(1).replace("&#x27;", "'"))
    assert argv[:4] == ["python", "-m", "runtime.generate", "--policy"]
    assert Path(argv[4]) == (explore_run / "recommended-policy.json").resolve() and Path(argv[4]).is_absolute()
    # a report written with no policy file beside it says where to stand
    text = write_report(tmp_path / "report.html", _rows(explore_run), {}).read_text(encoding="utf-8")
    assert "cd RUN_DIR &amp;&amp; python -m runtime.generate --policy recommended-policy.json" in text


def test_charts_in_reading_order_with_the_bound_explained(explore_run):
    page = (explore_run / "report.html").read_text(encoding="utf-8")
    heads = re.findall(r"<h2>\((\w)\) ", page)
    assert heads == ["a", "b", "c", "d", "e"]
    assert page.index('<section id="speedup"><h2>(a) ') < page.index('<section id="throughput"><h2>(b) ')
    fig = figures(_rows(explore_run))["speedup"]
    bound = [a.text for a in fig.layout.annotations if "bound" in (a.text or "")]
    assert bound and all("<br>within the budget (B=16): " in t for t in bound)
    # each panel: the 1x line's label at its foot, the bound's at its head (not both in one place)
    lines = [(a.text.startswith("bound"), a.y, a.yref) for a in fig.layout.annotations
             if "bound" in (a.text or "") or "best baseline" in (a.text or "")]
    panels = {ref for _, _, ref in lines}
    assert sorted(lines) == sorted([(False, 0, ref) for ref in panels] + [(True, 1, ref) for ref in panels])
    categories = {y for t in fig.data if t.type == "bar" for y in t.y}
    assert "all-gpu (all 32 experts: outside the budget)" in categories
    assert "all-gpu keeps every expert on the GPU, outside the budget" in page


def test_no_per_bar_colour_array_with_a_pattern(explore_run):
    """plotly.js warns "Invalid color specifier: Array(n)" for a bar trace whose marker colour is an array and
    that has a hatching pattern (12 warnings in the console of the default report); and every bar value is
    written horizontally (no inside text, which plotly turns and shrinks in a short bar)."""
    for key, fig in figures(_rows(explore_run)).items():
        for t in fig.data:
            if t.type != "bar":
                continue
            pattern = t.marker.pattern.shape if t.marker.pattern else None
            assert not (pattern and isinstance(t.marker.color, (list, tuple))), (key, t.name)
            assert t.textposition in (None, "none") and t.text is None, (key, t.name)
    lead = figures(_rows(explore_run))["speedup"]
    values = [a for a in lead.layout.annotations if (a.text or "").endswith("×") and "bound" not in a.text
              and "baseline" not in a.text]
    assert values and all(a.textangle in (None, 0) for a in values)
