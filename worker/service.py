"""The storage worker: stores chunks, forwards them down the chain, serves restores.

Four threads, each with its own connection (pika's blocking connection is one thread's):

* **ingest** consumes ``warren.worker.<name>.chunks`` (``worker/intake.py``): write each
  chunk at its offset, forward it to the next worker in the chain with a confirm, and only
  then ack. The chunk that completes an upload is acked only after the replica is fsynced,
  verified and renamed into the store (on a small thread pool) and "replica stored" is
  confirmed. On every (re)connect it sends the inventory first.
* **serve** consumes ``warren.worker.<name>.control`` (``worker/serve.py``): restores to
  clients and repair copies to other workers.
* **scrub** re-reads every blob within ``WARREN_SCRUB_INTERVAL`` (``worker/scrub.py``).
* **heartbeat** only sends heartbeats. Nothing else runs on its thread or connection, so
  no ingest, fsync, finalize or restore can delay them: a busy worker is never taken for
  a dead one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from warren import messages as m
from warren import metrics
from warren.config import Settings
from warren.errors import BrokerRefused
from warren.private import private_dir
from warren.service import run_connection
from warren.topology import (
    MANAGER_EVENTS,
    manager_topology,
    worker_chunks,
    worker_control,
    worker_topology,
)
from warren.transport import Connect, Transport
from worker.blobs import BlobStore
from worker.incoming import Incoming
from worker.intake import Intake
from worker.scrub import Scrubber
from worker.serve import Server, send_inventory

log = logging.getLogger("warren.worker")


class Worker:
    def __init__(self, settings: Settings, stop: threading.Event, connect: Connect) -> None:
        self.settings = settings
        self.connect = connect
        self.name = settings.name
        self.stop = stop
        # Under the data dir: blobs/ (the blob store, any thread), incoming/ (uploads being
        # received: the ingest thread's), and the logs of records and expected uploads.
        self.root = Path(settings.data_dir or ".")
        self.blobs = BlobStore(self.root)
        self.incoming = Incoming(self.root, self.blobs)
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{self.name}-final")
        self.intake = Intake(settings, self.root, self.incoming, self.blobs, self._pool)
        self.server = Server(settings, self.root, self.blobs, self.incoming.have, stop)
        self.scrubber = Scrubber(settings, self.blobs, self.incoming.sweep, stop)
        # Started once ingest is connected, so a missing broker is reported once, not thrice.
        self._threads = [
            threading.Thread(target=self._serve_thread, name=f"{self.name}-serve"),
            threading.Thread(target=self._heartbeat_thread, name=f"{self.name}-heartbeat"),
            threading.Thread(target=self._scrub_thread, name=f"{self.name}-scrub"),
        ]

    def run(self) -> None:
        """Run until ``stop`` is set; reconnects on its own when the broker goes away."""
        if self.settings.data_dir is not None:  # every user's bytes
            private_dir(Path(self.settings.data_dir))
        self.blobs.open()
        self.incoming.open()
        swept = self.incoming.sweep(time.time() - self.settings.upload_expiry)
        if swept:
            log.info("worker %s: removed %d abandoned partial uploads", self.name, swept)
        metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        usage = self.blobs.usage()
        log.info(
            "worker %s: %d files, %d bytes in %s",
            self.name,
            usage.files,
            usage.used_bytes,
            self.root,
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
        reported = send_inventory(conn, self.name, self.root, self.blobs)
        self.intake.attach(conn)
        conn.consume(worker_chunks(self.name), lambda d: self.intake.on_delivery(conn, d))
        for thread in self._threads:
            if thread.ident is None:
                thread.start()
        log.info("worker %s: ready, %d blobs reported", self.name, reported)

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
        u = self.blobs.usage()
        beat = m.Heartbeat(
            worker=self.name,
            free_bytes=u.free_bytes,
            used_bytes=u.used_bytes,
            files=u.files,
            scrubbed_at=self.scrubber.finished_at,
            damaged=self.blobs.damaged,
            refused=self.intake.manager_only.refused + self.server.manager_only.refused,
        )
        # A heartbeat that waited in the queue longer than dead_after (the manager was down)
        # says nothing of now: RabbitMQ takes it out of the queue (into the dead letters,
        # which keep only the newest), so a worker that died meanwhile is not taken for
        # alive by a manager coming back.
        conn.publish(
            MANAGER_EVENTS,
            beat.encode(),
            type=m.Heartbeat.TYPE,
            persistent=False,
            expiration_ms=max(1, int(self.settings.dead_after * 1000)),
        )
        conn.call_later(self.settings.heartbeat_interval, lambda: self._heartbeat(conn))

    # -- serve -----------------------------------------------------------------------------

    def _serve_thread(self) -> None:
        self._side_thread("serve", self._setup_serve)

    def _scrub_thread(self) -> None:
        self._side_thread("scrub", self.scrubber.setup)

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
        conn.consume(
            worker_control(self.name), lambda d: self.server.on_control(conn, d), prefetch=1
        )
