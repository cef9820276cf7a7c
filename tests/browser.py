"""Open an HTML file in a real headless Chromium and report what a reader would see.

Speaks the Chrome DevTools protocol over a websocket: console errors, uncaught exceptions,
failed loads and every network request are collected while the page loads; then every <img> is
checked for a decoded bitmap (naturalWidth > 0). ``check_page`` asserts what every page cxrlab
writes must satisfy and records the page kinds checked in this session.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
]


LOCAL_SCHEMES = ("file:", "data:", "about:")
CHECKED_KINDS: set[str] = set()  # page kinds check_page has passed in this test session


def chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class _CDP:
    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        ident = self.next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == ident:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            self.events.append(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")


@contextlib.contextmanager
def chromium_page(
    domains: tuple[str, ...] = ("Page", "Runtime", "Log", "Network"), timeout: float = 90
) -> Iterator[_CDP]:
    """Headless Chromium with a DevTools connection to its one page (``domains`` enabled, events cleared);
    the browser and its throw-away profile are removed afterwards."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium not installed")
    profile = Path(tempfile.mkdtemp(prefix="cxr-chromium-"))
    proc = subprocess.Popen(
        [binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + timeout
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"chromium did not start (exit {proc.poll()})")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        cdp = _CDP(page["webSocketDebuggerUrl"])
        for domain in domains:
            cdp.call(f"{domain}.enable")
        cdp.events.clear()
        yield cdp
        with contextlib.suppress(Exception):  # the browser may close the socket first
            cdp.call("Browser.close")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def page_errors(events: list[dict[str, Any]]) -> list[str]:
    """Uncaught exceptions, console errors/asserts and error log entries among DevTools events."""
    errors = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            errors.append(params["exceptionDetails"].get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            errors.append(params["entry"].get("text", "log error"))
    return errors


def inspect_page(html_file: Path, timeout: float = 90) -> dict[str, Any]:
    """Load ``html_file`` in headless Chromium; return errors, image states, title and headings."""
    with chromium_page(timeout=timeout) as cdp:
        cdp.call("Page.navigate", url=html_file.resolve().as_uri())
        cdp.wait_for("Page.loadEventFired", timeout)
        state = cdp.call(
            "Runtime.evaluate",
            expression="""JSON.stringify({
                title: document.title,
                kind: (document.querySelector('meta[name="cxrlab-page"]') || {}).content || null,
                headings: Array.from(document.querySelectorAll('h1,h2')).map(h => h.textContent),
                tables: document.querySelectorAll('table').length,
                text: document.body.innerText.length,
                images: Array.from(document.images).map(i => ({
                    alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight}))
            })""",
            returnByValue=True,
        )
        info = json.loads(state["result"]["value"])
        info["errors"] = page_errors(cdp.events)
        info["external_requests"] = [
            e["params"]["request"]["url"]
            for e in cdp.events
            if e.get("method") == "Network.requestWillBeSent"
            and not e["params"]["request"]["url"].startswith(LOCAL_SCHEMES)
        ]
        info["broken_images"] = [i["alt"] for i in info["images"] if not i["complete"] or i["width"] == 0]
    return info


def check_page(path: Path, kind: str) -> dict[str, Any]:
    """Open ``path`` in headless Chromium and assert it is a sound cxrlab page of ``kind``.

    Opened, ``<meta name="cxrlab-page">`` is ``kind``, no console error or exception, every image
    decoded, no request leaves the file (no http/https/ws, nothing but file:, data: and about:).
    Skips when Chromium is missing (a failure under CXRLAB_REQUIRE_ALL=1). Returns what was seen.
    """
    if chromium() is None:
        pytest.skip(
            "chromium is not installed (CI installs it in .ci/run; locally: apt-get install chromium)"
        )
    assert Path(path).is_file(), f"{path} was not written"
    page = inspect_page(Path(path))
    assert page["kind"] == kind, f"{path}: page kind {page['kind']!r}, expected {kind!r}"
    assert page["errors"] == [], f"{path}: {page['errors']}"
    assert page["broken_images"] == [], f"{path}: broken images {page['broken_images']}"
    assert page["external_requests"] == [], f"{path}: external requests {page['external_requests']}"
    assert page["text"] > 0 and page["headings"], f"{path}: empty page"
    CHECKED_KINDS.add(kind)
    return page


def page_layout(html_file: Path, width: int = 1280, height: int = 900, timeout: float = 90) -> dict[str, Any]:
    """Load ``html_file`` in a ``width`` x ``height`` px window (CSS px, no mobile emulation) and measure it:
    the window's and the document's widths (``scroll_width`` > ``window`` means a horizontal scroll bar)
    and, per table, its right edge and width and those of the box it sits in (its parent element; ``scrolls``:
    the box is a scrolling ``.table-scroll`` one that is scrolling now)."""
    with chromium_page(timeout=timeout) as cdp:
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        cdp.call("Emulation.setDeviceMetricsOverride", **metrics)
        cdp.call("Page.navigate", url=html_file.resolve().as_uri())
        cdp.wait_for("Page.loadEventFired", timeout)
        state = cdp.call(
            "Runtime.evaluate",
            expression="""JSON.stringify({
                window: window.innerWidth,
                scroll_width: document.documentElement.scrollWidth,
                tables: Array.from(document.querySelectorAll('table')).map(t => {
                    const r = t.getBoundingClientRect(), box = t.parentElement.getBoundingClientRect();
                    return {columns: t.rows.length ? t.rows[0].cells.length : 0, right: r.right,
                            width: r.width, box_right: box.right, box_width: box.width,
                            scrolls: t.parentElement.classList.contains('table-scroll')
                                && t.parentElement.scrollWidth > t.parentElement.clientWidth + 1,
                            header: t.rows.length ? t.rows[0].innerText.slice(0, 60) : ''};
                })
            })""",
            returnByValue=True,
        )
        info = json.loads(state["result"]["value"])
        info["errors"] = page_errors(cdp.events)
    return info
