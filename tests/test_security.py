# ruff: noqa: E501 - the table reads best one operation to a line
"""Least privilege on a real broker: each role's user may do what its role needs, and every
other operation is refused by RabbitMQ with ACCESS_REFUSED (403).

The users are made by ``python -m manager users add`` (``manager/users.py``), with the
permissions ``warren.topology.permissions`` lists; docs/security.md explains each one.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions as pex
import pytest

from devtools.localnode import LocalNode
from manager import users
from tests.cluster import ROOT, Cluster
from warren.broker import Connection
from warren.config import Settings
from warren.topology import (
    CLIENTS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    MANAGER_EVENTS,
    MANAGER_EXCHANGE,
    MANAGER_REQUESTS,
    WORKERS_EXCHANGE,
    client_reply_queue,
    manager_topology,
    worker_chunks,
    worker_control,
    worker_topology,
)

PW = "pw-" + uuid.uuid4().hex[:8]
USERS = {"boss": "manager", "w1": "worker", "w2": "worker", "alice": "client", "bob": "client"}


def add_users(node: LocalNode, vhost: str) -> None:
    env = {"WARREN_ADMIN_URL": node.admin_url, "WARREN_AMQP_URL": node.url_for("x", "y", vhost)}
    for name, role in USERS.items():
        assert users.main(["add", role, name, "--password", PW], env) == 0


@pytest.fixture(scope="module")
def vhost(rabbit: LocalNode) -> Iterator[str]:
    """A vhost with warren's topology (declared by guest) and the five users, no services."""
    name = f"sec-{uuid.uuid4().hex[:8]}"
    rabbit.add_vhost(name)
    add_users(rabbit, name)
    conn = Connection(Settings(amqp_url=rabbit.url_for("guest", "guest", name)), "setup")
    conn.open(give_up_after=10)
    conn.declare(manager_topology() + worker_topology("w1") + worker_topology("w2"))
    conn.close()
    yield name
    rabbit.delete_vhost(name)
    for user in USERS:
        users.remove(users.Admin.from_settings(Settings(admin_url=rabbit.admin_url)), user)


Op = Callable[[Any], None]


def consume(queue: str) -> Op:
    return lambda ch: ch.basic_cancel(ch.basic_consume(queue, lambda *_: None))


def purge(queue: str) -> Op:
    return lambda ch: ch.queue_purge(queue)


def delete(queue: str) -> Op:
    return lambda ch: ch.queue_delete(queue)


def delete_exchange(exchange: str) -> Op:
    return lambda ch: ch.exchange_delete(exchange)


def declare(queue: str) -> Op:
    args = {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}
    return lambda ch: ch.queue_declare(queue, durable=True, arguments=args)


def publish(exchange: str, key: str) -> Op:
    def op(ch: Any) -> None:
        ch.confirm_delivery()
        ch.basic_publish(exchange, key, b"{}", pika.BasicProperties(type="worker.heartbeat"))

    return op


def bind_own(exchange: str, key: str) -> Op:
    """Bind a reply queue of one's own to ``exchange`` with ``key``."""

    def op(ch: Any) -> None:
        q = client_reply_queue("t")
        ch.queue_declare(q, exclusive=True, auto_delete=True)
        ch.queue_bind(q, exchange, key)

    return op


def bind(queue: str, exchange: str, key: str) -> Op:
    return lambda ch: ch.queue_bind(queue, exchange, key)


def try_op(node: LocalNode, vhost: str, user: str, op: Op) -> int:
    """0 if ``user`` may do it, else the reply code RabbitMQ closed the channel with."""
    conn = pika.BlockingConnection(pika.URLParameters(node.url_for(user, PW, vhost)))
    try:
        ch = conn.channel()
        op(ch)
        ch.queue_declare(MANAGER_REQUESTS, passive=True)  # a round trip: refusals arrive
        return 0
    except pex.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if conn.is_open:
            conn.close()


OK, REFUSED = 0, 403
W1_CHUNKS, W1_CONTROL = worker_chunks("w1"), worker_control("w1")
W2_CHUNKS, W2_CONTROL = worker_chunks("w2"), worker_control("w2")

