"""The management UI reads like the system: a person opening it sees warren's names.

Headless Chromium (Debian's ``chromium`` package; ``scripts/ensure-chromium.sh`` installs it)
opens the UI's connections and queues pages of a running cluster, and the test reads the names
off the rendered page, the way a person would. Screenshots are kept in ``test-artifacts/``.

Logging in: RabbitMQ 3.10's UI has no URL login any more (``#/login/<user>/<password>`` was
removed in 3.8 and now shows the login form). Its login form stores the credentials in a cookie
named ``m`` that its JavaScript reads back (``prefs.js``, ``main.js``). Cookies belong to a host,
not to a port, so a tiny local server on another 127.0.0.1 port sets that same cookie and
redirects the browser to the page: the state a person is in after typing guest/guest.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import ROOT, Cluster

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
    # Virtual time: the page's requests and timers run to completion, then the DOM is dumped.
    "--virtual-time-budget=10000",
)
ARTIFACTS = ROOT / "test-artifacts"
UI_DEADLINE = 60.0  # the management stats are collected about every 5 s

SERVICE_CONNECTIONS = ("warren manager", "warren worker w1", "warren worker w1 serve")
SERVICE_QUEUES = (
    "warren.manager.requests",
    "warren.manager.events",
    "warren.worker.w1.chunks",
    "warren.worker.w1.control",
    "warren.dead-letters",
)


@dataclass
class Page:
    """What a page of the UI shows: its heading and the text of each table row."""

    heading: str
    rows: list[set[str]]
    vhost: str
    screenshot: Path

    def missing(self, names: Sequence[str]) -> list[str]:
        """The names not listed on a row of this cluster's virtual host."""
        return [n for n in names if not any(n in row and self.vhost in row for row in self.rows)]


class _PageText(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.heading = ""
        self.rows: list[set[str]] = []
        self._row: set[str] | None = None
        self._in_h1 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self._row = set()
        self._in_h1 = self._in_h1 or tag == "h1"

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data: str) -> None:
        text = data.strip()
        if text and self._row is not None:
            self._row.add(text)
        if text and self._in_h1:
            self.heading += text


@dataclass
class ManagementUI:
    """The cluster's management UI, opened in headless Chromium as a logged-in guest."""

    browser: Path
    entry: str  # the login server: GET /<page> sets the cookie and redirects to the page
    vhost: str

    def open(self, page: str, until_shows: Sequence[str]) -> Page:
        """Open ``#/<page>``; reload until it lists ``until_shows`` (or the deadline passes)."""
        deadline = time.monotonic() + UI_DEADLINE
        while True:
            seen = self._render(page, ARTIFACTS / f"management-ui-{page}.png")
            if not seen.missing(until_shows) or time.monotonic() > deadline:
                return seen
            time.sleep(2)

    def _render(self, page: str, screenshot: Path) -> Page:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            prefix="warren-chromium-", ignore_cleanup_errors=True
        ) as profile:
            proc = subprocess.run(
                [
                    str(self.browser),
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--screenshot={screenshot}",
                    "--dump-dom",
                    f"{self.entry}/{page}",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
        stderr_tail = "\n".join(proc.stderr.splitlines()[-10:])
        assert proc.returncode == 0, f"chromium exited {proc.returncode}:\n{stderr_tail}"
        assert 'id="login"' not in proc.stdout, (
            "the management UI showed its login form: it did not take the login cookie "
            f"(screenshot: {screenshot})"
        )
        text = _PageText()
        text.feed(proc.stdout)
        return Page(text.heading, text.rows, self.vhost, screenshot)


def _short_key(key: str) -> str:
    """The UI's cookie key for a preference: String.hashCode, low 16 bits, abs, hex."""
    h = 0
    for ch in key:
        h = (31 * h + ord(ch)) & 0xFFFFFFFF
    low = h & 0xFFFF
    return format(abs(low - 0x10000 if low & 0x8000 else low), "x")


def _login_cookie(user: str, password: str) -> str:
    """The cookie the UI's own login form leaves behind."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    value = urllib.parse.quote(urllib.parse.quote(token, safe=""), safe="")  # URI, then escape()
    return f"m={_short_key('auth')}:{value}; Path=/"


@contextlib.contextmanager
def _login_server(management_url: str, cookie: str) -> Iterator[str]:
    """A server on 127.0.0.1 whose GET /<page> logs the browser in and sends it to #/<page>."""

    class Login(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Set-Cookie", cookie)
            self.send_header("Location", f"{management_url}#{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Login)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def browser() -> Path:
    """Debian's chromium; checked before the broker starts, so a skip costs nothing."""
    if not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is missing: run 'sh scripts/ensure-chromium.sh' (Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture(scope="module")
def ui(
    browser: Path, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManagementUI]:
    # A client has backed up a file, so the system has done its work once end to end
    path = tmp_path_factory.mktemp("ui") / "hello.txt"
    path.write_text("hello, management UI\n")
    cluster.client("upload", str(path)).ok()
    with _login_server(cluster.node.management_url, _login_cookie("guest", "guest")) as entry:
        yield ManagementUI(browser, entry, cluster.vhost)


def test_connections_page_names_each_service(ui: ManagementUI) -> None:
    # Given a running manager and workers w1..w4 that have backed up a file
    # When a person opens the Connections page of the management UI
    page = ui.open("connections", until_shows=SERVICE_CONNECTIONS)

    # Then each service's connection is listed under its own name, in the cluster's vhost
    assert page.heading == "Connections", f"not the connections page (see {page.screenshot})"
    missing = page.missing(SERVICE_CONNECTIONS)
    assert not missing, (
        f"connections {missing} not shown within {UI_DEADLINE:.0f} s in vhost {ui.vhost} "
        f"(see {page.screenshot}); rows: {page.rows}"
    )
    # And the screenshot of what the person saw is kept as a test artifact
    assert page.screenshot.stat().st_size > 0


def test_queues_page_names_each_queue_for_what_it_carries(ui: ManagementUI) -> None:
    # Given a running manager and workers w1..w4 that have backed up a file
    # When a person opens the Queues page of the management UI
    page = ui.open("queues", until_shows=SERVICE_QUEUES)

    # Then the manager's, the worker's and the dead-letter queues are listed by name
    assert page.heading == "Queues", f"not the queues page (see {page.screenshot})"
    missing = page.missing(SERVICE_QUEUES)
    assert not missing, (
        f"queues {missing} not shown within {UI_DEADLINE:.0f} s in vhost {ui.vhost} "
        f"(see {page.screenshot}); rows: {page.rows}"
    )
    # And the screenshot of what the person saw is kept as a test artifact
    assert page.screenshot.stat().st_size > 0
