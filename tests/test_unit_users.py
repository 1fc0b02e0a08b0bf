"""Routing and permissions without a broker: route(), each role's regexes, users' settings."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from manager import users
from warren.config import Settings
from warren.errors import UsageError
from warren.testing import StubBroker
from warren.topology import (
    CLIENTS_EXCHANGE,
    MANAGER_EVENTS,
    MANAGER_EXCHANGE,
    MANAGER_REQUESTS,
    WORKERS_EXCHANGE,
    client_reply_queue,
    client_topology,
    manager_topology,
    permissions,
    route,
    worker_chunks,
    worker_control,
    worker_topology,
)
from warren.transport import Confirm, Delivery


def test_every_queue_has_one_exchange_and_key() -> None:
    assert route(MANAGER_REQUESTS) == (MANAGER_EXCHANGE, "requests")
    assert route(MANAGER_EVENTS) == (MANAGER_EXCHANGE, "events")
    assert route(worker_chunks("w.1")) == (WORKERS_EXCHANGE, "w.1.chunks")
    assert route(worker_control("w1")) == (WORKERS_EXCHANGE, "w1.control")
    reply = client_reply_queue("alice's laptop")
    assert route(reply) == (CLIENTS_EXCHANGE, reply)
    # every queue a service declares is bound with the key it is published with
    for spec in (manager_topology() + worker_topology("w1") + client_topology(reply)).queues:
        if spec.bind_to and spec.bind_to != "warren.dlx":
            assert (spec.bind_to, spec.routing_key) == route(spec.name)


def allowed(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def test_each_role_may_publish_exactly_where_its_role_needs() -> None:
    boss, w1, alice = (
        permissions("manager", "m"),
        permissions("worker", "w1"),
        permissions("client", "alice"),
    )
    # who may publish with which key (topic write), given write on the exchange
    assert allowed(alice.topics[MANAGER_EXCHANGE][0], "requests")
    assert not allowed(alice.topics[MANAGER_EXCHANGE][0], "events")
    assert allowed(alice.topics[WORKERS_EXCHANGE][0], "w2.chunks")
    assert not allowed(alice.topics[WORKERS_EXCHANGE][0], "w2.control")
    assert not allowed(alice.write, CLIENTS_EXCHANGE)
    assert allowed(w1.topics[MANAGER_EXCHANGE][0], "events")
    assert not allowed(w1.topics[MANAGER_EXCHANGE][0], "requests")
    assert allowed(w1.topics[WORKERS_EXCHANGE][0], "w2.chunks")
    assert not allowed(w1.topics[WORKERS_EXCHANGE][0], "w2.control")
    assert not allowed(boss.write, MANAGER_EXCHANGE)
    # who may read (consume, purge) which queue
    assert not allowed(alice.read, MANAGER_REQUESTS)
    assert not allowed(alice.read, worker_chunks("w1"))
    assert allowed(w1.read, worker_chunks("w1"))
    assert not allowed(w1.read, worker_chunks("w10"))
    assert not allowed(w1.read, worker_chunks("w2"))
    # and bind only exact keys of their own
    assert allowed(alice.topics[CLIENTS_EXCHANGE][1], client_reply_queue("a"))
    assert not allowed(alice.topics[CLIENTS_EXCHANGE][1], "warren.client.#")
    assert not allowed(w1.topics[WORKERS_EXCHANGE][1], "w2.chunks")
    with pytest.raises(ValueError, match="unknown role"):
        permissions("root", "x")


def test_the_vhost_comes_from_the_amqp_url() -> None:
    assert users.vhost_of("amqp://u:p@h:5672/%2F") == "/"
    assert users.vhost_of("amqp://u:p@h:5672/") == "/"
    assert users.vhost_of("amqp://u:p@h:5672") == "/"
    assert users.vhost_of("amqp://u:p@h/prod%2Fa,amqp://u:p@h2/prod%2Fa") == "prod/a"


def test_the_admin_url_needs_a_login() -> None:
    with pytest.raises(UsageError, match="not set"):
        users.Admin.from_settings(Settings())
    with pytest.raises(UsageError, match="no user and password"):
        users.Admin.from_settings(Settings(admin_url="http://h:15672/"))
    admin = users.Admin.from_settings(Settings(admin_url="http://ad%40min:p%3Aw@h:15672"))
    assert (admin.base, admin.user, admin.password) == ("http://h:15672/", "ad@min", "p:w")
    with pytest.raises(UsageError, match="unknown role"):
        users.check_name("admin", "x")


def test_the_stub_routes_through_exchanges_and_drops_a_service_reply_to() -> None:
    broker = StubBroker()
    conn = broker.connect(Settings(), "t")
    conn.open()
    conn.declare(worker_topology("w1"))
    got: list[Delivery] = []

    def take(d: Delivery) -> None:
        got.append(d)
        d.ack()

    conn.consume(worker_chunks("w1"), take)
    conn.publish(worker_chunks("w1"), b"x", type="t", reply_to=MANAGER_EVENTS)
    conn.publish(worker_chunks("w1"), b"y", type="t", reply_to="warren.client.a.b")
    results: list[Confirm] = []
    conn.publish(worker_chunks("w2"), b"z", type="t", on_confirm=results.append)
    while len(got) < 2 or not results:
        conn.process(0.1)
    assert [d.reply_to for d in got] == [None, "warren.client.a.b"]
    assert results == [Confirm.RETURNED]  # no queue bound with w2.chunks
    conn.close()


def test_the_stub_takes_turns_between_the_queues_a_connection_consumes() -> None:
    """As RabbitMQ interleaves a channel's consumers: a backlog of requests must not keep
    the manager from its events (heartbeats) for as long as the backlog lasts."""
    broker = StubBroker()
    conn = broker.connect(Settings(), "t")
    conn.open()
    for w in ("w1", "w2", "w3"):  # queues between the two, as in a cluster
        conn.declare(worker_topology(w))
    conn.declare(manager_topology())
    for _ in range(6):
        conn.publish(MANAGER_REQUESTS, b"r", type="request")
        conn.publish(MANAGER_EVENTS, b"e", type="event")
    got: list[str | None] = []

    def take(d: Delivery) -> None:
        got.append(d.type)
        d.ack()

    conn.consume(MANAGER_REQUESTS, take)
    conn.consume(MANAGER_EVENTS, take)
    while len(got) < 12:
        conn.process(0.1)
    assert all(a != b for a, b in zip(got, got[1:], strict=False)), got
    conn.close()


class FakeManagementAPI:
    """The management HTTP API, as far as ``users add`` uses it: records every call and
    answers 200 (the vhost exists) or 204; a DELETE of what is not there is 404."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                api.calls.append((self.command, self.path, json.loads(raw) if raw else None))
                if self.command == "GET":
                    body = b"{}"
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                code = 404 if self.command == "DELETE" else 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_DELETE = answer

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.env = {
            "WARREN_ADMIN_URL": f"http://admin:pw@127.0.0.1:{self.server.server_port}/",
            "WARREN_AMQP_URL": "amqp://x:y@127.0.0.1:5672/%2F",
        }

    def puts(self, prefix: str) -> dict[str, Any]:
        return {p: b for m, p, b in self.calls if m == "PUT" and p.startswith(prefix)}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[FakeManagementAPI]:
    fake = FakeManagementAPI()
    yield fake
    fake.close()


