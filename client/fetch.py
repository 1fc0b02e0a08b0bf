"""A file's sealed chunks fetched back, opened and written at their offsets.

Up to ``AHEAD`` chunks are asked for at once, each from the live holder the manager finds
least busy, so one restore reads from several workers. A chunk arrives as the blob its
holder keeps: it must hash to the SHA-256 the catalog names and open with the owner's key
(``warren.chunkseal``: the chunk id inside it is the keyed hash of what it opens to), or
that copy is bad and another holder is asked; only when no holder has a good copy is the
file lost (exit 5). The whole file's SHA-256 is hashed in order as chunks complete.

Everything runs on the connection's thread: a chunk is at most a message's size.
"""

from __future__ import annotations

import collections
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from client.channel import Channel
from client.outcomes import Progress, decode_answer, not_taken
from warren import chunkseal, compression
from warren import messages as m
from warren.errors import (
    DecodeError,
    IntegrityError,
    NoReplica,
    Unavailable,
    WarrenError,
    from_wire,
)
from warren.ownerkey import OwnerKeys
from warren.transport import Confirm, Delivery

# Chunks asked for at once: enough to keep several workers streaming.
AHEAD = 8
# Holders tried for one chunk before it is given up.
TRIES = 4
# How a worker's restore.failed begins when its copy turned out damaged (worker.serve).
DAMAGED = "stored copy is damaged"


@dataclass(eq=False)
class _Wanted:
    """One chunk on its way back."""

    index: int
    ref: m.ChunkRef
    offset: int
    also: list[tuple[int, int]] = field(default_factory=list)  # the same blob further on
    route: str = ""
    worker: str = ""  # who serves it (from the manager's answer)
    exclude: list[str] = field(default_factory=list)  # holders whose copy failed
    parts: list[tuple[int, bytes]] = field(default_factory=list)
    received: int = 0
    ended: bool = False
    problem: str = ""  # why the current holder's copy failed
    bad_copy: bool = False  # the copy itself was wrong (not just unavailable)
    error: WarrenError | None = None  # final, for the whole file
    answered: bool = False
    deadline: float = 0.0
    last_error: WarrenError | None = None
    last_problem: str = ""  # why the last holder's copy failed


