"""`make up`'s path for real, in a folder of its own: no guest, a user per process.

``python -m devtools.localcluster up`` (what ``make up`` runs) on fresh free ports: guest
cannot log in, every service is connected as its own user, the client config it prints
works, client2 does not see client1's file, and ``down`` stops it all; brought up again with
``--tls`` (``make up TLS=1``), the same users reach it over amqps:// with the local CA.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pika
import pika.exceptions
import pytest

from devtools.localnode import LocalNode, port_open
from tests.cluster import wait_for

pytestmark = pytest.mark.integration


def run(cwd: Path, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    if config is not None:
        env["WARREN_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
    )


def test_make_up_runs_every_process_as_its_own_user(tmp_path: Path, rabbitmq_server: str) -> None:
    # Given `make up` with two workers, in a folder of its own
    up = run(tmp_path, "-m", "devtools.localcluster", "up", "--workers", "2", "--free-ports")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        secrets = tmp_path / ".warren" / "secrets"
        client1, client2 = secrets / "client1.toml", secrets / "client2.toml"
        assert f"export WARREN_CONFIG={client1}" in up.stdout
        assert "cat .warren/secrets/admin.password" in up.stdout
        node = LocalNode.load(tmp_path / ".warren" / "rabbitmq")
        assert node is not None
        node.admin = ("admin", (secrets / "admin.password").read_text().strip())

        # Then guest cannot log in, not even from this machine
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(pika.URLParameters(node.url))
        assert "guest" not in {u["name"] for u in node.api("GET", "users")}

        # and every service is connected as its own user
        def users() -> set[str]:
            return {c.get("user") for c in node.api("GET", "connections")}

        wait_for(lambda: users() >= {"manager", "w1", "w2"}, timeout=30, what="connections")
        assert users() <= {"manager", "w1", "w2"}, users()

        # and each client's key was made (init), so running init again says so, exit 0
        res = run(tmp_path, "-m", "client", "init", config=client2)
        assert res.returncode == 0, res.stderr
        assert "client2 has a key already" in res.stdout
        assert ".warren/secrets/client1.owner-password" in up.stdout

        # When client1 uploads with the config make up printed
        src = tmp_path / "diary.txt"
        src.write_text("dear diary\n")
        res = run(tmp_path, "-m", "client", "upload", str(src), config=client1)
        assert res.returncode == 0, res.stderr
        # Then client1 lists it, and client2 (its own user) does not see it
        res = run(tmp_path, "-m", "client", "list", "--json", config=client1)
        assert res.returncode == 0, res.stderr
        assert "diary.txt" in res.stdout
        res = run(tmp_path, "-m", "client", "list", "--json", config=client2)
        assert res.returncode == 0, res.stderr
        assert "diary.txt" not in res.stdout
    finally:
        down = run(tmp_path, "-m", "devtools.localcluster", "down")
    assert down.returncode == 0, down.stderr
    # And down stopped the node and every service
    stopped = LocalNode.load(tmp_path / ".warren" / "rabbitmq")
    assert stopped is not None and not stopped.running()
    # (its Erlang VM gone too, not only shutting down: a node started on a port still held
    # fails with "dist_port_already_used")
    assert not port_open(stopped.amqp_port) and not port_open(stopped.dist_port)
    assert not list((tmp_path / ".warren" / "pids").iterdir())
    passwords = {f.name: f.read_text() for f in secrets.glob("*.password")}

    # When it comes up again with TLS (make up TLS=1)
    tls = ("--tls", "--free-ports")
    up = run(tmp_path, "-m", "devtools.localcluster", "up", "--workers", "2", *tls)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "amqps on port" in up.stdout
        # Then the users and passwords are those of the first run, every config uses amqps://
        # with the local CA, and client1's file is still there, listed over TLS
        assert {f.name: f.read_text() for f in secrets.glob("*.password")} == passwords
        for name in ("manager", "w1", "w2", "client1", "client2"):
            text = (secrets / f"{name}.toml").read_text()
            assert 'amqp_url = "amqps://' in text
            assert f'tls_ca_file = "{tmp_path / ".warren" / "tls" / "ca.pem"}"' in text
        res = run(tmp_path, "-m", "client", "list", "--json", config=client1)
        assert res.returncode == 0, res.stderr
        assert "diary.txt" in res.stdout
    finally:
        down = run(tmp_path, "-m", "devtools.localcluster", "down")
    assert down.returncode == 0, down.stderr
