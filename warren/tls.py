"""TLS towards RabbitMQ: the context every amqps:// connection uses, and the failed
certificate check found in the error a connection attempt ends with."""

from __future__ import annotations

import ssl
from typing import Any

from warren.config import Settings
from warren.errors import Unavailable, UsageError


class CertificateError(Unavailable):
    """The broker's TLS certificate did not verify (unknown CA, wrong host name, expired).

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


def certificate_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate check that failed somewhere inside pika's connection error."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return e
        if isinstance(e, BaseException):
            todo.extend([e.__cause__, e.__context__, *e.args])
            todo.extend(getattr(e, "exceptions", None) or ())
        elif isinstance(e, (list, tuple)):
            todo.extend(e)
    return None
