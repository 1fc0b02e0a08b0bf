"""TLS towards RabbitMQ: the context every amqps:// connection uses, and the failed
certificate check, or the broker's refusal of the client's certificate, found in the error
a connection attempt ends with."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from typing import Any

from warren.config import Settings
from warren.errors import Unavailable, UsageError


class CertificateError(Unavailable):
    """The broker's TLS certificate did not verify (unknown CA, wrong host name, expired),
    or the broker refused the client's (none given, or not signed by a CA it trusts).

    Exit 4 like any unreachable broker, but never retried: waiting will not fix it."""


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Peer verification on, host name checked: against ``WARREN_TLS_CA_FILE`` (a PEM
    bundle), or the system's CAs when it is unset; with a client certificate if given."""
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
        if settings.tls_cert_file:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
    except FileNotFoundError as exc:
        raise UsageError(f"cannot read the TLS file {exc.filename}: no such file.") from None
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(
            "cannot use the TLS files WARREN_TLS_CA_FILE, WARREN_TLS_CERT_FILE and "
            f"WARREN_TLS_KEY_FILE name ({exc})."
        ) from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# The alerts a broker sends when it refuses the client's certificate (none sent, or one
# its CA did not sign). pika keeps only their text: the SSLError itself is gone by the time
# its connection error is raised, as a string inside IncompatibleProtocolError.
_CLIENT_CERT_ALERTS = re.compile(
    r"((?:tlsv1[0-9]*|sslv3) alert (certificate required|unknown ca|bad certificate|"
    r"certificate unknown|certificate expired|certificate revoked))",
    re.IGNORECASE,
)


def client_certificate_refused(exc: BaseException) -> str | None:
    """The alert by which the broker refused this client's certificate, if it did."""
    for e in _chain(exc):
        if isinstance(e, (BaseException, str)) and (m := _CLIENT_CERT_ALERTS.search(str(e))):
            return m.group(1).lower()
    return None


def _chain(exc: BaseException) -> Iterator[Any]:
    """The exception, its causes and contexts, and what their args and groups hold."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseException):
            todo.extend([e.__cause__, e.__context__, *e.args])
            todo.extend(getattr(e, "exceptions", None) or ())
        elif isinstance(e, (list, tuple)):
            todo.extend(e)


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed somewhere inside pika's connection error."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
    return None