# (user, what, operation, expected): the table docs/security.md describes.
TABLE: list[tuple[str, str, Op, int]] = [
    # A client: asks the manager, sends chunks to any worker, reads its own replies.
    ("alice", "publish warren.manager/requests", publish(MANAGER_EXCHANGE, "requests"), OK),
    ("alice", "publish warren.workers/w1.chunks", publish(WORKERS_EXCHANGE, "w1.chunks"), OK),
    ("alice", "publish warren.workers/w1.orders (a forged worker.record)", publish(WORKERS_EXCHANGE, "w1.orders"), REFUSED),
    ("alice", "declare and bind own reply queue (exact key)", bind_own(CLIENTS_EXCHANGE, "warren.client.t.x"), OK),
    ("alice", "publish warren.manager/events (a forged heartbeat)", publish(MANAGER_EXCHANGE, "events"), REFUSED),
    ("alice", "publish warren.workers/w1.control", publish(WORKERS_EXCHANGE, "w1.control"), REFUSED),
    ("alice", "publish warren.clients/<a reply queue>", publish(CLIENTS_EXCHANGE, "warren.client.x.y"), REFUSED),
    ("alice", "publish the default exchange", publish("", MANAGER_EVENTS), REFUSED),
    ("alice", "publish warren.dlx", publish(DEAD_LETTER_EXCHANGE, ""), REFUSED),
    ("alice", "consume warren.manager.requests", consume(MANAGER_REQUESTS), REFUSED),
    ("alice", "consume warren.manager.events", consume(MANAGER_EVENTS), REFUSED),
    ("alice", "consume warren.worker.w1.chunks", consume(W1_CHUNKS), REFUSED),
    ("alice", "consume warren.worker.w1.control", consume(W1_CONTROL), REFUSED),
    ("alice", "consume warren.dead-letters", consume(DEAD_LETTER_QUEUE), REFUSED),
    ("alice", "purge warren.manager.requests", purge(MANAGER_REQUESTS), REFUSED),
    ("alice", "purge warren.worker.w1.chunks", purge(W1_CHUNKS), REFUSED),
    ("alice", "delete warren.manager.requests", delete(MANAGER_REQUESTS), REFUSED),
    ("alice", "delete warren.worker.w1.chunks", delete(W1_CHUNKS), REFUSED),
    ("alice", "delete exchange warren.manager", delete_exchange(MANAGER_EXCHANGE), REFUSED),
    ("alice", "declare warren.manager.events", declare(MANAGER_EVENTS), REFUSED),
    ("alice", "bind own queue to warren.clients with #", bind_own(CLIENTS_EXCHANGE, "#"), REFUSED),
    ("alice", "bind own queue to warren.clients with warren.client.*", bind_own(CLIENTS_EXCHANGE, "warren.client.*.*"), REFUSED),
    ("alice", "bind own queue to warren.workers/w1.chunks", bind_own(WORKERS_EXCHANGE, "w1.chunks"), REFUSED),
    ("alice", "bind own queue to warren.manager/requests", bind_own(MANAGER_EXCHANGE, "requests"), REFUSED),
    # A worker: its own queues; events to the manager; chunks to other workers; replies.
    ("w1", "consume own chunks queue", consume(W1_CHUNKS), OK),
    ("w1", "consume own control queue", consume(W1_CONTROL), OK),
    ("w1", "declare own chunks queue", declare(W1_CHUNKS), OK),
    ("w1", "publish warren.manager/events", publish(MANAGER_EXCHANGE, "events"), OK),
    ("w1", "publish warren.workers/w2.chunks", publish(WORKERS_EXCHANGE, "w2.chunks"), OK),
    ("w1", "publish warren.workers/w2.orders (a forged worker.forget)", publish(WORKERS_EXCHANGE, "w2.orders"), REFUSED),
    ("w1", "bind own chunks queue to warren.workers/w1.orders", bind(W1_CHUNKS, WORKERS_EXCHANGE, "w1.orders"), OK),
    ("w1", "bind own chunks queue to warren.workers/w2.orders", bind(W1_CHUNKS, WORKERS_EXCHANGE, "w2.orders"), REFUSED),
    ("w1", "publish warren.clients/<a reply queue>", publish(CLIENTS_EXCHANGE, "warren.client.x.y"), OK),
    ("w1", "publish warren.manager/requests", publish(MANAGER_EXCHANGE, "requests"), REFUSED),
    ("w1", "publish warren.workers/w2.control", publish(WORKERS_EXCHANGE, "w2.control"), REFUSED),
    ("w1", "publish the default exchange", publish("", W2_CONTROL), REFUSED),
    ("w1", "consume warren.worker.w2.chunks", consume(W2_CHUNKS), REFUSED),
    ("w1", "consume warren.manager.events", consume(MANAGER_EVENTS), REFUSED),
    ("w1", "consume warren.manager.requests", consume(MANAGER_REQUESTS), REFUSED),
    ("w1", "purge warren.worker.w2.chunks", purge(W2_CHUNKS), REFUSED),
    ("w1", "purge warren.manager.events", purge(MANAGER_EVENTS), REFUSED),
    ("w1", "delete warren.worker.w2.chunks", delete(W2_CHUNKS), REFUSED),
    ("w1", "delete warren.manager.events", delete(MANAGER_EVENTS), REFUSED),
    ("w1", "delete exchange warren.workers", delete_exchange(WORKERS_EXCHANGE), REFUSED),
    ("w1", "declare warren.worker.w2.chunks", declare(W2_CHUNKS), REFUSED),
    ("w1", "bind own chunks queue to warren.workers/w2.chunks", bind(W1_CHUNKS, WORKERS_EXCHANGE, "w2.chunks"), REFUSED),
    ("w1", "bind own chunks queue to warren.workers/#", bind(W1_CHUNKS, WORKERS_EXCHANGE, "#"), REFUSED),
    # The manager: its queues; commands to workers; answers to clients. Never a worker's voice.
    ("boss", "consume warren.manager.requests", consume(MANAGER_REQUESTS), OK),
    ("boss", "consume warren.manager.events", consume(MANAGER_EVENTS), OK),
    ("boss", "declare warren.worker.w1.chunks", declare(W1_CHUNKS), OK),
    ("boss", "publish warren.workers/w1.control", publish(WORKERS_EXCHANGE, "w1.control"), OK),
    ("boss", "publish warren.workers/w1.orders (worker.discard)", publish(WORKERS_EXCHANGE, "w1.orders"), OK),
    ("boss", "publish warren.workers/w1.chunks (it sends no chunks)", publish(WORKERS_EXCHANGE, "w1.chunks"), REFUSED),
    ("boss", "publish warren.clients/<a reply queue>", publish(CLIENTS_EXCHANGE, "warren.client.x.y"), OK),
    ("boss", "publish warren.manager/events (a forged heartbeat)", publish(MANAGER_EXCHANGE, "events"), REFUSED),
    ("boss", "publish warren.manager/requests", publish(MANAGER_EXCHANGE, "requests"), REFUSED),
    ("boss", "publish the default exchange", publish("", W1_CONTROL), REFUSED),
    ("boss", "consume warren.dead-letters", consume(DEAD_LETTER_QUEUE), REFUSED),
    ("boss", "bind own queue to warren.clients/#", bind_own(CLIENTS_EXCHANGE, "#"), REFUSED),
]  # fmt: skip


