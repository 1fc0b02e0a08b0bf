"""What the client draws in a terminal: what it waits for while it connects, and sizes and
speeds in one unit system."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect

from devtools.localnode import free_port
from tests.cluster import ROOT, Cluster
from warren import errors

TERMINAL = {"TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
CONTROL = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[@-Z\\-_])|\r")


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> pexpect.spawn:
    return pexpect.spawn(
        sys.executable,
        ["-m", "client", *args],
        env={**env, **TERMINAL},
        cwd=str(cwd),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )


def test_a_refused_broker_is_said_at_once_in_a_terminal(tmp_path: Path) -> None:
    # Given nothing listening where the broker should be, and a client that would try for 4 s
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    env = dict(os.environ, PYTHONPATH=str(ROOT), WARREN_AMQP_URL=url, WARREN_CONNECT_TIMEOUT="4")
    child = spawn(["list"], env, tmp_path)
    # Then it says what it waits for, and within a moment (long before it gives up, 4 s
    # after it began) that nothing listens there; Python's start-up is not timed, since a
    # busy machine can take seconds over it
    child.expect("waiting for RabbitMQ at amqp://guest@127.0.0.1:", timeout=30)
    waiting = time.monotonic()
    child.expect(re.escape("connection refused: is warren running? try `make up`"), timeout=5)
    assert time.monotonic() - waiting < 3
    # And when it gives up: one sentence with the same hint, exit 4
    child.expect(pexpect.EOF, timeout=60)
    child.close()
    assert child.exitstatus == errors.EXIT_UNAVAILABLE
    seen = CONTROL.sub("", child.before or "")
    assert "error: cannot reach RabbitMQ" in seen and "try `make up`." in seen
    assert "guest:guest" not in seen and "Traceback" not in seen


def test_a_transfer_bar_counts_in_binary_units(cluster: Cluster, tmp_path: Path) -> None:
    # Given a file of 3 MiB uploaded and restored in a terminal
    f = tmp_path / "iec.bin"
    f.write_bytes(os.urandom(3 * 1024 * 1024))
    for args in (["upload", str(f)], ["download", "iec.bin", "-o", str(tmp_path / "back.bin")]):
        child = spawn(args, cluster.env(), cluster.base)
        child.expect(pexpect.EOF, timeout=120)
        child.close()
        drawn = CONTROL.sub("", child.before or "")
        assert child.exitstatus == 0, drawn
        # Then the bar and the summary both say MiB, never MB or GB
        assert "/3.0 MiB" in drawn and "(3.0 MiB)" in drawn, drawn
        assert not re.search(r"\d (kB|MB|GB)\b", drawn), drawn
