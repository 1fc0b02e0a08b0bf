"""What a transfer reports as it goes and when it ends: the hooks a user interface
implements (``client/render.py`` with rich bars, tests with nothing) and the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from warren import messages as m
from warren.errors import BUSY, UNAVAILABLE, DecodeError
from warren.transport import Confirm, Delivery

# The answer a request gets when RabbitMQ had no queue to put it in.
NO_MANAGER = m.ErrorReply(
    UNAVAILABLE, "the manager has never run on this broker (it has no request queue)."
)
# ... and when its queue could not take it: full (``topology.REQUESTS_MAX_LENGTH`` requests
# wait already), or a quorum queue electing a leader. Busy: nothing was done with it, so
# the client asks again (``Session.request``) until its request timeout runs out.
NOT_NOW = m.ErrorReply(
    BUSY,
    "the manager is busy: its request queue could not take the request (full, or "
    "RabbitMQ could not take it just now); try again in a moment.",
)


def not_taken(why: Confirm) -> m.ErrorReply:
    """The answer to a request RabbitMQ did not take: returned or nacked."""
    return NO_MANAGER if why is Confirm.RETURNED else NOT_NOW


class Progress:
    """Hooks a user interface overrides; the defaults do nothing."""

    def hashing(self, done: int, total: int) -> None:
        """``done`` of ``total`` bytes hashed; called from the hashing thread."""

    def started(self, total: int) -> None: ...
    def transferred(self, nbytes: int) -> None: ...
    def replica(self, worker: str, hop: int) -> None: ...
    def retrying(self, reason: str) -> None: ...


@dataclass
class UploadResult:
    name: str
    size: int
    sha256: str
    chain: tuple[str, ...]
    confirmed: dict[str, int] = field(default_factory=dict)  # worker -> hop
    recorded: bool = True  # False: stored on every replica, but not yet in the catalog
    deduplicated: bool = False  # the cluster already held the content: nothing was sent
    sent: int = 0  # sealed bytes of it this command sent (0: every chunk was stored)
    chunks: tuple[m.ChunkRef, ...] = ()  # its sealed chunks, in order
    version: int = 0  # the version it became (0: not committed, as a snapshot's files)


@dataclass
class DownloadResult:
    name: str
    size: int
    sha256: str
    worker: str
    path: Path
    version: int = 1
    dropped: int = 0  # setuid, setgid or sticky bits it had and did not get back


@dataclass
class CopyCheck:
    """One stored copy, re-hashed by its holder for ``verify``."""

    name: str
    version: int
    worker: str
    ok: bool
    reason: str = ""  # why not, when not ok


def decode_answer(d: Delivery) -> m.Message:
    """The manager's answer; one that cannot be decoded becomes an "unavailable" error."""
    try:
        return m.decode(d.type, d.body)
    except DecodeError as exc:
        return m.ErrorReply(UNAVAILABLE, f"garbled answer from the manager: {exc}")
