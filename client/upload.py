"""Uploads: files cut by content into chunks, sealed with the owner's key, sent in packs,
and recorded as versions once every chunk is stored. Nothing leaves the client unsealed.

A file goes through named steps, and ``Batch._advance`` is the one place that moves
things on:

    file:    CUTTING ──► WAITING ──► (in a commit) ──► DONE
             (read, cut,  (every chunk  (recorded as a new
             sealed, on    cut; some not version of its name)
             threads)      stored yet)

    pack:    ASKING ──► STORING ──► RECORDING ──► DONE      commit: ASKING ──► DONE
             (which       (bytes sent:  (every replica
             chunks are   replicas      confirmed; the
             new?)        confirming)   catalog records)

The cutting thread reads each file once, cuts it where its content says (FastCDC keyed by
the owner's seed, so the same bytes cut the same wherever they sit in a file), names each
chunk by a keyed hash of its bytes and seals it (``warren.chunkseal``). The manager answers
each pack with the chunks this owner already stored: those are not sent again, which is
both deduplication and resume (an interrupted upload run again finds most of its chunks
stored). Any step can end early: a local problem fails its file, a refused pack or a
failed replica fails the files that need its chunks, a silent manager ends the batch.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

from client.channel import Channel
from client.localfiles import local_file
from client.outcomes import Progress, UploadResult, not_taken
from client.units import Chunk, ChunkPack, Commit, FileJob, Step, Unit
from warren import chunkseal
from warren import messages as m
from warren.errors import Busy, DecodeError, Unavailable, WarrenError, from_wire
from warren.ownerkey import OwnerKeys
from warren.pipeline import pipelined
from warren.topology import worker_chunks
from warren.transport import Confirm, Delivery

log = logging.getLogger("warren.client")

# A transfer may take this long per byte on top of settings.transfer_timeout before the
# client gives up waiting for the last confirmation.
SECONDS_PER_BYTE = 1 / (20 * 1024 * 1024)
# A pack holds at most this many chunks, and at most settings.chunk_size bytes.
PACK_FILES = m.MAX_PACK_FILES
# Packs in flight at once: each holds its chunks' bytes until it is sent.
PACKS_IN_FLIGHT = 8
# A pack not full waits this long for more chunks while others are in flight (seconds).
PACK_WAIT = 0.05
# Sealed chunks cut ahead of the packing, waiting on the cutting thread's queue.
CUT_AHEAD = 8
# A commit records at most this many files, whose chunk lists together are at most this long.
COMMIT_FILES = m.MAX_PACK_FILES
COMMIT_CHUNKS = 50_000
COMMITS_IN_FLIGHT = 2

Done = Callable[[str, UploadResult | WarrenError], None]

# What only the manager tells an upload; the rest comes from the workers of its chain.
FROM_MANAGER = frozenset(
    t.TYPE for t in (m.PackAccepted, m.CommitReply, m.ErrorReply, m.UploadRecorded, m.PackRecorded)
)
# A worker's word on its own replicas: its ``worker`` field must be its sender.
REPLICA_WORDS = frozenset((m.ReplicaStored.TYPE, m.PackStored.TYPE, m.ReplicaFailed.TYPE))

__all__ = ["Batch", "ChunkPack", "FileJob", "Step"]

# What the cutting thread hands over: a sealed chunk of a file, the end of a file (None),
# or what went wrong reading it.
Cut = tuple[FileJob, "chunkseal.SealedChunk | WarrenError | None"]


class Batch:
    """One upload command's files. Chunks of many files share packs, and packs, commits
    and confirmations overlap: ``done(name, result or error)`` is called for each file as
    it finishes."""

    def __init__(
        self,
        session: Channel,
        keys: OwnerKeys,
        replicas: int,
        progress_for: Callable[[str], Progress],
        done: Done,
        commit: bool = True,
    ) -> None:
        """``commit``: each file stored becomes a version of its name; without, a file is
        done once its chunks are stored (and pinned): a snapshot names them instead."""
        self.session = session
        self.commit = commit
        self.settings = session.settings
        self.keys = keys
        self.replicas = replicas
        self.progress_for = progress_for
        self.done = done
        self.params = chunkseal.params_for(self.settings.chunk_size)
        self.chunks: dict[str, Chunk] = {}  # every chunk of this command, by digest
        self.files: list[FileJob] = []  # cut or being cut, not done
        self.open: ChunkPack | None = None  # filling up
        self.flight: list[Unit] = []
        self.cut_over = False
        self._owners: dict[str, FileJob] = {}  # chunk digest -> the file whose bytes_sent counts it

    def run(self, items: list[tuple[Path, str]]) -> None:
        jobs = [FileJob(path, name, self.progress_for(name)) for path, name in items]
        cutter = _Cutter(jobs, self.keys, self.params, self.session.wake)
        conn = self.session.conn
        try:
            while not self.cut_over or self.files or self.flight or self.open:
                self._take(cutter)
                if self._flush_due(cutter):
                    self._ask_pack()
                sent = any([self._advance(unit) for unit in list(self.flight)])
                if sent:
                    conn.process(0)
                now = time.monotonic()
                for unit in self.flight:
                    self._judge(unit, now)
                self.flight = [u for u in self.flight if u.step is not Step.DONE]
                self._commit_ready()
                self._finish_failed()
                if self.flight or not cutter.ready():
                    conn.process(0.05)
        finally:
            cutter.stop()
            self.session.waiting(None)
            for unit in self.flight:
                self.session.unroute(unit.route)

    # -- taking in what was cut --------------------------------------------------------------

    def _take(self, cutter: _Cutter) -> None:
        """Sealed chunks into the open pack, while there is room in flight."""
        while sum(isinstance(u, ChunkPack) for u in self.flight) < PACKS_IN_FLIGHT:
            item = cutter.take()
            if item is None:
                return
            if item is _Cutter.OVER:
                self.cut_over = True
                return
            job, what = cast(Cut, item)
            if not job.taken:
                job.taken = True
                self.files.append(job)
            if what is None:  # the whole file is cut
                job.sha256 = job.digest.hexdigest()
                job.step = Step.WAITING
            elif isinstance(what, WarrenError):
                job.fail(what)
                job.step = Step.WAITING
            else:
                self._add_chunk(job, what)

    def _add_chunk(self, job: FileJob, piece: chunkseal.SealedChunk) -> None:
        ref = m.ChunkRef(piece.digest, len(piece.sealed), piece.plain_size)
        chunk = self.chunks.get(piece.digest)
        if chunk is None:  # new to this command: it goes in a pack
            chunk = self.chunks[piece.digest] = Chunk(piece.digest, len(piece.sealed))
            pack = self.open
            if pack is not None and (
                pack.size + ref.size > self.settings.chunk_size or len(pack.members) >= PACK_FILES
            ):
                self._ask_pack()
                pack = None
            if pack is None:
                pack = self.open = ChunkPack()
            pack.members.append((chunk, piece.sealed))
            pack.size += ref.size
            self._owners[piece.digest] = job
        job.add(ref, chunk)

    def _flush_due(self, cutter: _Cutter) -> bool:
        """The open pack goes when cutting is over, or when nothing more is cut for now and
        either no pack is in flight or it has waited ``PACK_WAIT`` for more: full packs while
        files come fast (each pack is a request, a message and an fsync on every worker of
        its chain), no wait for the last few."""
        if self.open is None or not self.open.members:
            return False
        if self.cut_over:
            return True
        if cutter.ready():
            return False
        packs = sum(isinstance(u, ChunkPack) for u in self.flight)
        return packs == 0 or time.monotonic() - self.open.opened >= PACK_WAIT

    # -- moving units on ---------------------------------------------------------------------

    def _advance(self, unit: Unit) -> bool:
        """Move ``unit`` on by what has arrived; True when it sent its bytes just now."""
        step = unit.step
        if (
            step is Step.ASKING
            and unit.tries
            and (getattr(unit, "accepted", None) is not None or getattr(unit, "reply", None))
        ):
            self.session.waiting(None)  # it waited out Busy answers, and is answered now
        if step is Step.ASKING and unit.error is not None:
            if not self._ask_again(unit):
                self._unit_failed(unit, unit.error)
        elif isinstance(unit, Commit):
            if step is Step.ASKING and unit.reply is not None:
                for job, version in zip(unit.files, unit.reply.versions, strict=True):
                    job.version = version
                    self._job_done(job)
                unit.step = Step.DONE
        elif step is Step.ASKING and unit.accepted is not None:
            to_send = unit.take_stored()
            if to_send:
                self._send_pack(unit, to_send)
                unit.step = Step.STORING
                return True
            unit.step = Step.DONE  # every chunk was already stored: nothing to send
        elif step is Step.STORING and unit.error is not None:
            self._unit_failed(unit, unit.error)
        elif step is Step.STORING and unit.complete:
            # Every replica is safe; the catalog records the chunks before a commit can
            # name them, so wait for its word too.
            unit.step = Step.RECORDING
            unit.deadline = time.monotonic() + self.settings.request_timeout
        elif step is Step.RECORDING and unit.all_recorded:
            unit.settle()
            unit.step = Step.DONE
        return False

    def _unit_failed(self, unit: Unit, error: WarrenError) -> None:
        if isinstance(unit, ChunkPack):
            unit.fail_all(error)
        else:
            for job in unit.files:
                job.fail(error)
                self._job_done(job)
        unit.step = Step.DONE

    def _ask_again(self, unit: Unit) -> bool:
        """After a Busy answer (nothing was done with the request), ask again after a
        pause, within the request timeout: True while it does."""
        if not isinstance(unit.error, Busy):
            return False
        now = time.monotonic()
        if not unit.again_at:
            pause = self.session.busy_pause(unit.tries, unit.deadline, unit.error)
            if pause is None:
                unit.error = self.session.outlasted(unit.error)
                return False
            unit.tries += 1
            unit.again_at = now + pause
        elif now >= unit.again_at:
            unit.again_at = 0.0
            unit.error = None
            self._ask(unit, again=True)
        return True

    def _judge(self, unit: Unit, now: float) -> None:
        """The deadline of ``unit``'s step, if it has passed and nothing it waited for has
        come meanwhile (that is taken in by the next ``_advance``)."""
        if now <= unit.deadline:
            return
        if unit.step is Step.ASKING:
            answered = unit.reply if isinstance(unit, Commit) else unit.accepted
            if answered is None and unit.error is None and not unit.again_at:
                raise Unavailable(self.session.silent())
        elif isinstance(unit, ChunkPack) and unit.step is Step.STORING:
            if unit.complete:
                return
            unit.settle(timed_out=True)
            unit.step = Step.DONE
        elif isinstance(unit, ChunkPack) and unit.step is Step.RECORDING:
            unit.settle()  # stored all the same: a commit finds out whether it is recorded
            unit.step = Step.DONE

    # -- packs ---------------------------------------------------------------------------

    def _ask_pack(self) -> None:
        pack = self.open
        self.open = None
        if pack is None or not pack.members:
            return
        self._ask(pack)
        self.flight.append(pack)

    def _ask(self, unit: Unit, again: bool = False) -> None:
        """Ask the manager about a pack (which chunks are new, and where they go) or a
        commit; the answer arrives later. ``again``: after a Busy answer, under a new route,
        by the first ask's deadline."""
        req: m.Message
        if isinstance(unit, ChunkPack):
            files = tuple(m.PackFile("", c.size, c.digest) for c, _ in unit.members)
            req = m.PackRequest(
                files=files, replicas=self.replicas, client=self.session.client_name, chunks=True
            )
            handler = unit.on_placement
        else:
            req = m.CommitRequest(
                files=tuple(
                    m.CommitFile(j.name, j.size, j.sha256, tuple(j.chunks), j.mode, j.mtime)
                    for j in unit.files
                ),
                replicas=self.replicas,
                client=self.session.client_name,
            )
            handler = unit.on_answer
        unit.step = Step.ASKING
        self.session.unroute(unit.route)
        unit.route = uuid.uuid4().hex
        if not again:
            unit.deadline = time.monotonic() + self.settings.request_timeout
        self.session.route(unit.route, self._heard(unit, handler))

        def refused(why: Confirm) -> None:
            answer = not_taken(why)
            unit.error = from_wire(answer.code, answer.message)

        self.session.send_request(req, unit.route, refused)

    def _send_pack(self, pack: ChunkPack, to_send: list[tuple[Chunk, bytes]]) -> None:
        """One message to the primary with every new chunk's sealed bytes; its
        confirmations and the manager's PackRecorded arrive under the pack's route."""
        acc = pack.accepted
        assert acc is not None
        ids = {c.digest: u for u, c in pack.by_id.items()}
        files = tuple(m.PackEntry(ids[c.digest], c.digest, c.size) for c, _ in to_send)
        headers = m.PackHeaders(files=files, chain=acc.chain, hop=0, encoding=m.RAW)
        body = b"".join(data for _, data in to_send)
        for chunk, _ in to_send:
            owner = self._owners.pop(chunk.digest, None)
            if owner is not None:
                owner.sent += chunk.size

        def confirmed(ok: Confirm) -> None:
            if not ok and pack.error is None:
                pack.error = Unavailable("RabbitMQ did not accept a pack of chunks.")

        self.session.route(pack.route, self._heard(pack, pack.on_replica))
        self.session.conn.publish(
            worker_chunks(acc.chain[0]),
            body,
            type=m.PACK_TYPE,
            headers=headers.to_headers(),
            reply_to=self.session.reply_queue,
            correlation_id=pack.route,
            on_confirm=confirmed,
        )
        pack.deadline = (
            time.monotonic() + self.settings.transfer_timeout + len(body) * (SECONDS_PER_BYTE)
        )

    # -- commits and outcomes --------------------------------------------------------------

    def _commit_ready(self) -> None:
        """Files whose every chunk is stored, recorded together as versions."""
        if not self.commit:
            for job in [j for j in self.files if j.ready]:
                self._job_done(job)
            return
        while sum(isinstance(u, Commit) for u in self.flight) < COMMITS_IN_FLIGHT:
            ready: list[FileJob] = []
            chunks = 0
            for job in self.files:
                if job.ready and job.step is Step.WAITING:
                    if ready and (
                        len(ready) >= COMMIT_FILES or chunks + len(job.chunks) > COMMIT_CHUNKS
                    ):
                        break
                    ready.append(job)
                    chunks += len(job.chunks)
            if not ready:
                return
            for job in ready:
                job.step = Step.ASKING
            commit = Commit(ready)
            self._ask(commit)
            self.flight.append(commit)

    def _finish_failed(self) -> None:
        """Files that failed (a chunk, a local problem) are done once cut: nothing of them
        is committed, and what was stored of them goes as garbage."""
        for job in [j for j in self.files if j.error is not None and j.step is Step.WAITING]:
            self._job_done(job)

    def _job_done(self, job: FileJob) -> None:
        job.step = Step.DONE
        with contextlib.suppress(ValueError):
            self.files.remove(job)
        self.done(job.name, job.outcome())

    # -- whom to believe -------------------------------------------------------------------

    def _heard(self, unit: Unit, handler: Callable[[Delivery], None]) -> Callable[[Delivery], None]:
        """``handler``, given only what ``unit`` may hear from whoever sent it (see
        ``client.channel``): anything else is acked and ignored."""

        def checked(d: Delivery) -> None:
            if self._may_send(unit, d):
                handler(d)

        return checked

    def _may_send(self, unit: Unit, d: Delivery) -> bool:
        """The manager's answers and records from the manager; a replica's word from the
        worker of the chain it names (or from the manager's login: services that share one
        login)."""
        s = self.session
        if d.type in FROM_MANAGER:
            return s.from_manager(d)
        if d.type not in REPLICA_WORDS or not isinstance(unit, ChunkPack):
            return s.from_manager(d)
        chain = unit.accepted.chain if unit.accepted is not None else ()
        if s.as_manager(d):
            return True
        if not s.from_worker(d, chain):
            return False
        try:
            msg = m.decode(d.type, d.body)
        except DecodeError:
            return s.ignore(d, "a worker, in a message that decodes")
        worker = getattr(msg, "worker", "")
        if worker in chain and worker == d.user_id:
            return True
        return s.ignore(d, f"{worker!r} itself, a worker of {', '.join(chain)}")