@pytest.mark.parametrize(
    ("user", "what", "op", "expected"), TABLE, ids=[f"{u}: {w}" for u, w, _, _ in TABLE]
)
def test_each_role_may_do_what_it_needs_and_nothing_else(
    rabbit: LocalNode, vhost: str, user: str, what: str, op: Op, expected: int
) -> None:
    got = try_op(rabbit, vhost, user, op)
    assert got == expected, f"{user} ({USERS[user]}): {what}: expected {expected}, got {got}"


def test_nobody_can_speak_as_another_user(rabbit: LocalNode, vhost: str) -> None:
    # RabbitMQ validates user_id: a client cannot pass for worker w1 (PRECONDITION_FAILED)
    def forged(ch: Any) -> None:
        ch.confirm_delivery()
        ch.basic_publish(MANAGER_EXCHANGE, "requests", b"{}", pika.BasicProperties(user_id="w1"))

    assert try_op(rabbit, vhost, "alice", forged) == 406


def test_users_add_is_idempotent_and_list_shows_roles(
    rabbit: LocalNode, vhost: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {
        "WARREN_ADMIN_URL": rabbit.admin_url,
        "WARREN_AMQP_URL": rabbit.url_for("x", "y", vhost),
    }
    assert users.main(["add", "worker", "w1", "--password", PW], env) == 0
    assert users.main(["add", "client", "carol", "--password", PW], env) == 0
    # a client is capped in connections and channels (RabbitMQ's user limits)
    limits = {"max-connections": 16, "max-channels": 64}
    assert rabbit.api("GET", "user-limits/carol") == [{"user": "carol", "value": limits}]
    assert users.main(["add", "worker", "carol", "--password", PW], env) == 0  # a new role
    assert rabbit.api("GET", "user-limits/carol") == []  # a service is not
    assert users.main(["list"], env) == 0
    out = capsys.readouterr().out
    roles = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()[1:]}
    assert {k: roles[k] for k in USERS} == USERS
    assert roles["carol"] == "worker"
    assert roles["guest"] == "other"
    assert users.main(["remove", "carol"], env) == 0
    assert users.main(["remove", "carol"], env) == 0  # nothing to remove: still fine
    assert "there is no user 'carol'" in capsys.readouterr().out
    assert try_op(rabbit, vhost, "w1", consume(W1_CHUNKS)) == 0  # the password still works


