"""A worker's intake: chunks and packs in, written, forwarded down the chain, announced.

Every delivery from ``warren.worker.<name>.chunks`` becomes a job with named steps, and
each step has one method that ends it:

    chunk:  FORWARDING ──► [FINISHING] ──► ANNOUNCING ──► SETTLED
            (written here;  (last chunk:     (stored or      (acked, requeued
            next worker's   fsync, verify,   failed, to the  or dead-lettered)
            queue confirms) rename: on the   manager)
                            pool)

    pack:   STORING + FORWARDING (together) ──► ANNOUNCING ──► SETTLED

Everything here runs on the ingest thread, the owner of its connection. Disk work that
takes long (finishing an upload, storing a pack's files) runs on a pool and hands back a
value (the error, or None) through ``call_threadsafe``; the pool changes nothing shared.
A job is acked only once its bytes are safe here and the next worker and the manager
have what they need, so a crash at any step means a redelivery, never a loss.

A full disk (any OSError writing a chunk, finishing a file, storing a pack or appending
the records of the uploads placed here) fails the uploads concerned as "unavailable": their
partial data here goes, their later chunks are dropped, and the client and the manager hear
``replica.failed`` at once instead of waiting out a timeout. Records that place no upload (a
deletion, a deduplicated version) are tried again after a pause until there is room.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from warren import compression, metrics
from warren import messages as m
from warren.config import Settings
from warren.errors import INTEGRITY, UNAVAILABLE, BrokerUnavailable, DecodeError
from warren.transport import Confirm, Delivery, Transport
from worker.blobs import BlobStore, CorruptUpload
from worker.expected import Expected
from worker.incoming import Incoming
from worker.jobs import ChunkJob, Failed, PackJob, Step
from worker.orders import ManagerOnly
from worker.records import append_records
from worker.relay import announce, call_on, relay, settled

log = logging.getLogger("warren.worker")


# A forward the next worker's queue refused is tried again after each of these pauses, then
# once on a new connection (``Intake._refused``), then fails as "unavailable". A
# quorum queue refuses publishes while it elects a new leader, for a few seconds after a
# broker node dies; a retry then lands where a requeue, tried at once, would be refused again.
FORWARD_PAUSES = (0.25, 0.5, 1.0, 2.0, 4.0)

# Records that place no upload (``worker.forget``, or ``worker.record`` for deduplicated or
# copied content) and that the disk would not take go back to the queue after this pause,
# again and again until there is room: they are what rebuilds a lost catalog.
RECORD_PAUSE = 5.0

J = TypeVar("J", ChunkJob, PackJob)


class Intake:
    def __init__(
        self,
        settings: Settings,
        root: Path,
        incoming: Incoming,
        blobs: BlobStore,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.root = root  # the data dir: records.log and expected.log
        self.incoming = incoming  # this thread's: chunks written, uploads finished (pool)
        self.blobs = blobs  # where a pack's files go (pool)
        self.pool = pool
        # Uploads the manager abandoned, or that failed on this disk, since this worker
        # started: their chunks are dropped.
        self._abandoned: set[str] = set()
        # Uploads whose placement could not be recorded here (a full disk): the first chunk
        # or pack of each tells the client (whose queue only it names) and is refused.
        self._unrecorded: dict[str, Failed] = {}
        # Uploads being finished on the pool, and the jobs waiting for that outcome.
        self._finishing: dict[str, list[ChunkJob]] = {}
        # What the pool hands back, run on this thread by drain(); kept across reconnects.
        self._handback: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._conn: Transport | None = None  # the ingest connection now
        self.manager_only = ManagerOnly(settings)
        # The uploads the manager placed here, and whom their chunks may come from.
        self.expected = Expected(root / "expected.log", settings.upload_expiry)

    def attach(self, conn: Transport) -> None:
        """A new ingest connection: outcomes the pool handed back meanwhile are taken in."""
        self._conn = conn
        self.drain()

    def drain(self) -> None:
        while True:
            try:
                fn = self._handback.get_nowait()
            except queue.Empty:
                return
            fn()

    def _from_pool(self, fn: Callable[[], None]) -> None:
        """Called on a pool thread: queue ``fn`` for the ingest thread and wake it."""
        self._handback.put(fn)
        if self._conn is not None:
            call_on(self._conn, self.drain)

    def on_delivery(self, conn: Transport, d: Delivery) -> None:
        if d.type == m.PACK_TYPE:
            self._on_pack(conn, d)
        elif d.type == m.CHUNK_TYPE:
            self._on_chunk(conn, d)
        elif d.type == m.DiscardUpload.TYPE:
            self.manager_only.check(d)
            self._discard(m.DiscardUpload.decode(d.body))
            d.ack()
        elif d.type == m.RecordVersions.TYPE:
            self.manager_only.check(d)
            cmd = m.RecordVersions.decode(d.body)
            try:
                append_records(self.root, [dataclasses.asdict(r) for r in cmd.records])
                self.expected.add((e.upload_id, e.sender, e.chain) for e in cmd.expect)
            except OSError as exc:
                self._not_recorded(conn, d, [e.upload_id for e in cmd.expect], exc)
                return
            d.ack()
        elif d.type == m.ForgetVersions.TYPE:
            self.manager_only.check(d)
            keys = m.ForgetVersions.decode(d.body).keys
            try:
                append_records(self.root, [{"forget": k} for k in keys])
            except OSError as exc:
                self._not_recorded(conn, d, [], exc)
                return
            d.ack()
        else:
            raise DecodeError(f"expected {m.CHUNK_TYPE} or {m.PACK_TYPE}, got {d.type!r}")

    def _not_recorded(
        self, conn: Transport, d: Delivery, upload_ids: list[str], exc: OSError
    ) -> None:
        """Records (or expectations) the disk would not take. The uploads they place here
        fail, and nothing of them is written: the first chunk or pack of each tells its
        sender and the manager (whose reservation then goes), and is refused. Not at once:
        the manager would have the other workers of the chain drop the upload's chunks, and
        this worker, never reached, could not tell the client, who would wait out its
        timeout. The message itself is dead-lettered. Records that place nothing go back to
        the queue after a pause, to be tried again until there is room."""
        why = Failed(UNAVAILABLE, f"disk error: {exc.strerror or exc}")
        if not upload_ids:
            log.warning(
                "%s: cannot keep the records of %s (%s); trying again in %.2g s",
                self.name,
                d.type,
                why.reason,
                RECORD_PAUSE,
            )
            conn.call_later(RECORD_PAUSE, lambda: d.reject(requeue=True) if conn.is_open else None)
            return
        log.error(
            "%s: cannot keep the records of %d uploads placed here (%s): they fail",
            self.name,
            len(upload_ids),
            why.reason,
        )
        for upload_id in upload_ids:
            self._unrecorded[upload_id] = why
            self._abandoned.add(upload_id)
        d.reject(requeue=False)

    def _tell_unrecorded(self, conn: Transport, d: Delivery, upload_ids: list[str]) -> bool:
        """A chunk or pack of an upload whose placement could not be recorded here: its
        sender hears "failed" (the reason of the first such upload) and it is refused."""
        reasons = [self._unrecorded.pop(u) for u in upload_ids if u in self._unrecorded]
        if not reasons:
            return False
        self._abandoned.update(upload_ids)
        self._announce_failed(conn, d, upload_ids, reasons[0])
        return True

    def _disk_failed(self, conn: Transport, d: Delivery, upload_id: str, exc: OSError) -> None:
        """A chunk the disk would not take: the upload fails here, now, as unavailable.
        What it wrote goes (so the space comes back) and its later chunks are dropped."""
        why = Failed(UNAVAILABLE, f"disk error: {exc.strerror or exc}")
        self._abandoned.add(upload_id)
        freed = self._remove_partial(upload_id)
        log.error(
            "upload %s: replica failed on %s: %s; %d bytes of it removed",
            upload_id,
            self.name,
            why.reason,
            freed,
        )
        self._announce_failed(conn, d, [upload_id], why)

    def _remove_partial(self, upload_id: str) -> int:
        """Remove what an upload that failed here wrote; the bytes freed (0 if that fails
        too: the start-up sweep takes it then)."""
        try:
            return self.incoming.abandon(upload_id)
        except OSError as exc:
            log.error("upload %s: cannot remove its partial data: %s", upload_id, exc)
            return 0

    def _discard(self, cmd: m.DiscardUpload) -> None:
        """The manager abandoned the upload: its partial data goes (a finish under way
        ends on its own; its replica is then simply garbage)."""
        self._abandoned.add(cmd.upload_id)
        if cmd.upload_id in self._finishing:
            return
        freed = self.incoming.abandon(cmd.upload_id)
        log.info("upload %s: abandoned; %d bytes removed from %s", cmd.upload_id, freed, self.name)

    def _addressed_here(self, what: str, chain: tuple[str, ...], hop: int) -> None:
        """A chunk or pack is for the worker at ``hop`` of its chain: this one, or nobody."""
        if chain[hop] != self.name:
            raise DecodeError(f"{what} addressed to {chain[hop]}, not {self.name}")

    def _check_sender(
        self, conn: Transport, d: Delivery, upload_id: str, chain: tuple[str, ...]
    ) -> None:
        """Only the chunks of an upload the manager placed here, from the sender it named
        (the broker validated ``user_id``), along the chain it placed the upload on;
        anything else is dead-lettered. Where every service shares one login, a worker's
        sender cannot be told from this one."""
        if not d.user_id:
            raise DecodeError(f"{d.type} for upload {upload_id} without a sender: ignored")
        sender = self.expected.sender(upload_id)
        if sender is None:
            raise DecodeError(
                f"{d.type} for upload {upload_id}, which the manager did not place on "
                f"{self.name}, from broker user {d.user_id!r}: ignored"
            )
        if d.user_id not in (sender, conn.user):
            raise DecodeError(
                f"{d.type} for upload {upload_id} placed for {sender!r} came from broker "
                f"user {d.user_id!r}: ignored"
            )
        placed = self.expected.chain(upload_id)
        if placed and chain != placed:
            raise DecodeError(
                f"{d.type} for upload {upload_id} placed on {', '.join(placed)} came along "
                f"{', '.join(chain)}, from broker user {d.user_id!r}: ignored"
            )

    # -- chunks ----------------------------------------------------------------------------

    def _on_chunk(self, conn: Transport, d: Delivery) -> None:
        h = m.ChunkHeaders.from_headers(d.headers, len(d.body))
        self._addressed_here("chunk", h.chain, h.hop)
        if self._tell_unrecorded(conn, d, [h.upload_id]):
            return
        if h.upload_id in self._abandoned:
            # Late for an upload the manager abandoned (still queued here, or forwarded
            # before the primary heard): nobody will finish it, so nothing is written.
            d.ack()
            return
        self._check_sender(conn, d, h.upload_id, h.chain)
        waiting = self._finishing.get(h.upload_id)
        if waiting is not None:
            # A redelivery while the replica is being finished: settle it with the outcome.
            job = ChunkJob(conn, d, h, complete=True, step=Step.FINISHING)
            waiting.append(job)
            return
        if self.incoming.done_sha256(h.upload_id) is not None:
            # A redelivery after the replica was finished: nothing to write. Forward again
            # (its earlier forward may not have been confirmed; idempotent downstream),
            # announce again (idempotent for the manager and client) and settle.
            self._forward(ChunkJob(conn, d, h, complete=True))
            return
        # Compressed bytes are forwarded as they came, and kept here as they came when the
        # upload's first chunk was compressed, else decoded (worker/incoming.py). Each is decoded
        # to be checked and hashed: a bad frame is a DecodeError, dead-lettered, not written.
        # Never more than a chunk's bytes, whatever size the sender declares for the file:
        # a few KB of zstd must not make this worker allocate hundreds of MiB.
        limit = min(h.total_size - h.offset, self.settings.chunk_size)
        data = compression.decode(d.body, h.encoding, limit)
        h.validate(len(data))
        wire = (d.body, h.encoding)
        try:
            count = self.incoming.write_chunk(
                h.upload_id, h.seq, h.offset, data, h.chunk_count, wire, h.total_size
            )
        except OSError as exc:  # a full disk, say
            self._disk_failed(conn, d, h.upload_id, exc)
            return
        metrics.BYTES_IN.inc(len(d.body))
        self._forward(ChunkJob(conn, d, h, complete=count == h.chunk_count))

    def _forward(self, job: ChunkJob) -> None:
        h = job.h
        headers = dataclasses.replace(h, hop=h.hop + 1).to_headers()
        relay(job.conn, job.d, h.next_worker, headers, lambda ok: self._forwarded(job, ok))

    def _forwarded(self, job: ChunkJob, ok: Confirm) -> None:
        """FORWARDING ends: on to finishing, or ack a chunk that did not complete the file."""
        if not ok:
            self._refused(job, f"upload {job.h.upload_id}: chunk {job.h.seq}", job.h, self._forward)
        elif not job.complete:
            job.d.ack()
            job.step = Step.SETTLED
        elif self.incoming.done_sha256(job.h.upload_id) is not None:
            self._announce_chunk(job, None)
        else:
            self._finish(job)

    def _refused(
        self, job: J, what: str, h: m.ChunkHeaders | m.PackHeaders, forward: Callable[[J], None]
    ) -> None:
        """The next worker's queue refused a forward: ``forward`` it again after the next
        pause (the delivery stays unacked meanwhile; if the connection dies, it comes
        again). Refused after every pause, the replica fails here as unavailable.

        Except a first delivery, which drops this connection instead: on a three-node
        cluster (RabbitMQ 3.10.8), a worker's forwards were refused for over 40 s after the
        queue's new leader was elected, as if its channel were stuck. Every unacked delivery
        then comes again on a new connection (a new channel)."""
        if job.refused < len(FORWARD_PAUSES):
            pause = FORWARD_PAUSES[job.refused]
            job.refused += 1
            log.warning(
                "%s: %s's queue refused it; trying again in %.2g s", what, h.next_worker, pause
            )
            job.conn.call_later(pause, lambda: forward(job) if job.conn.is_open else None)
            return
        if not job.d.redelivered:
            raise BrokerUnavailable(
                f"{what}: {h.next_worker}'s queue refused it for {sum(FORWARD_PAUSES):.0f} s; "
                "trying on a new connection"
            )
        job.step = Step.SETTLED
        log.error("%s: cannot forward it to %s; giving up on it", what, h.next_worker)
        reason = Failed(UNAVAILABLE, f"could not forward to {h.next_worker}")
        if isinstance(h, m.ChunkHeaders):
            self._announce_failed(job.conn, job.d, [h.upload_id], reason)
        else:
            self._announce_failed(job.conn, job.d, [f.upload_id for f in h.files], reason)

    def _finish(self, job: ChunkJob) -> None:
        """All chunks are in: finish the replica on the pool (hashing a large file takes a
        while); its outcome comes back to this thread. Redeliveries meanwhile share it."""
        job.step = Step.FINISHING
        upload_id = job.h.upload_id
        waiting = self._finishing.get(upload_id)
        if waiting is not None:  # a duplicate of the last chunk, forwarded meanwhile
            waiting.append(job)
            return
        self._finishing[upload_id] = [job]
        running = self.incoming.take_running(upload_id)
        finish = functools.partial(
            self.incoming.finish, upload_id, job.h.sha256, job.h.total_size, running
        )
        future = self.pool.submit(self._on_pool, finish, 1)
        future.add_done_callback(
            lambda f: self._from_pool(lambda: self._finished(upload_id, f.result()))
        )

    def _finished(self, upload_id: str, error: Failed | None) -> None:
        """FINISHING ends for every job waiting on this upload. A job whose connection
        has gone since will be delivered again: the replica is done by then, or not."""
        if error is None:
            self.expected.finished(upload_id)
        elif error.code == UNAVAILABLE:  # the disk: what it wrote goes, later chunks too
            self._abandoned.add(upload_id)
        if upload_id in self._abandoned:  # failed here, or abandoned by the manager meanwhile
            self._remove_partial(upload_id)
        for job in self._finishing.pop(upload_id, []):
            if job.conn.is_open:
                self._announce_chunk(job, error)
            else:
                job.step = Step.SETTLED

    def _announce_chunk(self, job: ChunkJob, error: Failed | None) -> None:
        h = job.h
        if error is not None:
            log.error("upload %s: replica failed on %s: %s", h.upload_id, self.name, error.reason)
            job.step = Step.SETTLED
            self._announce_failed(job.conn, job.d, [h.upload_id], error)
            return
        if not job.d.redelivered:
            log.info(
                "upload %s: replica stored on %s (%d bytes, hop %d)",
                h.upload_id,
                self.name,
                h.total_size,
                h.hop,
            )
        stored = m.ReplicaStored(
            upload_id=h.upload_id, worker=self.name, sha256=h.sha256, size=h.total_size, hop=h.hop
        )
        job.step = Step.ANNOUNCING
        announce(job.conn, job.d, stored, lambda: settled(job, job.d.ack))

    def _announce_failed(
        self, conn: Transport, d: Delivery, upload_ids: list[str], why: Failed
    ) -> None:
        """Say "failed" for each upload, then dead-letter the message."""
        for i, upload_id in enumerate(upload_ids):
            failed = m.ReplicaFailed(
                upload_id=upload_id, worker=self.name, reason=why.reason, code=why.code
            )
            last = i == len(upload_ids) - 1
            then = (lambda: d.reject(requeue=False)) if last else (lambda: None)
            announce(conn, d, failed, then)

    # -- packs: small files, whole, several to a message -----------------------------------

    def _on_pack(self, conn: Transport, d: Delivery) -> None:
        """Store every file of the pack (on the pool) while forwarding it down the chain;
        once both are done, announce them all in one "pack stored" and ack."""
        p = m.PackHeaders.from_headers(d.headers, len(d.body))
        self._addressed_here("pack", p.chain, p.hop)
        if self._tell_unrecorded(conn, d, [f.upload_id for f in p.files]):
            return
        for f in p.files:
            self._check_sender(conn, d, f.upload_id, p.chain)
        if p.total > self.settings.chunk_size:  # a client's packs hold at most a chunk's bytes
            raise DecodeError(
                f"pack {d.correlation_id}: {p.total} bytes, more than a chunk "
                f"({self.settings.chunk_size}): ignored"
            )
        metrics.BYTES_IN.inc(len(d.body))
        job = PackJob(conn, d, p)
        # Forwarded as it came; stored decoded, each file its own bytes.
        body = memoryview(compression.decode(d.body, p.encoding, p.total, exact=True))
        blobs = [(f.sha256, body[start:end]) for f, start, end in p.slices()]
        put = functools.partial(self.blobs.put_blobs, blobs)
        future = self.pool.submit(self._on_pool, put, len(blobs))
        future.add_done_callback(lambda f: self._from_pool(lambda: self._pack_stored(job, f)))
        self._forward_pack(job)

    def _forward_pack(self, job: PackJob) -> None:
        headers = dataclasses.replace(job.p, hop=job.p.hop + 1).to_headers()
        relay(job.conn, job.d, job.p.next_worker, headers, lambda ok: self._pack_forwarded(job, ok))

    def _pack_stored(self, job: PackJob, f: Future[Failed | None]) -> None:
        job.stored, job.error = True, f.result()
        self._pack_step(job)

    def _pack_forwarded(self, job: PackJob, ok: Confirm) -> None:
        if not ok:
            self._refused(job, f"pack {job.d.correlation_id}", job.p, self._forward_pack)
            return
        job.forwarded = True
        self._pack_step(job)

    def _pack_step(self, job: PackJob) -> None:
        """STORING and FORWARDING both over: announce the pack's outcome."""
        if job.step is not Step.FORWARDING or not (job.stored and job.forwarded):
            return
        if not job.conn.is_open:  # it will be delivered again
            job.step = Step.SETTLED
            return
        d, p = job.d, job.p
        if job.error is not None:
            job.step = Step.SETTLED
            log.error(
                "pack %s: %d files failed on %s: %s",
                d.correlation_id,
                len(p.files),
                self.name,
                job.error.reason,
            )
            self._announce_failed(job.conn, d, [f.upload_id for f in p.files], job.error)
            return
        if not d.redelivered:
            log.info(
                "pack %s: %d files stored on %s (%d bytes, hop %d)",
                d.correlation_id,
                len(p.files),
                self.name,
                len(d.body),
                p.hop,
            )
        for f in p.files:
            self.expected.finished(f.upload_id)
        job.step = Step.ANNOUNCING
        stored = m.PackStored(worker=self.name, hop=p.hop, files=p.files)
        announce(job.conn, d, stored, lambda: settled(job, d.ack))

    # -- the pool --------------------------------------------------------------------------

    def _on_pool(self, write: Callable[[], object], files: int) -> Failed | None:
        """On the pool: ``write`` replicas to the store (a finished upload, or a pack's
        files): fsync, verify, move into place. Returns why it failed, or None."""
        try:
            if self.settings.finalize_delay > 0:  # fault injection: a slow disk
                time.sleep(self.settings.finalize_delay)
            write()
            metrics.REPLICAS_STORED.inc(files)
            return None
        except CorruptUpload as exc:
            metrics.REPLICAS_FAILED.inc(files)
            return Failed(INTEGRITY, str(exc))
        except OSError as exc:
            metrics.REPLICAS_FAILED.inc(files)
            return Failed(UNAVAILABLE, f"disk error: {exc.strerror or exc}")