class ChunkFetcher:
    """The chunks of one file, into ``fd``."""

    def __init__(
        self,
        session: Channel,
        keys: OwnerKeys,
        fd: int,
        name: str,
        chunks: tuple[m.ChunkRef, ...],
        progress: Progress,
        write: Callable[[int, bytes, int], None],
    ) -> None:
        self.session = session
        self.keys = keys
        self.fd = fd
        self.name = name
        self.progress = progress
        self.write = write  # (fd, data, offset): the restore's own, which says what failed
        self.max_plain = max((c.plain for c in chunks), default=0)
        offsets, at = [], 0
        for c in chunks:
            offsets.append(at)
            at += c.plain
        self.todo = [_Wanted(i, c, o) for i, (c, o) in enumerate(zip(chunks, offsets, strict=True))]
        self.digest = hashlib.sha256()
        self.workers: set[str] = set()  # those that served a good chunk
        self.bad: list[str] = []  # copies that failed their check: "worker: why"

    def run(self) -> str:
        """Fetch, open, write every chunk; the SHA-256 of the file as written."""
        pending, self.todo = collections.deque(self.todo), []
        flight: list[_Wanted] = []
        finished: dict[int, bytes] = {}
        next_index = 0
        timeout = self.session.settings.transfer_timeout
        try:
            while pending or flight:
                # At most AHEAD fetches at once, and none further than 2 x AHEAD chunks past
                # the first not yet hashed: what waits to be hashed in order stays bounded
                # however slow one chunk is.
                while pending and len(flight) < AHEAD and pending[0].index < next_index + 2 * AHEAD:
                    w = pending.popleft()
                    same = next((f for f in flight if f.ref == w.ref), None)
                    if same is not None:  # asked for already: one fetch serves both places
                        same.also.append((w.index, w.offset))
                        continue
                    self._ask(w)
                    flight.append(w)
                self.session.conn.process(0.05)
                now = time.monotonic()
                for w in list(flight):
                    data = self._step(w, now, timeout)
                    if data is None:
                        continue
                    flight.remove(w)
                    self.workers.add(w.worker)
                    self.session.unroute(w.route)
                    for index, offset in [(w.index, w.offset), *w.also]:
                        self.write(self.fd, data, offset)
                        self.progress.transferred(len(data))
                        finished[index] = data
                    while next_index in finished:
                        self.digest.update(finished.pop(next_index))
                        next_index += 1
        finally:
            for w in flight:
                self.session.unroute(w.route)
        return self.digest.hexdigest()

    def _ask(self, w: _Wanted) -> None:
        self.session.unroute(w.route)
        w.route = uuid.uuid4().hex
        w.worker, w.parts, w.received, w.ended, w.problem, w.bad_copy = "", [], 0, False, "", False
        w.answered = False
        w.deadline = time.monotonic() + self.session.settings.request_timeout
        self.session.route(w.route, lambda d: self._on_delivery(w, d))
        req = m.DownloadRequest(
            name="", exclude=tuple(w.exclude), client=self.session.client_name, blob=w.ref.sha256
        )

        def refused(why: Confirm) -> None:
            answer = not_taken(why)
            w.error = from_wire(answer.code, answer.message)

        self.session.send_request(req, w.route, refused)

    def _on_delivery(self, w: _Wanted, d: Delivery) -> None:
        d.ack()
        if d.type in (m.DownloadAccepted.TYPE, m.ErrorReply.TYPE):
            if w.answered or not self.session.from_manager(d):
                return
            w.answered = True
            answer = decode_answer(d)
            if isinstance(answer, m.DownloadAccepted) and answer.sha256 == w.ref.sha256:
                w.worker = answer.worker
                w.deadline = time.monotonic() + self.session.settings.transfer_timeout
            elif isinstance(answer, m.ErrorReply):
                w.last_error = from_wire(answer.code, answer.message)
            else:
                w.last_error = Unavailable("the manager answered a chunk with something else.")
            return
        if not w.worker or not self.session.from_worker(d, [w.worker]):
            return
        w.deadline = time.monotonic() + self.session.settings.transfer_timeout
        if d.type == m.RESTORE_CHUNK_TYPE:
            try:
                h = m.RestoreChunk.from_headers(d.headers)
                body = compression.decode(d.body, h.encoding, w.ref.size)
            except DecodeError as exc:
                w.problem, w.bad_copy = f"a chunk that does not decode ({exc})", True
                return
            w.parts.append((h.offset, body))
            w.received += len(body)
        elif d.type == m.RestoreEnd.TYPE:
            w.ended = True
        elif d.type == m.RestoreFailed.TYPE:
            try:
                w.problem = m.RestoreFailed.decode(d.body).reason
            except DecodeError:
                w.problem = "it failed"
            # Its own word that its copy is bad (found as it read it): when every holder's
            # is, the chunk is lost (exit 5), not the cluster unavailable.
            w.bad_copy = w.problem.startswith(DAMAGED)

    def _step(self, w: _Wanted, now: float, timeout: float) -> bytes | None:
        """The chunk's plaintext once it is in and good; None while it is on its way (or
        asked for again). Raises what ends the whole file."""
        if w.error is not None:
            raise w.error
        if w.last_error is not None:
            if isinstance(w.last_error, NoReplica) and w.exclude:  # every holder was tried
                problem = f"no good copy of a chunk of {self.name!r} is left ({w.last_problem})."
                raise IntegrityError(problem) if w.bad_copy else Unavailable(problem)
            raise w.last_error
        if not w.worker:
            if now > w.deadline:
                raise Unavailable(self.session.silent())
            return None
        if not w.problem and not w.ended:
            if now > w.deadline:
                w.problem = f"no data for {timeout:.0f} s"
            else:
                return None
        if not w.problem:
            data = self._open(w)
            if data is not None:
                return data
        self._again(w)
        return None

    def _open(self, w: _Wanted) -> bytes | None:
        sealed = b"".join(part for _, part in sorted(w.parts))
        w.parts = []  # let the bodies go: a restore holds a window of chunks, not the file
        if len(sealed) != w.ref.size or hashlib.sha256(sealed).hexdigest() != w.ref.sha256:
            w.problem, w.bad_copy = "its copy of a chunk failed its SHA-256 check", True
            return None
        try:
            _, plain = chunkseal.open_chunk(self.keys.seal, self.keys.ids, sealed, self.max_plain)
        except chunkseal.Damaged as exc:
            w.problem, w.bad_copy = f"its copy of a chunk does not open ({exc})", True
            return None
        if len(plain) != w.ref.plain:
            w.problem, w.bad_copy = "its copy of a chunk has another length", True
            return None
        return plain

    def _again(self, w: _Wanted) -> None:
        """This holder's copy failed: ask for another, or give up on the file."""
        self.progress.retrying(f"{w.worker}: {w.problem}; trying another copy")
        if w.bad_copy:
            self.bad.append(f"{w.worker}: {w.problem}")
        w.exclude.append(w.worker)
        if len(w.exclude) >= TRIES:
            problem = f"{self.name!r}: no good copy of a chunk ({w.problem})."
            raise IntegrityError(problem) if w.bad_copy else Unavailable(problem)
        bad, w.last_problem = w.bad_copy, f"{w.worker}: {w.problem}"
        self._ask(w)
        w.bad_copy = bad
