"""One exception hierarchy for warren.

Every error a user can meet carries one clear sentence and the exit code the client uses
for its kind. pika's exceptions never leave ``warren.broker``: they become
``BrokerUnavailable`` (transient: retry) or ``BrokerRefused`` (fatal: say it and stop).
"""

from __future__ import annotations

# Exit codes of the client, by kind of failure (documented in --help and the README).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAVAILABLE = 4
EXIT_INTEGRITY = 5
EXIT_REFUSED = 6
EXIT_INTERRUPTED = 130


class WarrenError(Exception):
    """Base class: the message is one sentence a user can act on."""

    exit_code = EXIT_FAILURE


class UsageError(WarrenError):
    """A bad command line, setting or local path."""

    exit_code = EXIT_USAGE


class NotFound(WarrenError):
    """The named file is not in the catalog."""

    exit_code = EXIT_NOT_FOUND


class Unavailable(WarrenError):
    """The cluster cannot serve the request now (broker, manager or workers unreachable)."""

    exit_code = EXIT_UNAVAILABLE


class Busy(Unavailable):
    """The cluster turned the request away for a moment, having done nothing with it: the
    manager is catching up with its workers' records, or the request queue could not take
    it (a quorum queue electing its leader). A client asks again until its request timeout
    runs out; only what outlasts that is said (exit 4)."""


class NoReplica(Unavailable):
    """No live worker holds a copy that the client has not already tried."""


class BrokerUnavailable(Unavailable):
    """The connection to RabbitMQ failed or was lost; retrying may help."""


class Locked(BrokerUnavailable):
    """An exclusive queue is held by another connection (RESOURCE_LOCKED): for the manager,
    another manager is active. Transient: try again once it is gone."""


class BrokerBlocked(BrokerUnavailable):
    """RabbitMQ blocked our publishes (a memory or disk alarm) for too long.

    Transient like any lost connection: services reconnect and wait again."""


class IntegrityError(WarrenError):
    """Bytes did not match their SHA-256."""

    exit_code = EXIT_INTEGRITY


class Refused(WarrenError):
    """The manager or a worker refused the request (too many replicas, no room, ...)."""

    exit_code = EXIT_REFUSED


class BrokerRefused(Refused):
    """RabbitMQ refused us (bad credentials, no access, a precondition): retrying won't help."""


class DecodeError(WarrenError):
    """A message could not be decoded or failed validation."""


class Undeliverable(WarrenError):
    """A published message had no queue to go to, or the broker nacked it."""


# -- errors on the wire ---------------------------------------------------------------------
# The manager answers a request it cannot serve with an ``error`` message whose ``code`` is
# one of these; the client turns it back into the same exception, and acts on the class,
# never on the message's text. One table, both directions (docs/protocol.md lists it).
# Workers use the same codes in ``replica.failed``. Modules name a code by its constant
# here, never by its text.
NOT_FOUND = "not_found"
REFUSED = "refused"
UNAVAILABLE = "unavailable"
BUSY = "busy"
NO_REPLICA = "no_replica"
INTEGRITY = "integrity"
INVALID = "invalid"

WIRE_CODES: dict[str, type[WarrenError]] = {
    NOT_FOUND: NotFound,
    REFUSED: Refused,
    UNAVAILABLE: Unavailable,
    BUSY: Busy,
    NO_REPLICA: NoReplica,
    INTEGRITY: IntegrityError,
    INVALID: UsageError,
}
_CODE_OF = {cls: code for code, cls in WIRE_CODES.items()} | {DecodeError: INVALID}


def to_wire(exc: WarrenError) -> str:
    """The wire code for ``exc``: that of its nearest class in the table, else "error"."""
    for cls in type(exc).__mro__:
        if cls in _CODE_OF:
            return _CODE_OF[cls]
    return "error"


def from_wire(code: str, message: str) -> WarrenError:
    """The exception a wire code stands for; an unknown code is a plain failure (exit 1)."""
    return WIRE_CODES.get(code, WarrenError)(message)