def test_a_client_user_gets_connection_and_channel_limits(api: FakeManagementAPI) -> None:
    assert users.main(["add", "client", "alice", "--password", "pw1"], api.env) == 0
    assert api.puts("/api/user-limits/") == {
        "/api/user-limits/alice/max-connections": {"value": 16},
        "/api/user-limits/alice/max-channels": {"value": 64},
    }
    # a service's user has none, and one that was a client loses them
    api.calls.clear()
    assert users.main(["add", "worker", "alice", "--password", "pw1"], api.env) == 0
    assert api.puts("/api/user-limits/") == {}
    deleted = {p for m, p, _ in api.calls if m == "DELETE" and "user-limits" in p}
    assert deleted == {
        "/api/user-limits/alice/max-connections",
        "/api/user-limits/alice/max-channels",
    }


def test_the_password_comes_from_a_file_or_stdin_not_only_argv(
    api: FakeManagementAPI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "alice.password"
    secret.write_text("from-the-file\nsecond line is not it\n")
    assert users.main(["add", "client", "alice", "--password-file", str(secret)], api.env) == 0
    assert api.puts("/api/users/")["/api/users/alice"]["password"] == "from-the-file"
    stdin = io.StringIO("from-stdin\n")
    assert users.main(["add", "client", "bob", "--password", "-"], api.env, stdin) == 0
    assert api.puts("/api/users/")["/api/users/bob"]["password"] == "from-stdin"
    # an empty one, or a file that is not there, is one sentence (exit 2) and nothing is made
    api.calls.clear()
    assert users.main(["add", "client", "carol", "--password", "-"], api.env, io.StringIO()) == 2
    missing = str(tmp_path / "nope")
    assert users.main(["add", "client", "carol", "--password-file", missing], api.env) == 2
    assert api.puts("/api/users/") == {}
    err = capsys.readouterr().err
    assert "the password is empty" in err and "cannot read the password file" in err