class _Cutter:
    """Reads, cuts and seals the files of a command, in order, on threads of its own
    (``warren.pipeline``: zstd, AES-GCM, BLAKE3 and SHA-256 release the interpreter lock),
    at most ``CUT_AHEAD`` sealed chunks ahead of the packing. ``wake`` is called after each,
    so the connection's thread picks it up at once."""

    OVER = object()

    def __init__(
        self,
        jobs: list[FileJob],
        keys: OwnerKeys,
        params: chunkseal.ChunkParams,
        wake: Callable[[], None],
    ) -> None:
        self._jobs = jobs
        self._keys = keys
        self._params = params
        self._wake = wake
        self._out: queue.Queue[object] = queue.Queue(CUT_AHEAD)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warren-cut", daemon=True)
        self._thread.start()

    def take(self) -> object | None:
        """The next item cut, ``OVER`` after the last, or None when none is ready yet."""
        try:
            return self._out.get_nowait()
        except queue.Empty:
            return None

    def ready(self) -> bool:
        return not self._out.empty()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._out.get_nowait()

    def _put(self, item: object) -> bool:
        while not self._stopped.is_set():
            try:
                self._out.put(item, timeout=0.1)
            except queue.Full:
                continue
            with contextlib.suppress(Exception):
                self._wake()
            return True
        return False

    def _pieces(self) -> Iterator[tuple[FileJob, bytes | WarrenError | None]]:
        for job in self._jobs:
            try:
                with local_file(job.path):
                    for data in chunkseal.cut(job.path, self._params, self._keys.chunker_seed):
                        if self._stopped.is_set():
                            return
                        job.digest.update(data)
                        job.size += len(data)
                        yield job, bytes(data)
            except WarrenError as exc:
                yield job, exc
                continue
            yield job, None

    def _seal(
        self, item: tuple[FileJob, bytes | WarrenError | None]
    ) -> tuple[FileJob, chunkseal.SealedChunk | WarrenError | None]:
        job, data = item
        if not isinstance(data, bytes):
            return job, data
        return job, chunkseal.seal_one(self._keys.seal, self._keys.ids, data)

    def _run(self) -> None:
        try:
            with contextlib.closing(pipelined(self._pieces(), self._seal)) as sealed:
                for item in sealed:
                    if not self._put(item):
                        return
        except Exception as exc:  # noqa: BLE001 - a bug: every file not done fails with it
            log.debug("cutting failed", exc_info=True)
            for job in self._jobs:
                if job.step is Step.CUTTING:
                    self._put((job, WarrenError(f"{job.path}: reading it failed ({exc}).")))
        self._put(self.OVER)
