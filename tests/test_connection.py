"""warren's connection against a real RabbitMQ node, where only the real broker can show it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from devtools.localnode import LocalNode
from warren import broker
from warren.broker import Connection
from warren.config import Settings


class FreezingProxy:
    """A TCP relay to a broker that can stop passing bytes, both ways, while both sockets
    stay open: a peer gone silent, or a stream no longer read."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target))
                self.socks += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.05)
                dst.sendall(data)

    def close(self) -> None:
        for s in [self.listener, *self.socks]:
            s.close()


@pytest.fixture
def proxy(rabbit: LocalNode) -> Iterator[FreezingProxy]:
    p = FreezingProxy(rabbit.amqp_port)
    try:
        yield p
    finally:
        p.close()


@pytest.mark.timeout(120)
def test_a_close_the_broker_never_answers_ends_within_seconds(proxy: FreezingProxy) -> None:
    # Given an open connection (through a relay), whose broker then goes silent
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/%2F"
    conn = Connection(Settings(amqp_url=url), "close test")
    conn.open(give_up_after=10)
    assert conn.is_open
    proxy.frozen.set()
    # When it is closed (as a command does after Ctrl-C)
    started = time.monotonic()
    conn.close()
    # Then the close ends after CLOSE_SECONDS, not after pika's heartbeat timeout (a minute)
    took = time.monotonic() - started
    assert took < broker.CLOSE_SECONDS + 2, took
    assert not conn.is_open
