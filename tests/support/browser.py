"""Pages checked in a real browser: Debian's Chromium driven by Playwright (no download).

``make setup-browser`` installs both; without them the tests that need a browser skip, saying so.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]  # fmt: skip


#: Every image, lazy ones included (made eager and awaited), that did not load.
BROKEN_IMAGES = """async () => {
  const imgs = Array.from(document.images);
  for (const i of imgs) { i.loading = "eager"; }
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src);
}"""


def chromium() -> str:
    """Path of the Chromium executable, or skip the test with the one-line reason."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("no browser: playwright is not installed (run `make setup-browser`)")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no browser: Chromium is not installed (run `make setup-browser`)")
    return exe


@contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on localhost; yield the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def check_pages(root: Path, pages: list[str]) -> dict[str, list[str]]:
    """Open each page (relative to ``root``) in Chromium; return its problems.

    A problem is an image that did not load, a link that does not resolve (HTTP status other
    than 200), or a console error.
    """
    from playwright.sync_api import sync_playwright

    exe = chromium()
    found: dict[str, list[str]] = {}
    with serve(root) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            for rel in pages:
                errors.clear()
                page.goto(f"{base}/{rel}")
                page.wait_for_load_state("load")
                broken = page.evaluate(BROKEN_IMAGES)
                problems = [f"image not loaded: {src}" for src in broken]
                for href in page.evaluate("() => Array.from(document.links).map(a => a.href)"):
                    status = page.request.get(href).status
                    if status != 200:
                        problems.append(f"link {href}: HTTP {status}")
                problems += [f"console: {e}" for e in errors]
                found[rel] = problems
        finally:
            browser.close()
    return found
