"""A worker's serve side: restores streamed to a client, repair copies to a worker, and
blobs deleted when no version uses them any more.

Commands arrive on ``warren.worker.<name>.control``, one at a time (prefetch 1), on the
serve thread and its own connection. Each blob is read chunk by chunk and hashed as it
goes; a copy that turns out damaged is reported, never passed off as good.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from warren import compression, metrics
from warren import messages as m
from warren.chunks import ChunkPlan, read_chunks
from warren.config import Settings
from warren.errors import DecodeError
from warren.pipeline import pipelined
from warren.topology import MANAGER_EVENTS, worker_chunks, worker_topology
from warren.transport import Delivery, Transport
from worker import frames
from worker.blobs import BlobStore, NoCopy
from worker.orders import ManagerOnly
from worker.records import read_records

log = logging.getLogger("warren.worker")

# What a streamed chunk goes to: seq, offset, its length, its body on the wire and encoding.
Send = Callable[[int, int, int, bytes, str], None]

# What a client hears when the manager sent it to a worker that holds no copy.
NO_COPY = "this worker has no copy"


class Server:
    def __init__(
        self,
        settings: Settings,
        root: Path,
        blobs: BlobStore,
        have: Callable[[str], tuple[tuple[int, ...], bool]],
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.root = root  # the data dir: records.log, for the inventory
        self.blobs = blobs
        self.have = have  # Incoming.have: only reads the journal, safe from this thread
        self.stop = stop
        self.manager_only = ManagerOnly(settings)

    def on_control(self, conn: Transport, d: Delivery) -> None:
        self.manager_only.check(d)  # every command here is the manager's
        try:
            if d.type == m.ServeRequest.TYPE:
                self._serve(conn, m.ServeRequest.decode(d.body))
            elif d.type == m.CopyRequest.TYPE:
                self._copy(conn, m.CopyRequest.decode(d.body))
            elif d.type == m.DeleteBlob.TYPE:
                self._delete(conn, m.DeleteBlob.decode(d.body))
            elif d.type == m.HaveRequest.TYPE:
                self._have(conn, m.HaveRequest.decode(d.body))
            elif d.type == m.VerifyBlob.TYPE:
                self._verify(conn, m.VerifyBlob.decode(d.body))
            elif d.type == m.ReportRequest.TYPE:
                send_inventory(conn, self.name, self.root, self.blobs)
            else:
                raise DecodeError(f"unknown command {d.type!r}")
        except _Stopping:
            return  # unacked: RabbitMQ hands the command back when the connection closes
        d.ack()

    def _verify(self, conn: Transport, req: m.VerifyBlob) -> None:
        """Re-hash a copy now for a client's ``verify``; a damaged one is quarantined and
        the manager told, as scrub does."""
        try:
            damage = self.blobs.check(req.sha256, req.size)
            ok, reason = damage is None, damage or ""
        except NoCopy:  # nothing to quarantine: the client hears so and asks another
            damage, ok, reason = None, False, NO_COPY
        if damage is not None:
            log.error("verify: %s's copy of %s is damaged (%s)", self.name, req.sha256[:12], damage)
            self.blobs.quarantine(req.sha256)
            report = m.ReplicaDamaged(worker=self.name, sha256=req.sha256, reason=damage)
            conn.publish_and_wait(MANAGER_EVENTS, report.encode(), type=report.TYPE)
        result = m.VerifyResult(worker=self.name, sha256=req.sha256, ok=ok, reason=reason)
        conn.publish(
            req.reply_to,
            result.encode(),
            type=result.TYPE,
            correlation_id=req.correlation_id,
            persistent=False,
        )

    def _have(self, conn: Transport, req: m.HaveRequest) -> None:
        """A resumed upload: tell its client which chunks are already written here."""
        seqs, complete = self.have(req.upload_id)
        have = m.UploadHave(upload_id=req.upload_id, seqs=seqs, complete=complete)
        conn.publish(
            req.reply_to,
            have.encode(),
            type=have.TYPE,
            correlation_id=req.correlation_id,
            persistent=False,
        )

    def _delete(self, conn: Transport, req: m.DeleteBlob) -> None:
        """Garbage collection: the blob is used by no version. Gone from the disk first,
        then the manager is told (and waits for that before placing it here again)."""
        freed = self.blobs.delete_blob(req.sha256)
        log.info("gc: deleted %s from %s (%d bytes)", req.sha256[:12], self.name, freed)
        done = m.BlobDeleted(worker=self.name, sha256=req.sha256, size=freed)
        conn.publish_and_wait(MANAGER_EVENTS, done.encode(), type=done.TYPE)

    def _stream(self, sha256: str, size: int, send: Send, level: int) -> str:
        """Read a stored blob chunk by chunk into ``send``; return the SHA-256 of what was read.

        Each chunk is read and hashed, in order, then compressed (when that is worth it), on
        threads of their own, a few chunks ahead of ``send``, which publishes them: all go
        at once.
        Raises FileNotFoundError when the blob is not here, OSError when its size is wrong,
        and _Stopping when the worker is asked to stop half way (the command is requeued).
        ``level``: zstd's (a restore's is faster than an upload's: see compression).
        """
        path = self.blobs.find(sha256)
        if path is None:
            raise FileNotFoundError(sha256)
        if path.suffix == frames.SUFFIX:
            return self._stream_frames(path, sha256, size, send)
        digest = hashlib.sha256()

        def hashed(chunks: Iterator[tuple[int, int, bytes]]) -> Iterator[tuple[int, int, bytes]]:
            """Hashed as they are read, in order (compressing them may finish out of it)."""
            for chunk in chunks:
                digest.update(chunk[2])
                yield chunk

        def prepare(chunk: tuple[int, int, bytes]) -> tuple[int, int, int, bytes, str]:
            seq, offset, data = chunk
            body, encoding = compression.encode(data, level)
            return seq, offset, len(data), body, encoding

        chunks = hashed(read_chunks(path, ChunkPlan(size, self.settings.chunk_size), let_go=True))
        with contextlib.closing(pipelined(chunks, prepare)) as ready:
            for seq, offset, length, body, encoding in ready:
                if self.stop.is_set():
                    raise _Stopping
                send(seq, offset, length, body, encoding)
        return digest.hexdigest()

    def _stream_frames(self, path: Path, sha256: str, size: int, send: Send) -> str:
        """``_stream`` for a blob kept as frames: each sent as it is, checked against its
        digest on the way (frames.Damaged is an OSError: the copy is reported damaged)."""
        with open(path, "rb", buffering=0) as f:
            if frames.read_file_header(f.fileno())[0] != size:
                raise frames.Damaged(f"its header does not say {size} bytes")
            offset = 0
            for n, (c, body) in enumerate(frames.chunks(f.fileno())):
                if self.stop.is_set():
                    raise _Stopping
                if c.seq != n:
                    raise frames.Damaged(f"chunk {c.seq} where {n} belongs")
                send(c.seq, offset, c.length, body, m.ZSTD)
                offset += c.length
        if offset != size:
            raise frames.Damaged(f"{offset} bytes of {size}")
        return sha256  # every frame matched the digest it was stored with

    def _serve(self, conn: Transport, req: m.ServeRequest) -> None:
        """Stream one blob to a client's reply queue, checking its hash on the way."""
        gone: list[bool] = []

        def publish(body: bytes, type: str, headers: dict[str, Any] | None = None) -> None:
            conn.poll_confirms()  # a client that went away is noticed within a window
            if gone:
                raise _ClientGone
            conn.publish(
                req.reply_to,
                body,
                type=type,
                headers=headers,
                correlation_id=req.correlation_id,
                persistent=False,
                on_confirm=lambda ok: None if ok else gone.append(True),
            )

        def chunk(seq: int, offset: int, length: int, body: bytes, encoding: str) -> None:
            headers = m.RestoreChunk(seq, offset, encoding).to_headers()
            publish(body, m.RESTORE_CHUNK_TYPE, headers)
            metrics.BYTES_OUT.labels("restore").inc(len(body))

        try:
            actual = self._stream(req.sha256, req.size, chunk, compression.RESTORE_LEVEL)
            if actual != req.sha256:
                raise OSError("SHA-256 mismatch")
            end = m.RestoreEnd(worker=self.name, sha256=req.sha256, size=req.size)
            publish(end.encode(), m.RestoreEnd.TYPE)
            conn.wait_for_confirms()
            log.info(
                "restore %s: sent %d bytes of %s", req.correlation_id, req.size, req.sha256[:12]
            )
        except _ClientGone:
            log.warning("restore %s: the client's queue is gone; stopped", req.correlation_id)
        except OSError as exc:
            reason = (
                NO_COPY
                if isinstance(exc, FileNotFoundError)
                else (f"stored copy is damaged ({exc})")
            )
            log.error(
                "restore %s: %s of %s on %s", req.correlation_id, reason, req.sha256[:12], self.name
            )
            failed = m.RestoreFailed(worker=self.name, reason=reason)
            with contextlib.suppress(_ClientGone):
                publish(failed.encode(), m.RestoreFailed.TYPE)
            if not isinstance(exc, FileNotFoundError):
                # As scrub and verify do: out of the way, and a good copy made elsewhere
                # (the client reads another holder's meanwhile).
                self.blobs.quarantine(req.sha256)
                report = m.ReplicaDamaged(worker=self.name, sha256=req.sha256, reason=str(exc))
                conn.publish_and_wait(MANAGER_EVENTS, report.encode(), type=report.TYPE)

    def _copy(self, conn: Transport, req: m.CopyRequest) -> None:
        """Repair: send a blob to another worker as a one-hop upload it will verify."""
        conn.declare(worker_topology(req.target))
        path = self.blobs.find(req.sha256)
        count = ChunkPlan(req.size, self.settings.chunk_size).count
        try:
            if path is not None and path.suffix == frames.SUFFIX:
                count = frames.chunk_count(path)  # a frame a chunk, as they came
        except OSError as exc:
            log.error("repair %s: cannot read %s: %s", req.upload_id, req.sha256[:12], exc)
            return
        refused: list[int] = []

        def chunk(seq: int, offset: int, length: int, body: bytes, encoding: str) -> None:
            h = m.ChunkHeaders(
                upload_id=req.upload_id,
                seq=seq,
                offset=offset,
                total_size=req.size,
                chunk_count=count,
                sha256=req.sha256,
                chain=(req.target,),
                hop=0,
                encoding=encoding,
            )
            conn.publish(
                worker_chunks(req.target),
                body,
                type=m.CHUNK_TYPE,
                headers=h.to_headers(),
                correlation_id=req.upload_id,
                on_confirm=lambda ok: None if ok else refused.append(seq),
            )
            metrics.BYTES_OUT.labels("repair").inc(len(body))

        try:
            if self._stream(req.sha256, req.size, chunk, compression.LEVEL) != req.sha256:
                log.error(
                    "repair %s: my copy of %s is damaged; %s will refuse it",
                    req.upload_id,
                    req.sha256[:12],
                    req.target,
                )
            conn.wait_for_confirms()
            if refused:  # the manager's repair times out and plans this copy again
                log.error(
                    "repair %s: RabbitMQ refused %d chunks for %s",
                    req.upload_id,
                    len(refused),
                    req.target,
                )
                return
            log.info(
                "repair %s: sent %s (%d bytes) to %s",
                req.upload_id,
                req.sha256[:12],
                req.size,
                req.target,
            )
        except OSError as exc:
            log.error("repair %s: cannot read %s: %s", req.upload_id, req.sha256[:12], exc)


