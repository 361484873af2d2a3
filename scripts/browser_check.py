"""Open every page of the built book in headless Chromium, offline, and check it.

A page fails on: a JavaScript error (console error or uncaught exception), a failed
request for a local file, any request that leaves the machine (the site must work
offline), an image that did not load (naturalWidth 0), math that MathJax did not
typeset, or embedded widget state that the widget manager did not render. On every page
with a lab slider, the slider is moved and the figure shown under it must change.
A screenshot of each page (and of each lab before and after the move) is saved.

Chromium is the Debian package (`apt-get install -y chromium`, installed with
`--install` when missing and running as root); it is driven through its DevTools
protocol by Playwright, which never downloads a browser here.

Usage: python scripts/browser_check.py _build/html --screenshots _build/screenshots
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
NETWORK = re.compile(r"^(https?|wss?|ftp)://")
WAIT_MS = 20_000
VIEWPORT = {"width": 1280, "height": 900}
SLIDER = ".widget-slider .noUi-handle, .widget-hslider .noUi-handle"
REDIRECT = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.I)

# Waits until MathJax (if the page loads it) has typeset, and widgets (if the page
# embeds widget state) are rendered or the manager gave up.
_SETTLE_JS = """async (waitMs) => {
  const deadline = Date.now() + waitMs;
  const sleep = (ms) => new Promise(r => setTimeout(r, ms));
  if (document.querySelector('.math')) {
    while (!window.MathJax && Date.now() < deadline) await sleep(50);
  }
  if (window.MathJax) {
    while (!(MathJax.startup && MathJax.startup.promise) && Date.now() < deadline) await sleep(50);
    if (MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  }
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]');
  while (views.length && Date.now() < deadline) {
    const shown = document.querySelectorAll('.jupyter-widgets, .widget-slider, .lm-Widget').length;
    if (shown > 0) break;
    await sleep(100);
  }
  while (!Array.from(document.images).every(img => img.complete) && Date.now() < deadline) await sleep(100);
  await sleep(300);
}"""

_PAGE_FACTS_JS = """(SLIDER) => ({
  brokenImages: Array.from(document.images)
      .filter(img => !img.complete || img.naturalWidth === 0)
      .map(img => img.currentSrc || img.src || '(no src)'),
  mathSource: document.querySelectorAll('.math, .MathJax_Preview, div.math, span.math').length,
  mathTypeset: document.querySelectorAll('mjx-container').length,
  widgetViews: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
  widgetsShown: document.querySelectorAll('.jupyter-widgets').length,
  sliders: document.querySelectorAll(SLIDER).length,
})"""

# Signature of what the lab shows: the visible images inside the slider's widget box.
_LAB_SIGNATURE_JS = """([i, SLIDER]) => {
  const handle = document.querySelectorAll(SLIDER)[i];
  let box = handle.closest('.widget-slider, .widget-hslider');
  while (box.parentElement && !box.parentElement.querySelector('img, canvas, svg.main-svg')) box = box.parentElement;
  const visible = Array.from(box.parentElement ? box.parentElement.querySelectorAll('img') : [])
      .filter(img => img.offsetParent !== null && img.naturalWidth > 0);
  const readout = box.closest('.jupyter-widgets, body').querySelector('.widget-readout');
  return {images: visible.map(img => img.src.slice(-200) + ':' + img.src.length),
          readout: readout ? readout.textContent : null};
}"""


@dataclass
class PageReport:
    page: str
    problems: list[str] = field(default_factory=list)
    sliders_moved: int = 0
    screenshot: str | None = None


def find_pages(site: Path) -> list[Path]:
    """Every HTML page of the built site, sorted; raises when there are none."""
    site = Path(site)
    if not (site / "index.html").is_file():
        raise FileNotFoundError(f"{site}/index.html not found: build the book first (make book)")
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)


def chromium_executable(explicit: str | None = None, install: bool = False) -> str:
    """Path of the Chromium binary; with install=True, apt-get installs it when missing."""
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"--chromium {explicit}: no such file")
        return explicit
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if not install:
        raise FileNotFoundError("chromium not found: run `apt-get install -y chromium` (as root) "
                                "or pass --install")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PermissionError("chromium missing and cannot install it: run "
                              "`sudo apt-get update && sudo apt-get install -y chromium`")
    start = time.monotonic()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env)
    print(f"installed chromium in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return shutil.which("chromium") or "/usr/bin/chromium"


def _lab_box(page, i: int):
    """The element holding slider i and the figure it drives (for screenshots)."""
    handle = page.locator(SLIDER).nth(i)
    return handle.locator("xpath=ancestor::div[contains(@class, 'widget-vbox')][1]")


def _poll(page, i: int, done, timeout_ms: int = 5_000) -> dict:
    """The lab signature of slider i once `done(signature)` holds, or at the timeout."""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        sig = page.evaluate(_LAB_SIGNATURE_JS, [i, SLIDER])
        if done(sig) or time.monotonic() > deadline:
            return sig
        page.wait_for_timeout(100)


def _move_sliders(page, count: int, shots: Path | None, stem: str) -> list[str]:
    """Press ArrowRight on each lab slider; the shown figure must change."""
    problems = []
    for i in range(count):
        handle = page.locator(SLIDER).nth(i)
        handle.scroll_into_view_if_needed()
        before = _poll(page, i, lambda sig: sig["images"])
        if not before["images"]:
            problems.append(f"slider {i}: no figure shown next to it")
            continue
        box = _lab_box(page, i)
        if shots is not None and box.count():
            box.screenshot(path=str(shots / f"{stem}__lab{i}_before.png"))
        handle.focus()
        page.keyboard.press("ArrowRight")
        after = _poll(page, i, lambda sig: sig["readout"] != before["readout"]
                      and sig["images"] and sig["images"] != before["images"])
        if shots is not None and box.count():
            box.screenshot(path=str(shots / f"{stem}__lab{i}_after.png"))
        if after["readout"] == before["readout"]:
            problems.append(f"slider {i}: did not move (readout stays {before['readout']!r})")
        elif after["images"] == before["images"]:
            problems.append(f"slider {i}: moved to {after['readout']!r} but the figure did not change")
    return problems


def redirect_target(path: Path) -> Path | None:
    """The page a meta-refresh redirect (Jupyter Book's index.html) points to, else None."""
    m = REDIRECT.search(path.read_text(errors="replace")[:2000])
    return (path.parent / m.group(1)).resolve() if m else None


def check_page(context, site: Path, path: Path, shots: Path | None) -> PageReport:
    rel = path.relative_to(site).as_posix()
    report = PageReport(rel)
    target = redirect_target(path)
    if target is not None:  # the target is checked as a page of its own
        if not target.is_file():
            report.problems.append(f"redirect to a missing page: {target}")
        return report
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and report.problems.append(
        f"console error: {m.text[:300]}"))
    page.on("pageerror", lambda e: report.problems.append(f"page error: {str(e)[:300]}"))
    page.on("requestfailed", lambda r: not NETWORK.match(r.url) and report.problems.append(
        f"failed request: {r.url} ({r.failure})"))
    page.goto(path.resolve().as_uri(), wait_until="load", timeout=WAIT_MS)
    page.evaluate(_SETTLE_JS, WAIT_MS)
    facts = page.evaluate(_PAGE_FACTS_JS, SLIDER)
    report.problems += [f"broken image: {src[:200]}" for src in facts["brokenImages"]]
    if facts["mathSource"] and not facts["mathTypeset"]:
        report.problems.append(f"{facts['mathSource']} math elements not typeset by MathJax")
    if facts["widgetViews"] and not facts["widgetsShown"]:
        report.problems.append(f"{facts['widgetViews']} embedded widgets not rendered")
    stem = rel.replace("/", "__").removesuffix(".html")
    if shots is not None:  # a viewport as tall as the page: no stitching of sticky bars
        height = page.evaluate("document.documentElement.scrollHeight")
        page.set_viewport_size({"width": VIEWPORT["width"], "height": min(height, 16_000)})
        report.screenshot = str(shots / f"{stem}.png")
        page.screenshot(path=report.screenshot)
        page.set_viewport_size(VIEWPORT)
    report.problems += _move_sliders(page, facts["sliders"], shots, stem)
    report.sliders_moved = facts["sliders"]
    page.close()
    return report


