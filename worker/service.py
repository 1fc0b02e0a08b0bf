"""The storage worker: stores chunks, forwards them down the chain, serves restores.

Two threads, each with its own connection (pika's blocking connection is one thread's):

* **ingest** consumes ``warren.worker.<name>.chunks``. For each chunk: write it at its
  offset, forward it to the next worker in the chain with a confirm, and only then ack.
  The chunk that completes an upload is acked only after the replica is fsynced, verified
  and renamed into the store (that work runs on a small thread pool, so hashing a large
  file never starves the connection's heartbeats) and "replica stored" is confirmed.
  It also sends the heartbeats and, on every (re)connect, the inventory.
* **serve** consumes ``warren.worker.<name>.control`` and streams stored files to clients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from warren import messages as m
from warren.broker import Connection, Delivery
from warren.config import Settings
from warren.errors import BrokerRefused, BrokerUnavailable, DecodeError
from warren.service import run_connection
from warren.topology import (
    HEARTBEAT_TTL_MS,
    MANAGER_EVENTS,
    worker_chunks,
    worker_control,
    worker_topology,
)
from worker.store import ChunkStore, CorruptUpload

log = logging.getLogger("warren.worker")

Callback = Callable[[], None]


class Worker:
    def __init__(self, settings: Settings, stop: threading.Event) -> None:
        self.settings = settings
        self.name = settings.name
        self.stop = stop
        self.store = ChunkStore(Path(settings.data_dir or "."))
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self.name}-final")
        self._finalizing: set[str] = set()
        # Started once ingest is connected, so a missing broker is reported once, not twice.
        self._serve_loop = threading.Thread(target=self._serve_thread, name=f"{self.name}-serve")

    def run(self) -> None:
        """Run until ``stop`` is set; reconnects on its own when the broker goes away."""
        self.store.open()
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
                self.settings, f"warren worker {self.name}", self._setup_ingest, self.stop
            )
        finally:
            self.stop.set()
            if self._serve_loop.ident is not None:
                self._serve_loop.join()
            self._pool.shutdown(wait=True)
            log.info("worker %s: stopped", self.name)

    # -- ingest ----------------------------------------------------------------------------

    def _setup_ingest(self, conn: Connection) -> None:
        conn.declare(worker_topology(self.name))
        inventory = m.Inventory(worker=self.name, blobs=tuple(self.store.inventory()))
        conn.publish_and_wait(MANAGER_EVENTS, inventory.encode(), type=m.Inventory.TYPE)
        self._heartbeat(conn)
        conn.consume(worker_chunks(self.name), lambda d: self._on_chunk(conn, d))
        if self._serve_loop.ident is None:
            self._serve_loop.start()
        log.info("worker %s: ready, %d blobs reported", self.name, len(inventory.blobs))

    def _heartbeat(self, conn: Connection) -> None:
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

    def _on_chunk(self, conn: Connection, d: Delivery) -> None:
        if d.type != m.CHUNK_TYPE:
            raise DecodeError(f"expected {m.CHUNK_TYPE}, got {d.type!r}")
        h = m.ChunkHeaders.from_headers(d.headers, len(d.body))
        if h.chain[h.hop] != self.name:
            raise DecodeError(f"chunk addressed to {h.chain[h.hop]}, not {self.name}")

        done = self.store.done_sha256(h.upload_id)
        if done is not None or h.upload_id in self._finalizing:
            # A redelivery after this replica was finished (or while it is being finished):
            # nothing to write. Forward again (idempotent downstream) and settle.
            self._forward(conn, d, h, lambda: self._after_done(conn, d, h, done))
            return

        count = self.store.write_chunk(h.upload_id, h.seq, h.offset, d.body)
        complete = count == h.chunk_count
        self._forward(conn, d, h, lambda: self._complete(conn, d, h) if complete else d.ack())

    def _forward(self, conn: Connection, d: Delivery, h: m.ChunkHeaders, then: Callback) -> None:
        nxt = h.next_worker
        if nxt is None:
            then()
            return
        conn.declare(worker_topology(nxt))

        def confirmed(ok: bool) -> None:
            if ok:
                then()
            elif d.redelivered:
                log.error(
                    "upload %s: cannot forward chunk %d to %s; giving up on it",
                    h.upload_id,
                    h.seq,
                    nxt,
                )
                self._fail(conn, d, h, f"could not forward to {nxt}")
            else:
                d.reject(requeue=True)  # try once more

        headers = dataclasses.replace(h, hop=h.hop + 1).to_headers()
        conn.publish(
            worker_chunks(nxt),
            d.body,
            type=m.CHUNK_TYPE,
            headers=headers,
            reply_to=d.reply_to,
            correlation_id=d.correlation_id,
            on_confirm=confirmed,
        )

    def _complete(self, conn: Connection, d: Delivery, h: m.ChunkHeaders) -> None:
        """All chunks are in: finalize off-thread, then confirm and ack back on this one."""
        self._finalizing.add(h.upload_id)

        def work() -> None:
            try:
                self.store.finalize(h.upload_id, h.sha256, h.total_size)
                error = None
            except CorruptUpload as exc:
                error = str(exc)
            except OSError as exc:
                error = f"disk error: {exc.strerror or exc}"
            self._call_on(conn, lambda: self._finished(conn, d, h, error))

        self._pool.submit(work)

    def _finished(
        self, conn: Connection, d: Delivery, h: m.ChunkHeaders, error: str | None
    ) -> None:
        self._finalizing.discard(h.upload_id)
        if error is None:
            log.info(
                "upload %s: replica stored on %s (%d bytes, hop %d)",
                h.upload_id,
                self.name,
                h.total_size,
                h.hop,
            )
            self._after_done(conn, d, h, h.sha256)
        else:
            log.error("upload %s: replica failed on %s: %s", h.upload_id, self.name, error)
            self._fail(conn, d, h, error)

    def _after_done(
        self, conn: Connection, d: Delivery, h: m.ChunkHeaders, sha: str | None
    ) -> None:
        if sha is None:  # still finalizing: the finishing chunk will confirm; this one is safe
            d.ack()
            return
        stored = m.ReplicaStored(
            upload_id=h.upload_id, worker=self.name, sha256=sha, size=h.total_size, hop=h.hop
        )
        self._announce(conn, d, stored.encode(), m.ReplicaStored.TYPE, then=d.ack)

    def _fail(self, conn: Connection, d: Delivery, h: m.ChunkHeaders, reason: str) -> None:
        failed = m.ReplicaFailed(upload_id=h.upload_id, worker=self.name, reason=reason)
        self._announce(
            conn, d, failed.encode(), m.ReplicaFailed.TYPE, then=lambda: d.reject(requeue=False)
        )

    def _announce(
        self, conn: Connection, d: Delivery, body: bytes, type: str, then: Callback
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

    def _call_on(self, conn: Connection, fn: Callback) -> None:
        """Run fn on conn's thread if that connection is still the live one."""
        # If the connection died, the unacked chunk will be redelivered: nothing to do.
        with contextlib.suppress(BrokerUnavailable):
            conn.call_threadsafe(lambda: fn() if conn.is_open else None)

    # -- serve -----------------------------------------------------------------------------

    def _serve_thread(self) -> None:
        try:
            run_connection(
                self.settings, f"warren worker {self.name} serve", self._setup_serve, self.stop
            )
        except BrokerRefused as exc:
            log.error("worker %s: serve connection refused: %s", self.name, exc)
            self.stop.set()

    def _setup_serve(self, conn: Connection) -> None:
        conn.declare(worker_topology(self.name))
        conn.consume(worker_control(self.name), lambda d: self._on_control(conn, d), prefetch=1)

    def _on_control(self, conn: Connection, d: Delivery) -> None:
        if d.type != m.ServeRequest.TYPE:
            raise DecodeError(f"unknown command {d.type!r}")
        req = m.ServeRequest.decode(d.body)
        self._serve(conn, req)
        d.ack()

    def _serve(self, conn: Connection, req: m.ServeRequest) -> None:
        """Stream one blob to a client's reply queue, checking its hash on the way."""
        path = self.store.blob_path(req.sha256)
        lost: list[bool] = []

        def on_confirm(ok: bool) -> None:
            if not ok:
                lost.append(True)

        def send(body: bytes, type: str, headers: dict[str, int] | None = None) -> None:
            conn.publish(
                req.reply_to,
                body,
                type=type,
                headers=headers,
                correlation_id=req.correlation_id,
                persistent=False,
                on_confirm=on_confirm,
            )

        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            log.error("restore %s: blob %s is not on %s", req.correlation_id, req.sha256, self.name)
            failed = m.RestoreFailed(worker=self.name, reason="this worker has no copy")
            send(failed.encode(), m.RestoreFailed.TYPE)
            return
        digest = hashlib.sha256()
        seq = offset = 0
        with f:
            while not lost and not self.stop.is_set():
                data = f.read(self.settings.chunk_size)
                if not data:
                    break
                digest.update(data)
                send(data, m.RESTORE_CHUNK_TYPE, m.RestoreChunk(seq, offset).to_headers())
                seq += 1
                offset += len(data)
        if lost:
            log.warning("restore %s: client queue is gone; stopped", req.correlation_id)
            return
        if digest.hexdigest() != req.sha256:
            log.error(
                "restore %s: stored copy of %s on %s is corrupt",
                req.correlation_id,
                req.sha256,
                self.name,
            )
            failed = m.RestoreFailed(worker=self.name, reason="stored copy failed its SHA-256")
            send(failed.encode(), m.RestoreFailed.TYPE)
            return
        end = m.RestoreEnd(worker=self.name, sha256=req.sha256, size=offset)
        send(end.encode(), m.RestoreEnd.TYPE)
        conn.wait_for_confirms()
        log.info("restore %s: sent %d bytes of %s", req.correlation_id, offset, req.sha256[:12])
