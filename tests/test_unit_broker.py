"""pika's private attributes that ``warren.broker`` relies on, checked on the installed pika,
and how pika's exceptions become warren's.

Each ``_pika_*`` function in ``warren/broker.py`` uses one of these. A pika release that
renames or drops one must fail here, loudly, rather than slow warren down or break its
publisher confirms in some run far from the cause.
"""

from __future__ import annotations

import inspect

import pika.exceptions as pex
import pytest
from pika.adapters import base_connection, blocking_connection
from pika.adapters.utils import io_services_utils
from pika.channel import Channel
from pika.connection import Connection

from warren.broker import translate_errors
from warren.errors import BrokerRefused, BrokerUnavailable


def test_socket_reads_are_sized_through_the_transport_instance() -> None:
    transport = io_services_utils._AsyncTransportBase
    assert isinstance(transport._MAX_RECV_BYTES, int)
    assert isinstance(transport._MAX_CONSUME_BYTES, int)
    source = inspect.getsource(transport)
    # Read through self, so setting them on one transport changes only that connection.
    assert "self._MAX_RECV_BYTES" in source and "self._MAX_CONSUME_BYTES" in source
    assert "self._transport = " in inspect.getsource(base_connection.BaseConnection)


def test_blocking_objects_expose_their_async_implementation() -> None:
    conn_source = inspect.getsource(blocking_connection.BlockingConnection.__init__)
    assert "self._impl" in conn_source
    channel = blocking_connection.BlockingChannel
    assert "self._impl" in inspect.getsource(channel.__init__)
    assert callable(channel._flush_output)
    assert list(inspect.signature(channel._flush_output).parameters)[1:2] == ["waiters"]


def test_confirm_mode_takes_a_callback_per_confirm() -> None:
    params = inspect.signature(Channel.confirm_delivery).parameters
    assert "ack_nack_callback" in params and "callback" in params
    assert callable(Channel.add_on_return_callback)
    assert isinstance(inspect.getattr_static(Connection, "params", None), property) or (
        "self.params" in inspect.getsource(Connection.__init__)
    )


def test_the_transport_keeps_its_socket_where_a_bounded_close_shuts_it() -> None:
    source = inspect.getsource(io_services_utils._AsyncTransportBase.__init__)
    assert "self._sock = sock" in source


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pex.ProbableAuthenticationError, BrokerUnavailable),
        (pex.ProbableAccessDeniedError, BrokerUnavailable),
    ],
)
def test_a_login_cut_short_by_a_dropped_socket_is_worth_a_retry(
    error: type[Exception], expected: type[Exception]
) -> None:
    # As pika raises it when RabbitMQ stops in the middle of the handshake
    lost = pex.StreamLostError("Stream connection lost: ConnectionResetError(104, 'reset')")
    with pytest.raises(expected), translate_errors():
        raise error(repr(lost))


@pytest.mark.parametrize(
    ("error", "sentence"),
    [
        (pex.ProbableAuthenticationError, "refused the credentials"),
        (pex.ProbableAccessDeniedError, "denied access to the virtual host"),
    ],
)
def test_a_login_the_broker_closed_is_a_refusal(error: type[Exception], sentence: str) -> None:
    closed = pex.ConnectionClosedByBroker(403, "ACCESS_REFUSED - Login was refused")
    with pytest.raises(BrokerRefused, match=sentence), translate_errors():
        raise error(repr(closed))
