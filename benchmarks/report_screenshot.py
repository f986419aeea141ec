"""A report in a real browser: render a ``report.html`` (``sim.explore``'s) in headless Chromium and save its
first screen as a PNG, and (for tests/sim/test_report_browser.py) measure what a reader sees: console
messages, each chart's box, the recommendation's box, each legend's and each title's box.

    python benchmarks/report_screenshot.py RUN_DIR/report.html docs/img/report-first-screen.png
        [--width 1400] [--height 900] [--full-page]

Needs Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver; TIDE_CHROMIUM and
TIDE_CHROMEDRIVER name others) and selenium
(``pip install "selenium>=4.20,<5"``). The driver is named explicitly, so Selenium Manager never downloads one;
Chromium runs headless, sandbox-less (root, containers) and with its background networking off (the report is
self-contained: nothing is fetched).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = os.environ.get("TIDE_CHROMIUM", "/usr/bin/chromium")  # Debian's; the variables name another build
CHROMEDRIVER = os.environ.get("TIDE_CHROMEDRIVER", "/usr/bin/chromedriver")
VIEWPORT = (1400, 900)
_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def missing() -> str | None:
    """Why the browser cannot run here (None: it can)."""
    for path, what in ((CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")):
        if not Path(path).exists():
            return f"{what} not found at {path} (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed (pip install "selenium>=4.20,<5")'
    return None


@contextlib.contextmanager
def browser(width: int = VIEWPORT[0], height: int = VIEWPORT[1]) -> Iterator[Any]:
    """A headless Chromium (selenium WebDriver) whose viewport is ``width`` x ``height`` CSS pixels, with a fresh
    profile directory, its console captured (``driver.get_log('browser')``); quit and cleaned up on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tide-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in _FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        set_viewport(driver, width, height)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _CONSOLE_HOOK})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver: Any, width: int, height: int) -> None:
    """The page's viewport exactly ``width`` x ``height`` (the window's size includes no chrome when headless,
    but set it through DevTools so it holds whatever the window manager did)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )


# Every console call and uncaught error of the page, kept in window.__tideConsole: plotly.js writes its warnings
# ("WARN: Invalid color specifier ...") with console.trace, which chromedriver's browser log does not carry.
_CONSOLE_HOOK = """
window.__tideConsole = [];
for (const level of ['log', 'info', 'debug', 'warn', 'error', 'trace', 'assert']) {
  const original = console[level].bind(console);
  console[level] = (...args) => {
    if (level !== 'assert' || !args[0]) {
      window.__tideConsole.push({level: level, message: args.map(a => {
        try { return typeof a === 'string' ? a : JSON.stringify(a); } catch (e) { return String(a); } }).join(' ')});
    }
    return original(...args);
  };
}
window.addEventListener('error', e => window.__tideConsole.push({level: 'uncaught', message: String(e.message)}));
window.addEventListener('unhandledrejection', e => window.__tideConsole.push({level: 'uncaught',
                                                                             message: String(e.reason)}));
"""

_WAIT_PLOTS = """
const done = arguments[arguments.length - 1];
const t0 = Date.now();
(function poll() {
  const divs = Array.from(document.querySelectorAll('.plotly-graph-div'));
  const ready = divs.every(d => d._fullLayout && d.querySelector('.main-svg'));
  if ((ready && document.readyState === 'complete') || Date.now() - t0 > 20000) { done(ready); return; }
  setTimeout(poll, 100);
})();
"""

_MEASURE = """
const box = el => { const r = el.getBoundingClientRect();
  return {left: r.left + window.scrollX, top: r.top + window.scrollY, right: r.right + window.scrollX,
          bottom: r.bottom + window.scrollY, width: r.width, height: r.height}; };
const charts = Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => ({
  id: d.id, box: box(d),
  legends: Array.from(d.querySelectorAll('g.legend')).map(box),
  titles: Array.from(d.querySelectorAll('.gtitle')).concat(
      Array.from(d.querySelectorAll('.infolayer .annotation')).filter(a => {
        const spec = (d._fullLayout.annotations || [])[+a.dataset.index];
        return spec && spec.yref === 'paper' && spec.xref === 'paper';  // subplot titles (not a line's label)
      })).map(t => Object.assign(box(t), {text: t.textContent})),
  annotations: Array.from(d.querySelectorAll('.infolayer .annotation')).filter(a => a.textContent)
    .map(a => Object.assign(box(a.querySelector('.annotation-text-g') || a), {text: a.textContent})),
}));
const rec = document.querySelector('#answer p.answer');
return {charts: charts, recommendation: rec ? box(rec) : null,
        viewport: {width: window.innerWidth, height: window.innerHeight},
        page: {width: document.documentElement.scrollWidth, height: document.documentElement.scrollHeight},
        sections: Array.from(document.querySelectorAll('body > section, body > details')).map(s => s.id)};
"""


def load(driver: Any, report: str | Path) -> bool:
    """Open ``report`` (a file) and wait until every plotly chart is drawn; True when all were."""
    driver.get(Path(report).resolve().as_uri())
    driver.set_script_timeout(30)
    return bool(driver.execute_async_script(_WAIT_PLOTS))


def measure(driver: Any) -> dict[str, Any]:
    """The loaded page's boxes, in page coordinates (CSS pixels from the top left of the document): each chart's
    div with its legends' boxes, its titles' (the figure title and each subplot title: plotly's
    paper-anchored annotations) and every annotation's (titles, lines' labels, values), the recommendation's
    paragraph, the viewport, the page and the order of the
    top-level sections."""
    return driver.execute_script(_MEASURE)


def console(driver: Any) -> list[dict[str, str]]:
    """The page's console messages, each {level, message}: the browser's log since the last call (level
    SEVERE, WARNING, INFO: errors, failed loads, console.warn/error) and every console call of the loaded page
    (level log, info, debug, warn, error, trace, assert; uncaught: an uncaught error)."""
    out = [{"level": str(e.get("level")), "message": str(e.get("message"))} for e in driver.get_log("browser")]
    hooked = driver.execute_script("return window.__tideConsole || []")
    return out + [{"level": str(e["level"]), "message": str(e["message"])} for e in hooked]


def screenshot(
    report: str | Path, png: str | Path, width: int = VIEWPORT[0], height: int = VIEWPORT[1], full_page: bool = False
) -> Path:
    """Render ``report`` at ``width`` x ``height`` and save the first screen (or the whole page) as ``png``."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    with browser(width, height) as driver:
        load(driver, report)
        if full_page:
            page = measure(driver)["page"]
            set_viewport(driver, width, int(page["height"]))
        driver.save_screenshot(str(png))
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", help="a report.html (sim.explore's run directory)")
    p.add_argument("png", help="the PNG to write")
    p.add_argument("--width", type=int, default=VIEWPORT[0])
    p.add_argument("--height", type=int, default=VIEWPORT[1])
    p.add_argument("--full-page", action="store_true", help="the whole page, not only the first screen")
    a = p.parse_args(argv)
    if a.width < 100 or a.height < 100:
        p.error(f"--width and --height must be >= 100, got {a.width}x{a.height}")
    if not Path(a.report).is_file():
        p.error(f"no such report: {a.report}")
    why = missing()
    if why:
        p.error(why)
    out = screenshot(a.report, a.png, a.width, a.height, a.full_page)
    print(f"{out} ({out.stat().st_size / 1024:.0f} KiB, {a.width}x{a.height}{', full page' if a.full_page else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