def run_users(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manager", "users", *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": "/nonexistent", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "admin", "code", "says"),
    [
        (("list",), "http://guest:wrong@127.0.0.1:{mgmt}/", 6, "refused the login 'guest'"),
        (("list",), "http://guest:guest@127.0.0.1:{free}/", 4, "cannot reach the management API"),
        (("add", "wizard", "x", "--password", "p"), "http://guest:guest@127.0.0.1:{mgmt}/", 2, "unknown role 'wizard'"),
        (("add", "worker", "w/1", "--password", "p"), "http://guest:guest@127.0.0.1:{mgmt}/", 2, "cannot be a worker's name"),
        (("list",), "", 2, "WARREN_ADMIN_URL is not set"),
    ],
    ids=["wrong admin password", "API unreachable", "unknown role", "bad worker name", "no admin URL"],
)  # fmt: skip
def test_users_errors_are_one_sentence(
    rabbit: LocalNode, args: tuple[str, ...], admin: str, code: int, says: str
) -> None:
    from devtools.localnode import free_port

    url = admin.format(mgmt=rabbit.mgmt_port, free=free_port())
    res = run_users(*args, WARREN_ADMIN_URL=url, WARREN_AMQP_URL=rabbit.url)
    assert res.returncode == code, res
    assert says in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert "wrong" not in res.stderr  # no password in the message


def test_the_services_run_with_their_own_users(rabbit: LocalNode, tmp_path: Path) -> None:
    # Given a cluster whose manager, workers and clients each log in as their role's user
    c = Cluster(rabbit, tmp_path / "c")
    try:
        add_users(rabbit, c.vhost)
        c.env_extra["WARREN_MANAGER_USER"] = "boss"  # clients: answers only from it
        c.start("manager", WARREN_AMQP_URL=rabbit.url_for("boss", PW, c.vhost))
        for w in ("w1", "w2"):  # not told who the manager is: its commands' key says
            c.start(w, WARREN_AMQP_URL=rabbit.url_for(w, PW, c.vhost), WARREN_MANAGER_USER="")
        c.wait_alive(["w1", "w2"])
        alice = rabbit.url_for("alice", PW, c.vhost)
        bob = rabbit.url_for("bob", PW, c.vhost)
        src = tmp_path / "diary.txt"
        src.write_bytes(b"dear diary " * 50_000)
        # When alice uploads (chunks, replicas, confirmations) and restores
        c.client("upload", str(src), "--replicas", "2", WARREN_AMQP_URL=alice).ok()
        listed = c.client("list", "--json", WARREN_AMQP_URL=alice).ok().json()
        assert [f["name"] for f in listed] == ["diary.txt"]
        c.client("download", "diary.txt", "-o", str(tmp_path / "back"), WARREN_AMQP_URL=alice).ok()
        # Then every step worked with least privilege, and bob sees none of it
        assert (tmp_path / "back").read_bytes() == src.read_bytes()
        assert c.client("list", "--json", WARREN_AMQP_URL=bob).ok().json() == []
        logs = c.logs()
        assert "ACCESS_REFUSED" not in logs and "dead-lettering" not in logs, logs
    finally:
        c.stop_all()
