"""TLS on a real broker: a private node with a TLS listener and a throwaway CA (trustme).

Peer verification is on and the host name is checked: the right CA gives a round trip
(upload and download through a manager and workers over amqps://, with a client
certificate), a wrong CA or a certificate for another host is one sentence and exit 4.
The node requires a client certificate: one with its key apart or in the same file is
let in, none or one from another CA is one sentence and exit 4.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.localnode import LocalNode, free_port, tls_config
from tests.cluster import Cluster, wait_for
from warren import errors

trustme = pytest.importorskip("trustme", reason="pip install trustme (the dev extra)")


class TLSNode:
    def __init__(self, node: LocalNode, port: int, certs: Path) -> None:
        self.node, self.port, self.certs = node, port, certs

    def url(self, vhost: str, host: str = "localhost") -> str:
        return f"amqps://guest:guest@{host}:{self.port}/{vhost}"


@pytest.fixture(scope="module")
def tls_node(rabbit: LocalNode) -> Iterator[TLSNode]:
    # The node may run as the rabbitmq user: pytest's 0700 folders would hide the files.
    certs = Path(tempfile.mkdtemp(prefix="warren-tls-"))
    certs.chmod(0o755)
    ca = trustme.CA()
    server = ca.issue_cert("localhost")
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    server.private_key_pem.write_to_path(str(certs / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(certs / "server.pem"))
    client = ca.issue_cert("warren-client")
    client.private_key_and_cert_chain_pem.write_to_path(str(certs / "client.pem"))
    client.cert_chain_pems[0].write_to_path(str(certs / "client-cert.pem"))  # key apart
    client.private_key_pem.write_to_path(str(certs / "client.key"))
    trustme.CA().cert_pem.write_to_path(str(certs / "other-ca.pem"))
    for f in certs.iterdir():
        f.chmod(0o644)
    base = Path(tempfile.mkdtemp(prefix="warren-rabbit-tls-"))
    base.chmod(0o755)
    try:
        for attempt in range(2):  # a free port can be taken by another test run meanwhile
            port = free_port()
            config = tls_config(
                port,
                certs / "ca.pem",
                certs / "server.pem",
                certs / "server.key",
                require_client_cert=True,
            )
            node = LocalNode.with_free_ports(base / str(attempt), name="wtls", extra_config=config)
            try:
                node.start()
                break
            except errors.Unavailable:
                node.stop()
                if attempt:
                    raise
        yield TLSNode(node, port, certs)
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(certs, ignore_errors=True)


@pytest.fixture
def tls_cluster(tls_node: TLSNode, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tls_node.node, tmp_path / "c")
    quoted = c.url.rsplit("/", 1)[1]
    c.url = tls_node.url(quoted)
    c.env_extra.update(
        WARREN_TLS_CA_FILE=str(tls_node.certs / "ca.pem"),
        WARREN_TLS_CERT_FILE=str(tls_node.certs / "client-cert.pem"),
        WARREN_TLS_KEY_FILE=str(tls_node.certs / "client.key"),
    )
    yield c
    c.stop_all()


def test_a_round_trip_over_tls(tls_cluster: Cluster, tmp_path: Path) -> None:
    # Given a manager and two workers that reach RabbitMQ only over amqps://
    c = tls_cluster
    c.start("manager")
    c.start("w1")
    c.start("w2")
    c.wait_alive(["w1", "w2"])
    # When a client uploads and restores a file of several chunks
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    c.client("upload", str(src), "--replicas", "2").ok()
    c.client("download", "f.bin", "-o", str(tmp_path / "back")).ok()
    # Then it comes back byte for byte, and the broker saw TLS connections only
    assert (tmp_path / "back").read_bytes() == src.read_bytes()

    # (the management API lists connections once its statistics have caught up: wait)
    def mine() -> list[dict[str, Any]]:
        return [x for x in c.node.api("GET", "connections") if x.get("vhost") == c.vhost]

    wait_for(lambda: len(mine()) >= 3, timeout=60, what="the services' connections listed")
    assert all(x.get("ssl") for x in mine()), mine()


@pytest.mark.parametrize(
    ("ca_file", "host", "says"),
    [
        ("other-ca.pem", "localhost", "self-signed certificate in certificate chain"),
        ("ca.pem", "127.0.0.1", "IP address mismatch"),  # the certificate is for localhost
        ("", "localhost", "self-signed certificate in certificate chain"),  # the system's CAs
    ],
    ids=["a CA that did not sign it", "another host name", "the system CAs"],
)
def test_a_certificate_that_does_not_verify_is_one_sentence_and_exit_4(
    tls_node: TLSNode, tls_cluster: Cluster, ca_file: str, host: str, says: str
) -> None:
    c = tls_cluster
    res = c.client(
        "list",
        WARREN_TLS_CA_FILE=str(tls_node.certs / ca_file) if ca_file else "",
        WARREN_AMQP_URL=c.url.replace("localhost", host),
    )
    assert res.code == errors.EXIT_UNAVAILABLE, res
    assert "RabbitMQ's TLS certificate did not verify" in res.err and says in res.err, res.err
    assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err


def test_the_broker_lets_in_a_client_certificate_and_refuses_none_or_a_stranger(
    tls_node: TLSNode, tls_cluster: Cluster, tmp_path: Path
) -> None:
    # Given a node that requires a client certificate its CA signed, and a manager on it
    c = tls_cluster
    c.start("manager")
    c.wait_alive([])
    # When a client gives one, its key apart (the cluster's settings) or in the same file,
    # then it is let in
    c.client("list").ok()
    c.client(
        "list", WARREN_TLS_CERT_FILE=str(tls_node.certs / "client.pem"), WARREN_TLS_KEY_FILE=""
    ).ok()
    # When it gives none, or one another CA signed, then it is one sentence and exit 4, at once
    stranger = trustme.CA().issue_cert("warren-client")
    stranger.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "stranger.pem"))
    for cert, alert in [
        ("", "tlsv13 alert certificate required"),
        (str(tmp_path / "stranger.pem"), "tlsv1 alert unknown ca"),
    ]:
        started = time.monotonic()
        res = c.client("list", WARREN_TLS_CERT_FILE=cert, WARREN_TLS_KEY_FILE="")
        assert res.code == errors.EXIT_UNAVAILABLE, res
        assert res.err.strip() == (
            f"error: RabbitMQ refused this client's TLS certificate ({alert}): set "
            "WARREN_TLS_CERT_FILE (and WARREN_TLS_KEY_FILE) to one its CA signed."
        ), res.err
        assert time.monotonic() - started < 8, "retried as if the broker were down"
