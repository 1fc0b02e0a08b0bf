"""The reconnect loop every service runs: what it retries and what it gives up on."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from warren import service
from warren.config import Settings
from warren.errors import BrokerRefused, Undeliverable, WarrenError


class FakeConnection:
    """Stands in for a transport: the loop's policy needs no broker."""

    def __init__(self, _settings: Settings, _name: str) -> None:
        self.closed = False

    def open(self, **_kw: Any) -> None:
        pass

    def process(self, _time_limit: float) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def run(setup_errors: list[WarrenError], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run the loop with a setup that fails with these errors in turn, then succeeds and
    stops the service; return how many times setup ran."""
    monkeypatch.setattr("warren.service.time.sleep", lambda _s: None)
    stop = threading.Event()
    calls = []

    def setup(_conn: Any) -> None:
        calls.append(1)
        if setup_errors:
            raise setup_errors.pop(0)
        stop.set()

    service.run_connection(FakeConnection, Settings(), "test", setup, stop)  # type: ignore[arg-type]
    return len(calls)


def test_a_message_the_broker_did_not_take_during_setup_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As when a quorum queue is electing its leader right after a node died
    undelivered = Undeliverable("RabbitMQ did not accept a worker.inventory message.")
    assert run([undelivered, undelivered], monkeypatch) == 3


def test_a_refusal_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BrokerRefused):
        run([BrokerRefused("RabbitMQ refused the credentials.")], monkeypatch)