class _Stopping(Exception):
    """The worker is stopping: leave the command unacked so it is redelivered."""


class _ClientGone(Exception):
    """The client's reply queue no longer exists."""


# An inventory page carries at most this many blobs, and this many records (sealed records
# are about four times the size of a blob's entry): a page stays near 2 MiB whatever the
# worker holds, well under the broker's message size.
PAGE_BLOBS = 20_000
PAGE_RECORDS = 5_000


def send_inventory(conn: Transport, worker: str, root: Path, store: BlobStore) -> int:
    """Everything this worker holds, with the sealed records kept beside it (in ``root``),
    to the manager in pages (each confirmed before the next); the number of blobs reported."""
    held, forgotten = read_records(root, lambda sha256: store.find(sha256) is not None)
    blobs = list(store.inventory())
    records = [m.SealedRecord(sha256, sealed) for sha256, sealed in held]
    pages = max(
        1,
        -(-len(blobs) // PAGE_BLOBS),
        -(-len(records) // PAGE_RECORDS),
        -(-len(forgotten) // PAGE_RECORDS),
    )
    report = uuid.uuid4().hex
    for page in range(pages):
        b, r = page * PAGE_BLOBS, page * PAGE_RECORDS
        msg = m.Inventory(
            worker=worker,
            blobs=tuple(blobs[b : b + PAGE_BLOBS]),
            records=tuple(records[r : r + PAGE_RECORDS]),
            forgotten=tuple(forgotten[r : r + PAGE_RECORDS]),
            report=report,
            page=page,
            last=page == pages - 1,
        )
        conn.publish_and_wait(MANAGER_EVENTS, msg.encode(), type=msg.TYPE)
    return len(blobs)
