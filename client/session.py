"""The client's side of the protocol, with no terminal output: the CLI and tests use it.

A ``Session`` owns one connection and one exclusive reply queue. Everything addressed to
the client (the manager's answers, replica confirmations, restore chunks) arrives there and
is routed by ``correlation_id`` to whoever is waiting for it.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import queue
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from warren import messages as m
from warren.broker import Connection
from warren.chunks import ChunkPlan, Writeback, read_chunks, sha256_file
from warren.config import Settings
from warren.errors import (
    DecodeError,
    IntegrityError,
    NoReplica,
    Unavailable,
    UsageError,
    WarrenError,
    from_wire,
)
from warren.topology import (
    MANAGER_REQUESTS,
    client_reply_queue,
    client_topology,
    worker_chunks,
)
from warren.transport import Connect, Delivery

log = logging.getLogger("warren.client")

R = TypeVar("R", bound=m.Message)

# A transfer may take this long per byte on top of settings.transfer_timeout before the
# client gives up waiting for the last confirmation (workers hash the file at the end).
SECONDS_PER_BYTE = 1 / (20 * 1024 * 1024)
NO_MANAGER = m.ErrorReply(
    "unavailable", "the manager has never run on this broker (it has no request queue)."
)
# Uploads (files or packs) a command keeps in flight at once (placed or sent, not confirmed).
UPLOADS_IN_FLIGHT = 32
# Files up to this size travel in packs: many files to a request and to a message.
PACK_FILE_MAX = 256 * 1024
# A pack holds at most this many files, and at most settings.chunk_size bytes.
PACK_FILES = 128
# Packs in flight at once: each holds its files' bytes until it is sent.
PACKS_IN_FLIGHT = 8
# Files hashed ahead of their placement request, on the hashing thread.
HASH_AHEAD = 2


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


@dataclass
class DownloadResult:
    name: str
    size: int
    sha256: str
    worker: str
    path: Path


class Session:
    def __init__(self, settings: Settings, connect: Connect = Connection) -> None:
        self.settings = settings
        self.client_name = settings.client_name or f"{os.uname().nodename}-{os.getpid()}"
        self.connect = connect
        self.conn = connect(settings, f"warren client {self.client_name}")
        self.reply_queue = client_reply_queue(self.client_name)
        self._routes: dict[str, Callable[[Delivery], None]] = {}

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.conn.open(give_up_after=self.settings.connect_timeout)
        self.conn.declare(client_topology(self.reply_queue))
        self.conn.consume(self.reply_queue, self._on_reply)

    def close(self) -> None:
        self.conn.close()

    def reconnect(self) -> None:
        """A new connection, with a fresh reply queue: the old exclusive one may outlive
        its connection on the broker for a moment."""
        self.close()
        self.reply_queue = client_reply_queue(self.client_name)
        self.open()

    def _on_reply(self, d: Delivery) -> None:
        route = self._routes.get(d.correlation_id or "")
        if route is None:
            d.ack()  # a late answer to something we stopped waiting for
            return
        route(d)

    def _wait(self, done: Callable[[], bool], timeout: float, failure: str) -> None:
        """Process events until ``done()``; after ``timeout`` s raise Unavailable(failure)."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(failure)
            self.conn.process(min(left, 0.25))

    def idle(self, seconds: float) -> None:
        """Wait, keeping the connection serviced (AMQP heartbeats, stray deliveries)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.conn.process(min(left, 0.25))

    def _send_request(self, msg: m.Message, cid: str, refused: Callable[[], None]) -> None:
        """Publish a request to the manager; ``refused()`` if RabbitMQ has nowhere to put it.

        Clients never declare the manager's or workers' queues (the services do, with the
        deployment's queue type), so a missing queue means the manager never ran here.
        """
        self.conn.publish(
            MANAGER_REQUESTS,
            msg.encode(),
            type=msg.TYPE,
            reply_to=self.reply_queue,
            correlation_id=cid,
            persistent=False,
            expiration_ms=int(self.settings.request_timeout * 1000),
            on_confirm=lambda ok: None if ok else refused(),
        )

    # -- requests to the manager -----------------------------------------------------------

    def request(
        self,
        msg: m.Message,
        expect: type[R],
        on_other: Callable[[Delivery], None] | None = None,
        cid: str = "",
    ) -> R:
        """Ask the manager and wait for its answer; an ErrorReply becomes an exception.

        With ``on_other``, whatever else arrives under the same correlation id (restore
        chunks) goes there, and the route stays until the caller removes ``cid``.
        """
        cid = cid or uuid.uuid4().hex
        answers: list[m.Message] = []

        def route(d: Delivery) -> None:
            if d.type in (expect.TYPE, m.ErrorReply.TYPE) and not answers:
                answers.append(_decode_answer(d))
                d.ack()
            elif on_other is not None:
                on_other(d)
            else:
                d.ack()

        self._routes[cid] = route
        try:
            self._send_request(msg, cid, lambda: answers.append(NO_MANAGER))
            self._wait(lambda: bool(answers), self.settings.request_timeout, self._silent())
        finally:
            if on_other is None:
                self._routes.pop(cid, None)
        answer = answers[0]
        if isinstance(answer, m.ErrorReply):
            raise _error(answer)
        assert isinstance(answer, expect)
        return answer

    def files(self) -> list[m.FileEntry]:
        return list(self.request(m.ListRequest(client=self.client_name), m.ListReply).files)

    def status(self) -> m.StatusReply:
        return self.request(m.StatusRequest(client=self.client_name), m.StatusReply)

    # -- upload ----------------------------------------------------------------------------

    def upload(
        self, path: Path, name: str, replicas: int, progress: Progress | None = None
    ) -> UploadResult:
        """Store one file on ``replicas`` workers; return once every replica is confirmed."""
        outcome: list[UploadResult | WarrenError] = []
        self.upload_many(
            [(path, name)],
            replicas,
            lambda _n: progress or Progress(),
            lambda _n, r: outcome.append(r),
        )
        if isinstance(outcome[0], WarrenError):
            raise outcome[0]
        return outcome[0]

    def upload_many(
        self,
        items: list[tuple[Path, str]],
        replicas: int,
        progress_for: Callable[[str], Progress],
        done: Callable[[str, UploadResult | WarrenError], None],
    ) -> None:
        """Store many files, pipelined: up to ``UPLOADS_IN_FLIGHT`` at once.

        Paying a round trip and two replica confirmations per file, one file after the
        other, would make small files crawl; instead requests, chunks and confirmations of
        different files overlap. ``done(name, result or error)`` is called for each file as
        it finishes, in the order they finish. A broker failure ends the whole batch.
        """
        todo = collections.deque(items)
        hashing: collections.deque[_Upload] = collections.deque()  # on the hasher, in order
        asked: dict[str, _Upload | _Pack] = {}  # request id -> waiting for the manager
        ready: collections.deque[_Upload | _Pack] = collections.deque()  # placed, not sent
        sent: dict[str, _Upload | _Pack] = {}  # route -> waiting for its replicas

        def finish(up: _Upload | _Pack, timed_out: bool = False) -> None:
            self._routes.pop(up.route, None)
            for name, outcome in up.outcomes(timed_out):
                done(name, outcome)

        def packs_in_flight() -> int:
            units = (*asked.values(), *ready, *sent.values())
            return sum(1 for u in units if isinstance(u, _Pack))

        def ask(up: _Upload | _Pack) -> None:
            if up.error is not None:  # a local problem: this file only
                finish(up)
                return
            self._ask_placement(up, replicas)
            asked[up.route] = up

        hasher = _Hasher(self._wake)
        try:
            while todo or hashing or asked or ready or sent:
                while todo and len(hashing) + len(asked) + len(ready) + len(sent) < (
                    UPLOADS_IN_FLIGHT
                ):
                    small = _is_small(todo[0][0])
                    if small and packs_in_flight() >= PACKS_IN_FLIGHT:
                        break
                    if not small and len(hashing) >= HASH_AHEAD:
                        break
                    up = self._next_upload(todo, progress_for, done)
                    if isinstance(up, _Pack):
                        ask(up)
                    elif up is not None:
                        hasher.add(up)
                        hashing.append(up)
                while hashing and hashing[0].hashed.is_set():
                    ask(hashing.popleft())
                now = time.monotonic()
                for route, up in list(asked.items()):
                    if up.accepted is not None or up.error is not None:
                        del asked[route]
                        if up.error is not None:
                            finish(up)
                        else:
                            ready.append(up)
                    elif now > up.deadline:
                        raise Unavailable(self._silent())
                if ready:
                    while ready:
                        up = ready.popleft()
                        self._send(up)
                        sent[up.route] = up
                    # Sending a large file takes a while: take in what arrived meanwhile
                    # (answers, confirmations) before any deadline is judged.
                    self.conn.process(0)
                now = time.monotonic()
                for route, up in list(sent.items()):
                    if up.complete and not up.recorded and up.record_deadline == 0.0:
                        # Every replica is safe: now give the manager a moment to record it,
                        # so a `list` right after this command shows the file.
                        up.record_deadline = now + self.settings.request_timeout
                    if up.failures or up.error or (up.complete and up.recorded):
                        del sent[route]
                        finish(up)
                    elif up.complete and now > up.record_deadline:
                        del sent[route]
                        finish(up)  # stored all the same: only the catalog lags
                    elif not up.complete and now > up.deadline:
                        del sent[route]
                        finish(up, timed_out=True)
                if hashing or asked or sent:
                    self.conn.process(0.05)
        finally:
            hasher.stop()
            for up in (*asked.values(), *ready, *sent.values()):
                self._routes.pop(up.route, None)

    def _next_upload(
        self,
        todo: collections.deque[tuple[Path, str]],
        progress_for: Callable[[str], Progress],
        done: Callable[[str, UploadResult | WarrenError], None],
    ) -> _Upload | _Pack | None:
        """The next file to upload, or a pack of the small files that come next.

        Small files are read (and hashed) whole into the pack, which holds at most
        PACK_FILES files and chunk_size bytes. A pack of one is sent as a plain upload.
        None when the files taken had problems of their own (reported through ``done``).
        """
        path, name = todo.popleft()
        if not _is_small(path):
            return _Upload(path, name, progress_for(name))
        pack = _Pack()
        limit = self.settings.chunk_size
        while True:
            try:
                data = _read_small(path)
            except WarrenError as exc:
                done(name, exc)
            else:
                member = _Upload(path, name, progress_for(name))
                member.size, member.data = len(data), data
                member.sha256 = hashlib.sha256(data).hexdigest()
                pack.members.append(member)
                pack.size += len(data)
            if not todo or len(pack.members) >= PACK_FILES:
                break
            size = _small_size(todo[0][0])
            if size is None or pack.size + size > limit:
                break
            path, name = todo.popleft()
        if len(pack.members) == 1:
            single = pack.members[0]
            single.data = b""  # sent in chunks from the file, like any other
            return single
        return pack if pack.members else None

    def _wake(self) -> None:
        """From another thread: make the connection's thread return from ``process``."""
        with contextlib.suppress(WarrenError):
            self.conn.call_threadsafe(lambda: None)

    def _silent(self) -> str:
        return (
            f"the manager did not answer within {self.settings.request_timeout:g} s; is it running?"
        )

    def _ask_placement(self, up: _Upload | _Pack, replicas: int) -> None:
        """Ask the manager where the hashed file (or pack) goes; the answer arrives later."""
        if isinstance(up, _Pack):
            files = tuple(m.PackFile(u.name, u.size, u.sha256) for u in up.members)
            req: m.Message = m.PackRequest(files=files, replicas=replicas, client=self.client_name)
        else:
            req = m.UploadRequest(
                name=up.name,
                size=up.size,
                sha256=up.sha256,
                replicas=replicas,
                client=self.client_name,
            )
        up.route = uuid.uuid4().hex
        up.deadline = time.monotonic() + self.settings.request_timeout
        self._routes[up.route] = up.on_placement
        self._send_request(req, up.route, lambda: setattr(up, "error", _error(NO_MANAGER)))

    def _send(self, up: _Upload | _Pack) -> None:
        if isinstance(up, _Pack):
            self._send_pack(up)
        else:
            self._send_chunks(up)

    def _send_pack(self, pack: _Pack) -> None:
        """One message to the primary with every file's bytes; its confirmations and the
        manager's PackRecorded arrive under the pack's route."""
        acc = pack.accepted
        assert isinstance(acc, m.PackAccepted)
        files = []
        for member, upload_id in zip(pack.members, acc.upload_ids, strict=True):
            member.upload_id = upload_id
            member.accepted = m.UploadAccepted(upload_id, acc.chain, self.settings.chunk_size)
            member.progress.started(member.size)
            files.append(m.PackEntry(upload_id, member.sha256, member.size))
        headers = m.PackHeaders(files=tuple(files), chain=acc.chain, hop=0)
        body = b"".join(u.data for u in pack.members)
        for member in pack.members:
            member.data = b""

        def confirmed(ok: bool) -> None:
            if not ok:
                pack.error = Unavailable("RabbitMQ did not accept a pack of files.")
                return
            for member in pack.members:
                member.progress.transferred(member.size)

        self._routes[pack.route] = pack.on_replica
        self.conn.publish(
            worker_chunks(acc.chain[0]),
            body,
            type=m.PACK_TYPE,
            headers=headers.to_headers(),
            reply_to=self.reply_queue,
            correlation_id=pack.route,
            on_confirm=confirmed,
        )
        pack.deadline = (
            time.monotonic() + self.settings.transfer_timeout + pack.size * SECONDS_PER_BYTE
        )

    def _send_chunks(self, up: _Upload) -> None:
        """Stream the file to the primary; replica confirmations arrive on up.on_replica."""
        acc = up.accepted
        assert acc is not None
        plan = ChunkPlan(up.size, acc.chunk_size)
        primary = acc.chain[0]

        def confirmed(n: int) -> Callable[[bool], None]:
            def on_confirm(ok: bool) -> None:
                if ok:
                    up.progress.transferred(n)
                elif up.error is None:
                    up.error = Unavailable(f"RabbitMQ did not accept chunks of {up.name!r}.")

            return on_confirm

        self._routes.pop(up.route, None)
        up.route = acc.upload_id
        self._routes[up.route] = up.on_replica
        up.progress.started(up.size)
        for seq, offset, data in read_chunks(up.path, plan):
            h = m.ChunkHeaders(
                upload_id=acc.upload_id,
                seq=seq,
                offset=offset,
                total_size=up.size,
                chunk_count=plan.count,
                sha256=up.sha256,
                chain=acc.chain,
                hop=0,
            )
            self.conn.publish(
                worker_chunks(primary),
                data,
                type=m.CHUNK_TYPE,
                headers=h.to_headers(),
                reply_to=self.reply_queue,
                correlation_id=acc.upload_id,
                on_confirm=confirmed(len(data)),
            )
            self.conn.poll_confirms()  # progress as the broker takes the chunks
            if up.failures or up.error:
                break
        # Workers hash the whole file at the end: allow time for the bytes on top.
        up.deadline = time.monotonic() + self.settings.transfer_timeout + up.size * SECONDS_PER_BYTE

    # -- download --------------------------------------------------------------------------

    def download(
        self, name: str, dest: Path, progress: Progress | None = None, overwrite: bool = False
    ) -> DownloadResult:
        """Restore ``name`` to ``dest``, verified; ask again (another replica) on failure."""
        progress = progress or Progress()
        if dest.is_dir():
            dest = dest / Path(name).name
        if dest.exists() and not overwrite:
            raise UsageError(f"{dest} already exists; pass --force to overwrite it.")
        if not dest.parent.is_dir():
            raise UsageError(f"{dest.parent} is not a directory.")
        exclude: list[str] = []
        last_error: WarrenError | None = None
        for _attempt in range(4):
            try:
                return self._download_once(name, dest, exclude, progress)
            except _ReplicaProblem as exc:
                exclude.append(exc.worker)
                last_error = exc.error
                progress.retrying(f"{exc.worker}: {exc.error}; trying another replica")
            except NoReplica:
                if exclude:
                    break  # every replica was tried: say why the last one failed
                raise
        assert last_error is not None
        raise last_error

    def _download_once(
        self, name: str, dest: Path, exclude: list[str], progress: Progress
    ) -> DownloadResult:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        state = _Restore(fd)
        cid = uuid.uuid4().hex
        try:
            acc = self.request(
                m.DownloadRequest(name=name, exclude=tuple(exclude), client=self.client_name),
                m.DownloadAccepted,
                on_other=state.on_delivery,
                cid=cid,
            )
            progress.started(acc.size)
            state.progress = progress
            try:
                self._wait_restore(state)
            except Unavailable as exc:
                raise _ReplicaProblem(acc.worker, exc) from None
            if state.failed:
                raise _ReplicaProblem(acc.worker, Unavailable(state.failed))
            os.fsync(fd)
            sha = state.sha256(tmp)
            if state.received != acc.size or sha != acc.sha256:
                raise _ReplicaProblem(
                    acc.worker,
                    IntegrityError(
                        f"the copy of {name!r} from {acc.worker} failed its SHA-256 check."
                    ),
                )
            os.close(fd)
            fd = -1
            os.replace(tmp, dest)
            return DownloadResult(name, acc.size, acc.sha256, acc.worker, dest)
        finally:
            self._routes.pop(cid, None)
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _wait_restore(self, state: _Restore) -> None:
        """Wait while chunks keep coming; give up after transfer_timeout without one."""
        timeout = self.settings.transfer_timeout
        while not (state.ended or state.failed):
            seen = state.received

            def moved(seen: int = seen) -> bool:
                return state.received != seen or state.ended or bool(state.failed)

            self._wait(moved, timeout, f"no data for {timeout:.0f} s")


class _Upload:
    """One file on its way: placed, sent, then confirmed replica by replica."""

    def __init__(self, path: Path, name: str, progress: Progress) -> None:
        self.path = path
        self.name = name
        self.progress = progress
        self.size = 0
        self.sha256 = ""
        self.route = ""  # the correlation id its messages arrive under
        self.deadline = 0.0
        self.accepted: m.UploadAccepted | None = None
        self.error: WarrenError | None = None
        self.confirmed: dict[str, int] = {}  # worker -> hop
        self.failures: list[str] = []
        self.recorded = False  # the manager has it in the catalog
        self.record_deadline = 0.0
        self.data = b""  # a small file's bytes, until its pack is sent
        self.upload_id = ""
        self.hashed = threading.Event()  # size and sha256 are known, or error says why not

    def outcomes(self, timed_out: bool) -> list[tuple[str, UploadResult | WarrenError]]:
        return [(self.name, self.timed_out() if timed_out else self.outcome())]

    def on_placement(self, d: Delivery) -> None:
        d.ack()
        if self.accepted is not None or self.error is not None:
            return
        answer = _decode_answer(d)
        if isinstance(answer, m.UploadAccepted):
            self.accepted = answer
        elif isinstance(answer, m.ErrorReply):
            self.error = _error(answer)

    def on_replica(self, d: Delivery) -> None:
        d.ack()
        msg = m.decode(d.type, d.body)
        if isinstance(msg, m.ReplicaStored) and msg.worker not in self.confirmed:
            self.confirmed[msg.worker] = msg.hop
            self.progress.replica(msg.worker, msg.hop)
        elif isinstance(msg, m.ReplicaFailed):
            self.failures.append(f"{msg.worker}: {msg.reason}")
        elif isinstance(msg, m.UploadRecorded):
            self.recorded = True

    @property
    def complete(self) -> bool:
        return self.accepted is not None and len(self.confirmed) == len(self.accepted.chain)

    def outcome(self) -> UploadResult | WarrenError:
        if self.error is not None:
            return self.error
        if self.failures:
            return IntegrityError(f"storing {self.name!r} failed on {'; '.join(self.failures)}.")
        assert self.accepted is not None
        return UploadResult(
            self.name,
            self.size,
            self.sha256,
            self.accepted.chain,
            dict(self.confirmed),
            recorded=self.recorded,
        )

    def timed_out(self) -> WarrenError:
        assert self.accepted is not None
        missing = [w for w in self.accepted.chain if w not in self.confirmed]
        return Unavailable(f"{', '.join(missing)} did not confirm {self.name!r} in time.")


class _Pack:
    """Small files on their way together: one request, one message, one confirmation per
    worker. Each member is an _Upload that keeps its own confirmations and outcome."""

    def __init__(self) -> None:
        self.members: list[_Upload] = []
        self.size = 0
        self.route = ""
        self.deadline = 0.0
        self.accepted: m.PackAccepted | None = None
        self.error: WarrenError | None = None
        self.failures: list[str] = []  # the pack's own failures (its members keep theirs)
        self.record_deadline = 0.0

    def on_placement(self, d: Delivery) -> None:
        d.ack()
        if self.accepted is not None or self.error is not None:
            return
        answer = _decode_answer(d)
        if isinstance(answer, m.PackAccepted) and len(answer.upload_ids) == len(self.members):
            self.accepted = answer
        elif isinstance(answer, m.ErrorReply):
            self.error = _error(answer)
        else:
            self.error = Unavailable("the manager answered a pack with something else.")

    def on_replica(self, d: Delivery) -> None:
        d.ack()
        msg = m.decode(d.type, d.body)
        by_id = {u.upload_id: u for u in self.members}
        if isinstance(msg, m.PackStored):
            for f in msg.files:
                member = by_id.get(f.upload_id)
                if member is not None and msg.worker not in member.confirmed:
                    member.confirmed[msg.worker] = msg.hop
                    member.progress.replica(msg.worker, msg.hop)
        elif isinstance(msg, m.ReplicaFailed) and msg.upload_id in by_id:
            by_id[msg.upload_id].failures.append(f"{msg.worker}: {msg.reason}")
        elif isinstance(msg, m.PackRecorded):
            for upload_id in msg.upload_ids:
                if upload_id in by_id:
                    by_id[upload_id].recorded = True

    @property
    def complete(self) -> bool:
        """Every member is stored on the whole chain, or has failed."""
        if self.accepted is None:
            return False
        chain = len(self.accepted.chain)
        return all(u.failures or len(u.confirmed) == chain for u in self.members)

    @property
    def recorded(self) -> bool:
        return all(u.failures or u.recorded for u in self.members)

    def outcomes(self, timed_out: bool) -> list[tuple[str, UploadResult | WarrenError]]:
        if self.error is not None:
            return [(u.name, self.error) for u in self.members]
        out: list[tuple[str, UploadResult | WarrenError]] = []
        for u in self.members:
            late = timed_out and not u.failures and not u.complete
            out.append((u.name, u.timed_out() if late else u.outcome()))
        return out


class _Stopped(Exception):
    pass


class _Hasher:
    """Hashes the files of an upload command on a thread of its own, in order.

    A large file takes seconds to hash. On the connection's thread that would leave the
    broker's confirmations and the manager's answers unread meanwhile, for as long as the
    hashing of every file in flight took: long enough, with a batch of large files, to take
    a silent manager for a dead one. ``wake`` is called after each file, so the connection's
    thread picks it up at once. The thread starts with the first file and ends with ``stop``.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._todo: queue.SimpleQueue[_Upload | None] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, up: _Upload) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="warren-hash", daemon=True)
            self._thread.start()
        self._todo.put(up)

    def stop(self) -> None:
        """Give up on the files not hashed yet (the command is over)."""
        self._stopped.set()
        self._todo.put(None)

    def _run(self) -> None:
        while (up := self._todo.get()) is not None:
            try:
                up.size, up.sha256 = _hash_file(up.path, self._progress(up))
            except WarrenError as exc:
                up.error = exc
            except _Stopped:
                return
            except Exception as exc:  # a bug (in a progress hook, say): fail this file only
                log.debug("hashing %s failed", up.path, exc_info=True)
                up.error = WarrenError(f"{up.path}: hashing it failed ({exc}).")
            finally:
                up.hashed.set()
            self._wake()

    def _progress(self, up: _Upload) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            if self._stopped.is_set():
                raise _Stopped
            up.progress.hashing(done, total)

        return progress


def _hash_file(path: Path, progress: Callable[[int, int], None]) -> tuple[int, str]:
    """A file's size and SHA-256, or the sentence that says why it cannot be uploaded."""
    with _local_file(path):
        size = path.stat().st_size
        if path.is_dir():
            raise UsageError(f"{path} is a directory, not a file.")
        if not path.is_file():
            raise UsageError(f"{path} is not a regular file.")
        done = 0

        def step(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            progress(done, size)

        return size, sha256_file(path, step)


def _small_size(path: Path) -> int | None:
    """The size of a regular file small enough for a pack, else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size <= PACK_FILE_MAX else None


def _is_small(path: Path) -> bool:
    return _small_size(path) is not None


@contextlib.contextmanager
def _local_file(path: Path) -> Iterator[None]:
    """The sentence for what goes wrong with a file to upload, rather than an OSError."""
    try:
        yield
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file.") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a file.") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc}).") from None


def _read_small(path: Path) -> bytes:
    """A small file's bytes, or the sentence that says why they cannot be read."""
    with _local_file(path), open(path, "rb") as f:
        data = f.read(PACK_FILE_MAX + 1)
    if len(data) > PACK_FILE_MAX:
        raise UsageError(f"{path} changed size while it was being read.")
    return data


class _Restore:
    """A restore in progress: chunks are written at their offsets as they arrive."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.received = 0
        self.ended = False
        self.failed = ""
        self.progress = Progress()
        self._digest = hashlib.sha256()
        self._next_offset = 0
        self._in_order = True
        self._writeback = Writeback()

    def on_delivery(self, d: Delivery) -> None:
        d.ack()
        if d.type == m.RESTORE_CHUNK_TYPE:
            chunk = m.RestoreChunk.from_headers(d.headers)
            os.pwrite(self.fd, d.body, chunk.offset)
            if chunk.offset == self._next_offset:
                self._digest.update(d.body)
                self._next_offset += len(d.body)
                self._writeback.written_up_to(self.fd, self._next_offset)
            else:
                self._in_order = False
            self.received += len(d.body)
            self.progress.transferred(len(d.body))
        elif d.type == m.RestoreEnd.TYPE:
            self.ended = True
        elif d.type == m.RestoreFailed.TYPE:
            self.failed = m.RestoreFailed.decode(d.body).reason

    def sha256(self, path: Path) -> str:
        """The hash as received, or re-read from disk if chunks came out of order."""
        return self._digest.hexdigest() if self._in_order else sha256_file(path)


class _ReplicaProblem(Exception):
    def __init__(self, worker: str, error: WarrenError) -> None:
        super().__init__(str(error))
        self.worker = worker
        self.error = error


def _decode_answer(d: Delivery) -> m.Message:
    """The manager's answer; one that cannot be decoded becomes an "unavailable" error."""
    try:
        return m.decode(d.type, d.body)
    except DecodeError as exc:
        return m.ErrorReply("unavailable", f"garbled answer from the manager: {exc}")


def _error(reply: m.ErrorReply) -> WarrenError:
    return from_wire(reply.code, reply.message)
