"""The storage worker: stores chunks, forwards them down the chain, serves restores.

Three threads, each with its own connection (pika's blocking connection is one thread's):

* **ingest** consumes ``warren.worker.<name>.chunks``. For each chunk: write it at its
  offset, forward it to the next worker in the chain with a confirm, and only then ack.
  The chunk that completes an upload is acked only after the replica is fsynced, verified
  and renamed into the store (that work runs on a small thread pool) and "replica stored"
  is confirmed. On every (re)connect it sends the inventory first.
* **serve** consumes ``warren.worker.<name>.control`` and streams stored files to clients.
* **heartbeat** only sends heartbeats. Nothing else runs on its thread or connection, so
  no ingest, fsync, finalize or restore can delay them: a busy worker is never taken for
  a dead one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from warren import messages as m
from warren import metrics
from warren.chunks import ChunkPlan, read_chunks
from warren.config import Settings
from warren.errors import BrokerRefused, BrokerUnavailable, DecodeError
from warren.service import run_connection
from warren.topology import (
    HEARTBEAT_TTL_MS,
    MANAGER_EVENTS,
    manager_topology,
    worker_chunks,
    worker_control,
    worker_topology,
)
from warren.transport import Connect, Delivery, Transport
from worker.store import ChunkStore, CorruptUpload

log = logging.getLogger("warren.worker")

Callback = Callable[[], None]


class Worker:
    def __init__(self, settings: Settings, stop: threading.Event, connect: Connect) -> None:
        self.settings = settings
        self.connect = connect
        self.name = settings.name
        self.stop = stop
        self.store = ChunkStore(Path(settings.data_dir or "."))
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self.name}-final")
        self._finalizing: dict[str, Future[str | None]] = {}  # upload id -> its finish
        # Started once ingest is connected, so a missing broker is reported once, not thrice.
        self._threads = [
            threading.Thread(target=self._serve_thread, name=f"{self.name}-serve"),
            threading.Thread(target=self._heartbeat_thread, name=f"{self.name}-heartbeat"),
        ]

    def run(self) -> None:
        """Run until ``stop`` is set; reconnects on its own when the broker goes away."""
        self.store.open()
        metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        usage = self.store.usage()
        log.info(
            "worker %s: %d files, %d bytes in %s",
            self.name,
            usage.files,
            usage.used_bytes,
            self.store.root,
        )
        try:
            run_connection(
                self.connect,
                self.settings,
                f"warren worker {self.name}",
                self._setup_ingest,
                self.stop,
            )
        finally:
            self.stop.set()
            for thread in self._threads:
                if thread.ident is not None:
                    thread.join()
            self._pool.shutdown(wait=True)
            log.info("worker %s: stopped", self.name)

    # -- ingest ----------------------------------------------------------------------------

    def _setup_ingest(self, conn: Transport) -> None:
        conn.declare(worker_topology(self.name))
        inventory = m.Inventory(worker=self.name, blobs=tuple(self.store.inventory()))
        conn.publish_and_wait(MANAGER_EVENTS, inventory.encode(), type=m.Inventory.TYPE)
        conn.consume(worker_chunks(self.name), lambda d: self._on_chunk(conn, d))
        for thread in self._threads:
            if thread.ident is None:
                thread.start()
        log.info("worker %s: ready, %d blobs reported", self.name, len(inventory.blobs))

    # -- heartbeat -------------------------------------------------------------------------

    def _heartbeat_thread(self) -> None:
        self._side_thread("heartbeat", self._setup_heartbeat)

    def _setup_heartbeat(self, conn: Transport) -> None:
        conn.declare(manager_topology())
        self._heartbeat(conn)

    def _heartbeat(self, conn: Transport) -> None:
        """One heartbeat now, the next in ``heartbeat_interval`` seconds (a timer on this
        thread's own connection: nothing else ever runs here)."""
        if not conn.is_open or self.stop.is_set():
            return
        u = self.store.usage()
        beat = m.Heartbeat(
            worker=self.name, free_bytes=u.free_bytes, used_bytes=u.used_bytes, files=u.files
        )
        conn.publish(
            MANAGER_EVENTS,
            beat.encode(),
            type=m.Heartbeat.TYPE,
            persistent=False,
            expiration_ms=HEARTBEAT_TTL_MS,
        )
        conn.call_later(self.settings.heartbeat_interval, lambda: self._heartbeat(conn))

    def _on_chunk(self, conn: Transport, d: Delivery) -> None:
        if d.type == m.PACK_TYPE:
            self._on_pack(conn, d)
            return
        if d.type != m.CHUNK_TYPE:
            raise DecodeError(f"expected {m.CHUNK_TYPE} or {m.PACK_TYPE}, got {d.type!r}")
        h = m.ChunkHeaders.from_headers(d.headers, len(d.body))
        if h.chain[h.hop] != self.name:
            raise DecodeError(f"chunk addressed to {h.chain[h.hop]}, not {self.name}")

        pending = self._finalizing.get(h.upload_id)
        if pending is not None:
            # A redelivery while the replica is being finished: settle it with the outcome.
            self._when_final(conn, d, h, pending)
            return
        done = self.store.done_sha256(h.upload_id)
        if done is not None:
            # A redelivery after the replica was finished: nothing to write. Forward again
            # (its earlier forward may not have been confirmed; idempotent downstream),
            # announce again (idempotent for the manager and client) and settle.
            self._forward(conn, d, h, lambda: self._finished(conn, d, h, None))
            return

        count = self.store.write_chunk(h.upload_id, h.seq, h.offset, d.body, h.chunk_count)
        metrics.BYTES_IN.inc(len(d.body))
        complete = count == h.chunk_count
        self._forward(conn, d, h, lambda: self._complete(conn, d, h) if complete else d.ack())

    def _forward(self, conn: Transport, d: Delivery, h: m.ChunkHeaders, then: Callback) -> None:
        self._relay(
            conn,
            d,
            h.next_worker,
            dataclasses.replace(h, hop=h.hop + 1).to_headers(),
            f"upload {h.upload_id}: chunk {h.seq}",
            then,
            lambda reason: self._fail(conn, d, h, reason),
        )

    def _relay(
        self,
        conn: Transport,
        d: Delivery,
        nxt: str | None,
        headers: dict[str, Any],
        what: str,
        then: Callback,
        fail: Callable[[str], None],
    ) -> None:
        """Republish a chunk or pack to the next worker of the chain; ``then()`` once it is
        confirmed. Refused once, it is requeued to try again; refused again, ``fail``."""
        if nxt is None:
            then()
            return
        conn.declare(worker_topology(nxt))

        def confirmed(ok: bool) -> None:
            if ok:
                then()
            elif d.redelivered:
                log.error("%s: cannot forward it to %s; giving up on it", what, nxt)
                fail(f"could not forward to {nxt}")
            else:
                d.reject(requeue=True)  # try once more

        metrics.BYTES_OUT.labels("forward").inc(len(d.body))
        conn.publish(
            worker_chunks(nxt),
            d.body,
            type=d.type or m.CHUNK_TYPE,
            headers=headers,
            reply_to=d.reply_to,
            correlation_id=d.correlation_id,
            on_confirm=confirmed,
        )

    # -- packs: small files, whole, several to a message -----------------------------------

    def _on_pack(self, conn: Transport, d: Delivery) -> None:
        """Store every file of the pack (on the pool) while forwarding it down the chain;
        once both are done, announce them all in one "pack stored" and ack."""
        p = m.PackHeaders.from_headers(d.headers, len(d.body))
        if p.chain[p.hop] != self.name:
            raise DecodeError(f"pack addressed to {p.chain[p.hop]}, not {self.name}")
        metrics.BYTES_IN.inc(len(d.body))
        body = memoryview(d.body)
        blobs = [(f.sha256, body[start:end]) for f, start, end in p.slices()]
        waiting = {"stored", "forwarded"}
        error: list[str | None] = []

        def settle(step: str) -> None:
            waiting.discard(step)
            if waiting:
                return
            if error[0] is not None:
                self._fail_pack(conn, d, p, error[0])
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
            stored = m.PackStored(worker=self.name, hop=p.hop, files=p.files)
            self._announce(conn, d, stored.encode(), m.PackStored.TYPE, then=d.ack)

        def on_stored(f: Future[str | None]) -> None:
            error.append(f.result())
            self._call_on(conn, lambda: settle("stored"))

        store = functools.partial(self.store.put_blobs, blobs)
        self._pool.submit(self._store, store, len(blobs)).add_done_callback(on_stored)
        self._relay(
            conn,
            d,
            p.next_worker,
            dataclasses.replace(p, hop=p.hop + 1).to_headers(),
            f"pack {d.correlation_id}",
            lambda: settle("forwarded"),
            lambda reason: self._fail_pack(conn, d, p, reason),
        )

    def _fail_pack(self, conn: Transport, d: Delivery, p: m.PackHeaders, reason: str) -> None:
        """Every file of the pack failed here: say so for each, then dead-letter the pack."""
        log.error(
            "pack %s: %d files failed on %s: %s", d.correlation_id, len(p.files), self.name, reason
        )
        for i, f in enumerate(p.files):
            failed = m.ReplicaFailed(upload_id=f.upload_id, worker=self.name, reason=reason)
            last = i == len(p.files) - 1
            self._announce(
                conn,
                d,
                failed.encode(),
                m.ReplicaFailed.TYPE,
                then=(lambda: d.reject(requeue=False)) if last else (lambda: None),
            )

    def _complete(self, conn: Transport, d: Delivery, h: m.ChunkHeaders) -> None:
        """All chunks are in: finalize off this thread (hashing a large file takes a while,
        and the connection must keep its heartbeats), then confirm and ack back on it.

        After a reconnect, redelivered chunks the worker already has can each complete the
        count while the first finish is under way or done: they share that one finish.
        """
        future = self._finalizing.get(h.upload_id)
        if future is None:
            if self.store.done_sha256(h.upload_id) is not None:
                self._finished(conn, d, h, None)
                return
            finish = functools.partial(self.store.finalize, h.upload_id, h.sha256, h.total_size)
            future = self._pool.submit(self._store, finish, 1)
            self._finalizing[h.upload_id] = future
            future.add_done_callback(lambda _f: self._finalizing.pop(h.upload_id, None))
        self._when_final(conn, d, h, future)

    def _store(self, write: Callable[[], object], files: int) -> str | None:
        """On the pool: ``write`` replicas to the store (a finished upload, or a pack's
        files): fsync, verify, move into place. Returns why it failed, or None."""
        try:
            self._delay_for_tests()
            write()
            metrics.REPLICAS_STORED.inc(files)
            return None
        except CorruptUpload as exc:
            metrics.REPLICAS_FAILED.inc(files)
            return str(exc)
        except OSError as exc:
            metrics.REPLICAS_FAILED.inc(files)
            return f"disk error: {exc.strerror or exc}"

    def _when_final(
        self, conn: Transport, d: Delivery, h: m.ChunkHeaders, future: Future[str | None]
    ) -> None:
        def done(f: Future[str | None]) -> None:
            error = f.result()
            self._call_on(conn, lambda: self._finished(conn, d, h, error))

        future.add_done_callback(done)

    def _delay_for_tests(self) -> None:
        """Fault injection: WARREN_FINALIZE_DELAY makes every finish slow, as a slow disk would."""
        if self.settings.finalize_delay > 0:
            time.sleep(self.settings.finalize_delay)

    def _finished(self, conn: Transport, d: Delivery, h: m.ChunkHeaders, error: str | None) -> None:
        if error is not None:
            log.error("upload %s: replica failed on %s: %s", h.upload_id, self.name, error)
            self._fail(conn, d, h, error)
            return
        if not d.redelivered:
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
        self._announce(conn, d, stored.encode(), m.ReplicaStored.TYPE, then=d.ack)

    def _fail(self, conn: Transport, d: Delivery, h: m.ChunkHeaders, reason: str) -> None:
        failed = m.ReplicaFailed(upload_id=h.upload_id, worker=self.name, reason=reason)
        self._announce(
            conn, d, failed.encode(), m.ReplicaFailed.TYPE, then=lambda: d.reject(requeue=False)
        )

    def _announce(
        self, conn: Transport, d: Delivery, body: bytes, type: str, then: Callback
    ) -> None:
        """Tell the manager (confirmed, then ``then``) and the client (best effort)."""
        if d.reply_to:
            conn.publish(
                d.reply_to, body, type=type, correlation_id=d.correlation_id, persistent=False
            )
        conn.publish(
            MANAGER_EVENTS,
            body,
            type=type,
            correlation_id=d.correlation_id,
            on_confirm=lambda ok: then() if ok else d.reject(requeue=True),
        )

    def _call_on(self, conn: Transport, fn: Callback) -> None:
        """Run fn on conn's thread if that connection is still the live one."""
        # If the connection died, the unacked chunk will be redelivered: nothing to do.
        with contextlib.suppress(BrokerUnavailable):
            conn.call_threadsafe(lambda: fn() if conn.is_open else None)

    # -- serve -----------------------------------------------------------------------------

    def _serve_thread(self) -> None:
        self._side_thread("serve", self._setup_serve)

    def _side_thread(self, what: str, setup: Callable[[Transport], None]) -> None:
        """Run one of the worker's own connections besides ingest, until the worker stops;
        a refusal stops the whole worker."""
        try:
            run_connection(
                self.connect, self.settings, f"warren worker {self.name} {what}", setup, self.stop
            )
        except BrokerRefused as exc:
            log.error("worker %s: %s connection refused: %s", self.name, what, exc)
            self.stop.set()

    def _setup_serve(self, conn: Transport) -> None:
        conn.declare(worker_topology(self.name))
        conn.consume(worker_control(self.name), lambda d: self._on_control(conn, d), prefetch=1)

    def _on_control(self, conn: Transport, d: Delivery) -> None:
        try:
            if d.type == m.ServeRequest.TYPE:
                self._serve(conn, m.ServeRequest.decode(d.body))
            elif d.type == m.CopyRequest.TYPE:
                self._copy(conn, m.CopyRequest.decode(d.body))
            else:
                raise DecodeError(f"unknown command {d.type!r}")
        except _Stopping:
            return  # unacked: RabbitMQ hands the command back when the connection closes
        d.ack()

    def _stream(self, sha256: str, size: int, send: Callable[[int, int, bytes], None]) -> str:
        """Read a stored blob chunk by chunk into ``send``; return the SHA-256 of what was read.

        Raises FileNotFoundError when the blob is not here, OSError when its size is wrong,
        and _Stopping when the worker is asked to stop half way (the command is requeued).
        """
        digest = hashlib.sha256()
        path = self.store.blob_path(sha256)
        for seq, offset, data in read_chunks(path, ChunkPlan(size, self.settings.chunk_size)):
            if self.stop.is_set():
                raise _Stopping
            digest.update(data)
            send(seq, offset, data)
        return digest.hexdigest()

    def _serve(self, conn: Transport, req: m.ServeRequest) -> None:
        """Stream one blob to a client's reply queue, checking its hash on the way."""
        gone: list[bool] = []

        def publish(body: bytes, type: str, headers: dict[str, int] | None = None) -> None:
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

        def chunk(seq: int, offset: int, data: bytes) -> None:
            publish(data, m.RESTORE_CHUNK_TYPE, m.RestoreChunk(seq, offset).to_headers())
            metrics.BYTES_OUT.labels("restore").inc(len(data))

        try:
            actual = self._stream(req.sha256, req.size, chunk)
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
                "this worker has no copy"
                if isinstance(exc, FileNotFoundError)
                else (f"stored copy is damaged ({exc})")
            )
            log.error(
                "restore %s: %s of %s on %s", req.correlation_id, reason, req.sha256[:12], self.name
            )
            failed = m.RestoreFailed(worker=self.name, reason=reason)
            with contextlib.suppress(_ClientGone):
                publish(failed.encode(), m.RestoreFailed.TYPE)

    def _copy(self, conn: Transport, req: m.CopyRequest) -> None:
        """Repair: send a blob to another worker as a one-hop upload it will verify."""
        conn.declare(worker_topology(req.target))
        count = ChunkPlan(req.size, self.settings.chunk_size).count
        refused: list[int] = []

        def chunk(seq: int, offset: int, data: bytes) -> None:
            h = m.ChunkHeaders(
                upload_id=req.upload_id,
                seq=seq,
                offset=offset,
                total_size=req.size,
                chunk_count=count,
                sha256=req.sha256,
                chain=(req.target,),
                hop=0,
            )
            conn.publish(
                worker_chunks(req.target),
                data,
                type=m.CHUNK_TYPE,
                headers=h.to_headers(),
                correlation_id=req.upload_id,
                on_confirm=lambda ok: None if ok else refused.append(seq),
            )
            metrics.BYTES_OUT.labels("repair").inc(len(data))

        try:
            if self._stream(req.sha256, req.size, chunk) != req.sha256:
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
