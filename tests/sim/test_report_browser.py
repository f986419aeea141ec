"""The report in a real browser (issue 17, item 4): ``report.html`` rendered in headless Chromium
(benchmarks/report_screenshot.py: Debian's chromium and chromium-driver, driven by selenium).

For a small explore run (with --sensitivity: every chart of the lead, the tau sweeps, bytes, utilisation and the
tornado) and a small study: no console message at warning level or above (plotly.js writes its warnings with
console.trace, which the page's console hook catches); every chart drawn with a non-zero size; the
recommendation inside the first 1400x900 screen; no legend's box intersecting a chart title (the figure's or a
subplot's) or another chart, and no two labels of a chart over each other, at 1400 and 1024 CSS pixels wide;
every title inside its chart; the charts'
sections in reading order; the "Run it" line's policy file an absolute path that exists. Skipped, with the
reason, where Chromium, chromedriver or selenium is missing (.ci/run installs them).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("plotly")
pytest.importorskip("simpy")
pytest.importorskip("selenium", reason='selenium is not installed (pip install "selenium>=4.20,<5")')

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report_screenshot as rs  # noqa: E402

_WHY = rs.missing()
if _WHY is not None:
    pytest.skip(_WHY, allow_module_level=True)

SCREEN = rs.VIEWPORT  # 1400 x 900: the first screen
WIDTHS = (1400, 1024)  # overlap checks at a wide and at a narrower window
BAD_LEVELS = {"SEVERE", "WARNING", "warn", "error", "trace", "assert", "uncaught"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """Two reports: a small explore run with --sensitivity (llada2-tiny, 2 trace draws per mode: whiskers) and a
    small study (2 budgets x 2 modes: the speedup chart on several rows, no single answer)."""
    from sim.explore import main

    base = tmp_path_factory.mktemp("browser")
    explore = base / "explore"
    assert (
        main(
            [
                "--model",
                "llada2-tiny",
                "--gen-length",
                "32",
                "--prompt-length",
                "16",
                "--seeds",
                "2",
                "--tau",
                "1",
                "4",
                "--sensitivity",
                "--quiet",
                "--jobs",
                "1",
                "--out",
                str(explore),
            ]
        )
        == 0
    )
    spec = {
        "name": "browser",
        "models": ["llada2-tiny"],
        "hardware": ["h100-pcie5"],
        "fractions": [0.25, 0.5],
        "modes": ["block-cache", "prefix-recompute"],
        "tau": [1, 4],
        "gen_length": 32,
        "seed": 1,
        "seeds": 1,
        "policies": ["cpu-route", "static", "fetch-lru", "tide", "tide-opt", "riptide", "oracle", "all-gpu"],
        "paper_setting": {"mode": "block-cache", "budget": {"llada2-tiny": 16}},
    }
    (base / "study.json").write_text(json.dumps(spec))
    study = base / "study"
    assert main(["--study", str(base / "study.json"), "--quiet", "--jobs", "1", "--out", str(study)]) == 0
    return {"explore": explore / "report.html", "study": study / "report.html"}


@pytest.fixture(scope="module")
def driver():
    with rs.browser(*SCREEN) as d:
        yield d


def _intersects(a: dict[str, float], b: dict[str, float], tol: float = 0.5) -> bool:
    """Whether two boxes overlap by more than ``tol`` CSS pixels both across and down (touching edges do not)."""
    return (
        min(a["right"], b["right"]) - max(a["left"], b["left"]) > tol
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > tol
    )


def _inside(inner: dict[str, float], outer: dict[str, float], tol: float = 1.0) -> bool:
    return (
        inner["left"] >= outer["left"] - tol
        and inner["right"] <= outer["right"] + tol
        and inner["top"] >= outer["top"] - tol
        and inner["bottom"] <= outer["bottom"] + tol
    )


def layout_problems(page: dict[str, Any]) -> list[str]:
    """What a reader would see wrong in ``rs.measure``'s boxes: a chart without a size, a legend over a title or
    over another chart, a title or a legend reaching out of its chart (cut off), two labels (annotations: titles,
    lines' labels, bar values) over each other."""
    out = []
    charts = page["charts"]
    if not charts:
        out.append("no chart on the page")
    for c in charts:
        if c["box"]["width"] <= 0 or c["box"]["height"] <= 0:
            out.append(f"{c['id']}: size {c['box']['width']}x{c['box']['height']}")
        for t in c["titles"]:
            if not _inside(t, c["box"]):
                out.append(f"{c['id']}: title {t['text']!r} reaches out of the chart (cut off)")
        for leg in c["legends"]:
            if not _inside(leg, c["box"]):
                out.append(f"{c['id']}: legend reaches out of the chart")
            out += [f"{c['id']}: legend over the title {t['text']!r}" for t in c["titles"] if _intersects(leg, t)]
            out += [
                f"{c['id']}: legend over the chart {o['id']}"
                for o in charts
                if o is not c and _intersects(leg, o["box"])
            ]
        notes = c["annotations"]
        out += [
            f"{c['id']}: label {a['text']!r} over label {b['text']!r}"
            for i, a in enumerate(notes)
            for b in notes[i + 1 :]
            if _intersects(a, b)
        ]
    return out


def console_problems(messages: list[dict[str, str]]) -> list[str]:
    """The console messages at warning level or above (the browser log's SEVERE and WARNING; the page's
    console.warn, console.error, console.trace (plotly.js's warnings), failed console.assert and uncaught errors)."""
    return [
        f"{m['level']}: {m['message'][:200]}"
        for m in messages
        if m["level"] in BAD_LEVELS or m["message"].startswith("WARN:")
    ]


@pytest.mark.parametrize("which", ["explore", "study"])
def test_report_in_chromium(reports, driver, which):
    report = reports[which]
    rs.set_viewport(driver, *SCREEN)
    assert rs.load(driver, report), "not every plotly chart was drawn within 20 s"
    problems = console_problems(rs.console(driver))
    page = rs.measure(driver)
    problems += [f"{SCREEN[0]}px: {p}" for p in layout_problems(page)]
    rec = page["recommendation"]
    if rec is None:
        problems.append("no recommendation (#answer p.answer) on the page")
    elif not _inside(rec, {"left": 0, "top": 0, "right": SCREEN[0], "bottom": SCREEN[1]}, tol=0):
        problems.append(f"the recommendation is not inside the first {SCREEN[0]}x{SCREEN[1]} screen: {rec}")
    for width in WIDTHS[1:]:  # a narrower window: the legends and titles are laid out again
        rs.set_viewport(driver, width, SCREEN[1])
        driver.execute_script("window.dispatchEvent(new Event('resize'))")
        driver.execute_script("return new Promise(r => setTimeout(r, 800))")
        problems += [f"{width}px: {p}" for p in layout_problems(rs.measure(driver))]
        problems += console_problems(rs.console(driver))
    assert not problems, "\n".join(problems)


def test_sections_in_reading_order_and_run_it_works_from_anywhere(reports, driver):
    rs.set_viewport(driver, *SCREEN)
    rs.load(driver, reports["explore"])
    page = rs.measure(driver)
    assert page["sections"][:2] == ["answer", "speedup"] and page["sections"][-2:] == ["summary", "config"]
    letters = driver.execute_script(
        "return Array.from(document.querySelectorAll('section > h2')).map(h => h.textContent)"
    )
    letters = [m.group(1) for h in letters if (m := re.match(r"\((\w)\) ", h))]
    assert letters == sorted(letters) and letters[:2] == ["a", "b"], letters
    # the chart titles carry the same letters as their headings
    titles = driver.execute_script("return Array.from(document.querySelectorAll('.gtitle')).map(t => t.textContent)")
    assert [t[:3] for t in titles if re.match(r"\(\w\) ", t)] == [f"({x})" for x in letters]
    cmd = driver.execute_script("return document.querySelector('#run-it code').textContent")
    argv = shlex.split(cmd)
    assert argv[:4] == ["python", "-m", "runtime.generate", "--policy"], cmd
    policy = Path(argv[4])
    assert policy.is_absolute() and policy.is_file() and policy == reports["explore"].parent.resolve() / policy.name
    # the bound says what it bounds where it is drawn, and all-gpu is marked as outside the budget
    labels = driver.execute_script(
        "return Array.from(document.querySelectorAll('#fig-speedup .annotation-text')).map(t => t.textContent)"
    )
    assert any("bound" in t and "within the budget" in t for t in labels), labels
    ticks = driver.execute_script(
        "return Array.from(document.querySelectorAll('#fig-speedup .ytick text')).map(t => t.textContent)"
    )
    assert any(t.startswith("all-gpu") and "outside the budget" in t for t in ticks), ticks