def run(site: Path, screenshots: Path | None = None, chromium: str | None = None,
        install: bool = False, pages: list[Path] | None = None) -> list[PageReport]:
    """Check `pages` (default: every page of `site`); requests off the machine are blocked."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        raise ImportError("the browser check needs the `playwright` package: pip install "
                          "'playwright>=1.45' (it drives Debian's chromium; never run "
                          "`playwright install`)") from err

    site = Path(site).resolve()
    pages = pages if pages is not None else find_pages(site)
    exe = chromium_executable(chromium, install)
    if screenshots is not None:
        screenshots = Path(screenshots)
        screenshots.mkdir(parents=True, exist_ok=True)
        for old in screenshots.glob("*.png"):
            old.unlink()
    offsite: list[str] = []
    with tempfile.TemporaryDirectory(prefix="browser-check-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
            viewport=VIEWPORT)
        context.route(NETWORK, lambda route: (offsite.append(route.request.url), route.abort()))
        try:
            reports = [check_page(context, site, Path(p), screenshots) for p in pages]
        finally:
            context.close()
    if offsite:
        reports.append(PageReport("(network)", [f"request off the machine: {u}" for u in
                                                sorted(set(offsite))]))
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path, help="the built site, e.g. _build/html")
    ap.add_argument("--screenshots", type=Path, default=None, help="folder for PNG screenshots")
    ap.add_argument("--chromium", default=None, help="Chromium binary (default: from PATH)")
    ap.add_argument("--install", action="store_true", help="apt-get install chromium if missing")
    ap.add_argument("--no-lab-ok", action="store_true",
                    help="pass even if no page has a lab slider (default: one is required)")
    args = ap.parse_args(argv)
    start = time.monotonic()
    reports = run(args.site, args.screenshots, args.chromium, args.install)
    moved = sum(r.sliders_moved for r in reports)
    failed = [r for r in reports if r.problems]
    for r in reports:
        print(f"{'FAIL' if r.problems else 'ok  '} {r.page}"
              + (f" (moved {r.sliders_moved} slider(s))" if r.sliders_moved else ""))
        for p in r.problems:
            print(f"     - {p}")
    if not moved and not args.no_lab_ok:
        print("FAIL no page has a lab slider to move (pass --no-lab-ok to allow)")
        failed.append(PageReport("(lab)"))
    print(f"{len(reports)} page(s), {moved} slider(s) moved, {len(failed)} failure(s), "
          f"{time.monotonic() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
