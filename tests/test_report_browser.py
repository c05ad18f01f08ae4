"""The demo's report in headless Chromium: every image loads, no console errors, no request leaves the
machine, in-page links resolve, and a full-page screenshot is written as a test artifact.

Chromium (Debian's `chromium`; `.ci/run` installs it) is driven through the Chrome DevTools protocol
over `--remote-debugging-pipe`: commands on fd 3, replies and events on fd 4, NUL-separated JSON.
Standard library only, nothing leaves the machine. The screenshot goes to the test's tmp folder and
to `tests/artifacts/` (ignored by git through its own `.gitignore`).

Without a headless Chromium the browser tests skip, each with the reason in the `-ra` summary, so the
README's test command passes on a fresh machine; with `CI` set (`CI=true`, as `.ci/run` and CI
services do) a missing Chromium fails them instead: CI installs it, so its absence there is a bug.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import select
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from mmoe_inspect.cli.main import app

ARTIFACTS = Path(__file__).parent / "artifacts"
WIDTH = 1280
TIMEOUT_S = 60.0
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@functools.cache
def find_chromium() -> str | None:
    """The first of BROWSERS on PATH that answers `--version` (a shim without its browser does not)."""
    for name in BROWSERS:
        found = shutil.which(name)
        if not found:
            continue
        try:
            probe = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and "chrom" in probe.stdout.lower():
            return found
    return None


def chromium_binary() -> str:
    """The browser to drive; skips the calling test (fails it under CI) when there is none."""
    found = find_chromium()
    if found is not None:
        return found
    tried = ", ".join(BROWSERS)
    if in_ci():
        pytest.fail(
            f"CI is set and no headless Chromium runs (tried {tried}): apt-get install chromium (.ci/run does)",
            pytrace=False,
        )
    pytest.skip(f"no headless Chromium (tried {tried}): apt-get install chromium to run the browser tests")


@pytest.fixture(scope="module")
def chromium() -> str:
    """Resolved before any work a browser test does (the skip comes first, not after a report)."""
    return chromium_binary()


class Chromium:
    """A headless Chromium and one CDP connection over pipes; `call` sends a command and waits for its reply."""

    def __init__(self, profile: Path) -> None:
        cmd_read, self._cmd_write = os.pipe()  # we write commands; Chromium reads them on fd 3
        self._ev_read, ev_write = os.pipe()  # Chromium writes replies/events on fd 4; we read them

        def wire_fds() -> None:  # in the child, before exec: put the pipe ends on fds 3 and 4
            a, b = os.dup(cmd_read), os.dup(ev_write)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            chromium_binary(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-extensions",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            close_fds=False,  # our own pipe ends are non-inheritable; fds 3/4 are set up in the child
            preexec_fn=wire_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_read)
        os.close(ev_write)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            msg["sessionId"] = session
        os.write(self._cmd_write, json.dumps(msg).encode() + b"\0")
        return self._id

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "method" in msg:
                    self.events.append(msg)
                if predicate(msg):
                    return msg
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._ev_read], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._ev_read, 1 << 20)
            if not chunk:
                raise EOFError(f"Chromium exited (code {self.proc.poll()})")
            self._buf += chunk

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict[str, Any]:
        mid = self.send(method, params, session)
        reply = self.wait_for(lambda m: m.get("id") == mid)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("Browser.close")
                self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            os.close(self._cmd_write)
            os.close(self._ev_read)


@dataclass
class PageLoad:
    """Everything the tests check, gathered from one page load."""

    url: str
    images: list[dict[str, Any]]
    attributes: list[dict[str, str]]
    broken_anchors: list[str]
    requests: list[str]
    failed: list[str]
    problems: list[str]  # console errors/warnings, uncaught exceptions, browser log errors
    screenshot: bytes
    height: int
    title: str
    first_link: str
    timings: dict[str, float] = field(default_factory=dict)


DOM_PROBE = """JSON.stringify({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), url: i.currentSrc,
                                                  complete: i.complete, width: i.naturalWidth})),
  attributes: Array.from(document.querySelectorAll('[src],[href]')).map(e => ({tag: e.tagName,
      value: e.getAttribute('src') || e.getAttribute('href')})),
  brokenAnchors: Array.from(document.querySelectorAll('a[href^="#"]')).map(a => a.getAttribute('href').slice(1))
      .filter(id => !document.getElementById(id)),
  title: document.title,
  firstLink: (document.querySelector('header a') || {}).getAttribute ?
      document.querySelector('header a').getAttribute('href') : '',
})"""


def load_page(index: Path, profile: Path) -> PageLoad:
    browser = Chromium(profile)
    started = time.monotonic()
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable", session=sid)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        url = index.resolve().as_uri()
        browser.call("Page.navigate", {"url": url}, session=sid)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == sid)
        loaded_at = time.monotonic()
        probe = browser.call(
            "Runtime.evaluate", {"expression": DOM_PROBE, "returnByValue": True}, session=sid
        )["result"]["value"]
        dom = json.loads(probe)
        height = int(browser.call("Page.getLayoutMetrics", session=sid)["cssContentSize"]["height"])
        shot = browser.call(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
            },
            session=sid,
        )
        events = list(browser.events)
    finally:
        browser.close()
    requests = [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]
    failed = [
        f"{e['params'].get('errorText')} ({e['params'].get('requestId')})"
        for e in events
        if e["method"] == "Network.loadingFailed"
    ]
    problems = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
            problems.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif e["method"] == "Runtime.exceptionThrown":
            problems.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif e["method"] == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
            entry = p["entry"]
            problems.append(f"log {entry['level']}: {entry.get('text')} {entry.get('url', '')}")
    return PageLoad(
        url=url,
        images=dom["images"],
        attributes=dom["attributes"],
        broken_anchors=dom["brokenAnchors"],
        requests=requests,
        failed=failed,
        problems=problems,
        screenshot=base64.b64decode(shot["data"]),
        height=height,
        title=dom["title"],
        first_link=dom["firstLink"],
        timings={"load": loaded_at - started, "total": time.monotonic() - started},
    )


@pytest.fixture(scope="module")
def demo_report(demo_dir: Path) -> Path:
    """The session's demo report (conftest's `demo_dir`): every section, the causal and training ones included."""
    return demo_dir / "report"


@pytest.fixture(scope="module")
def page(chromium: str, demo_report: Path, tmp_path_factory: pytest.TempPathFactory) -> PageLoad:
    return load_page(demo_report / "index.html", tmp_path_factory.mktemp("chromium-profile"))


def test_every_image_loads(page: PageLoad, demo_report: Path) -> None:
    pngs = sorted(p.relative_to(demo_report).as_posix() for p in (demo_report / "figures").glob("*.png"))
    assert sorted(i["src"] for i in page.images) == pngs
    assert any(name.startswith("figures/causal_") for name in pngs)
    for img in page.images:
        assert img["complete"] and img["width"] > 0, img
        assert img["url"].startswith(demo_report.resolve().as_uri() + "/"), img


def test_no_console_errors_and_no_failed_loads(page: PageLoad) -> None:
    assert page.problems == []
    assert page.failed == []


def test_no_request_leaves_the_machine(page: PageLoad, demo_report: Path) -> None:
    base = demo_report.resolve().as_uri()
    assert page.requests, "the page load was not observed"
    assert page.requests[0] == page.url
    for url in page.requests:
        assert url.startswith(base + "/"), url
    for attr in page.attributes:  # every link and resource is relative to the report (or in-page)
        value = attr["value"]
        assert "://" not in value and not value.startswith("//"), attr
        if not value.startswith("#"):
            assert (demo_report / value.split("#")[0]).exists(), attr


def test_in_page_links_and_overview_link(page: PageLoad, demo_report: Path) -> None:
    assert page.broken_anchors == []
    assert page.first_link == "overview.png"
    assert page.title.startswith("mmoe-inspect report: MMoE (demo)")


def test_screenshot_is_written_as_an_artifact(page: PageLoad, tmp_path: Path) -> None:
    png = page.screenshot
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width == WIDTH and height == page.height > 4000  # the whole page, not one viewport
    (tmp_path / "report-demo.png").write_bytes(png)
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# test artifacts (screenshots): never committed\n*\n", encoding="utf-8")
    (ARTIFACTS / "report-demo.png").write_bytes(png)
    assert len(png) > 300_000  # figures and text, not a blank canvas (which compresses to a few kB)


def test_overview_is_a_16_9_slide(demo_report: Path) -> None:
    raw = (demo_report / "overview.png").read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", raw[16:24]) == (1920, 1080)


# ------------------------------------------------------------------ review (issue 16): Summary and slide
def _keep_summary_and_slide(name: str, page_png: bytes, report: Path, tmp_path: Path) -> None:
    """The top of the page (the Summary's questions and diagnosis) and the slide, kept as artifacts."""
    import io

    import matplotlib.image as mpimg

    image = mpimg.imread(io.BytesIO(page_png), format="png")
    ARTIFACTS.mkdir(exist_ok=True)
    ignore = ARTIFACTS / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# test artifacts (screenshots): never committed\n*\n", encoding="utf-8")
    for folder in (tmp_path, ARTIFACTS):
        mpimg.imsave(folder / f"review-{name}-summary.png", image[:1600])
        shutil.copyfile(report / "overview.png", folder / f"review-{name}-slide.png")


@pytest.mark.parametrize("case", ["at_chance", "collapsed_dead", "harmless_duplicate"])
def test_review_cases_summary_and_slide_in_the_browser(chromium: str, case: str, tmp_path: Path) -> None:
    from review_cases import inspect_case

    from mmoe_inspect.reports import write_report

    result, _ = inspect_case(case)
    report = tmp_path / "report"
    write_report(result, report)
    page = load_page(report / "index.html", tmp_path / "profile")
    assert page.problems == [] and page.failed == []
    _keep_summary_and_slide(case, page.screenshot, report, tmp_path)
    first = result.review.answer("tasks").answer
    assert first in (report / "index.html").read_text()


def test_demo_review_answers_agree_across_page_json_and_summary(
    page: PageLoad, demo_report: Path, tmp_path: Path
) -> None:
    """The demo: the review answers task quality and gains (baselines given), its AUC per task is one
    value in metrics.json, tasks.csv, the page and `mmoe-inspect summary`; Summary and slide kept."""
    metrics = json.loads((demo_report / "metrics.json").read_text())
    answers = {a["key"]: a for a in metrics["review"]["answers"]}
    assert list(answers) == ["tasks", "gains", "routing", "next"]
    assert answers["gains"]["evidence"], "the demo compares against its baselines"
    assert all(("significant" in e) for e in answers["gains"]["evidence"])
    html = (demo_report / "index.html").read_text()
    checkpoint = demo_report.parent / "checkpoints" / "mmoe.pt"
    summary = CliRunner().invoke(app, ["summary", str(checkpoint), "--quiet"], terminal_width=200)
    assert summary.exit_code == 0, summary.output
    for row in metrics["tables"]["tasks"]:
        auc = f"{row['auc']:.3f}"
        assert f"AUC {auc}" in html
        assert auc in summary.output  # the checkpoint's stored rows are the demo's eval rows
    assert "Does every task work?" in summary.output
    _keep_summary_and_slide("demo", page.screenshot, demo_report, tmp_path)


# ------------------------------------------------------------------ issue 16: tables fit their card at 1400 px
OVERFLOW_PROBE = """JSON.stringify(Array.from(document.querySelectorAll('.table-scroll')).map(d => ({
  id: (d.closest('.table-block') || {}).id || '', scroll: d.scrollWidth, width: d.clientWidth}))
  .filter(x => x.scroll > x.width + 1))"""


def overflowing_tables(index: Path, profile: Path, width: int) -> list[dict[str, Any]]:
    """Tables whose content is wider than their block (they would scroll sideways) at `width` px."""
    browser = Chromium(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=sid)
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        browser.call("Page.navigate", {"url": index.resolve().as_uri()}, session=sid)
        browser.wait_for(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == sid)
        value = browser.call(
            "Runtime.evaluate", {"expression": OVERFLOW_PROBE, "returnByValue": True}, session=sid
        )["result"]["value"]
    finally:
        browser.close()
    return json.loads(value)


def test_gate_metrics_and_task_tables_fit_at_1400_px(
    chromium: str, demo_report: Path, tmp_path: Path
) -> None:
    """The gate-metrics table (20 columns, one row per gate) used to overflow its card at 1400 px; wide
    tables with few rows are shown transposed (one column per gate), so nothing scrolls sideways."""
    html = (demo_report / "index.html").read_text(encoding="utf-8")
    assert 'id="table-gate_metrics"' in html
    assert overflowing_tables(demo_report / "index.html", tmp_path / "profile", 1400) == []
