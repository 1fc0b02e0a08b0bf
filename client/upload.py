"""Uploads: many files in one command, pipelined, each a small state machine.

A file (or a pack of small files) goes through named steps, and ``Batch._advance`` is the
one place that moves it on:

    HASHING ──► ASKING ──► [RESUMING] ──► STORING ──► RECORDING ──► DONE
     (large     (placement  (an unfinished  (bytes sent;  (every replica
     files,     requested)  upload goes on: replicas      confirmed; the
     on the                 which chunks    confirming)   catalog records it)
     hasher)                does the
                            primary have?)

Any step can end in DONE early: a local problem, a refusal, a failed replica, a timeout.
Messages only record what arrived (an answer, a confirmation); the batch loop, on the
connection's thread, turns those into transitions and judges deadlines, each step's own.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from client.channel import Channel
from client.localfiles import (
    PACK_FILE_MAX,
    Hasher,
    is_small,
    read_small,
    small_size,
)
from client.outcomes import Progress, UploadResult, not_taken
from client.units import Pack, Step, Unit, Upload
from warren import compression
from warren import messages as m
from warren.chunks import ChunkPlan, read_chunks
from warren.errors import Busy, DecodeError, Unavailable, WarrenError, from_wire
from warren.pipeline import pipelined
from warren.topology import worker_chunks
from warren.transport import Confirm, Delivery

log = logging.getLogger("warren.client")

# A transfer may take this long per byte on top of settings.transfer_timeout before the
# client gives up waiting for the last confirmation (workers hash the file at the end).
SECONDS_PER_BYTE = 1 / (20 * 1024 * 1024)
# Uploads (files or packs) a command keeps in flight at once (placed or sent, not confirmed).
UPLOADS_IN_FLIGHT = 32
# A pack holds at most this many files, and at most settings.chunk_size bytes.
PACK_FILES = 256
# Packs in flight at once: each holds its files' bytes until it is sent.
PACKS_IN_FLIGHT = 8
# Files hashed ahead of their placement request, on the hashing thread.
HASH_AHEAD = 2

Done = Callable[[str, UploadResult | WarrenError], None]

# What only the manager tells an upload; the rest comes from the workers of its chain.
FROM_MANAGER = frozenset(
    t.TYPE
    for t in (m.UploadAccepted, m.PackAccepted, m.ErrorReply, m.UploadRecorded, m.PackRecorded)
)
# A worker's word on its own replicas: its ``worker`` field must be its sender.
REPLICA_WORDS = frozenset((m.ReplicaStored.TYPE, m.PackStored.TYPE, m.ReplicaFailed.TYPE))

__all__ = ["PACK_FILE_MAX", "Batch", "Hasher", "Pack", "Step", "Upload", "next_unit"]


class Batch:
    """One upload command's files, at most ``UPLOADS_IN_FLIGHT`` in flight at once.

    Paying a round trip and two replica confirmations per file, one file after the other,
    would make small files crawl; instead requests, chunks and confirmations of different
    files overlap. ``done(name, result or error)`` is called for each file as it finishes.
    A silent manager or a broker failure ends the whole batch.
    """

    def __init__(
        self,
        session: Channel,
        replicas: int,
        progress_for: Callable[[str], Progress],
        done: Done,
    ) -> None:
        self.session = session
        self.settings = session.settings
        self.replicas = replicas
        self.progress_for = progress_for
        self.done = done

    def run(self, items: list[tuple[Path, str]]) -> None:
        todo = collections.deque(items)
        flight: list[Unit] = []
        hasher = Hasher(self.session.wake)
        conn = self.session.conn
        try:
            while todo or flight:
                self._admit(todo, flight, hasher)
                if any([self._advance(unit) for unit in flight]):
                    # Sending a large file takes a while: take in what arrived meanwhile
                    # (answers, confirmations) before any deadline is judged.
                    conn.process(0)
                now = time.monotonic()
                for unit in flight:
                    self._judge(unit, now)
                for unit in [u for u in flight if u.step is Step.DONE]:
                    flight.remove(unit)
                    self._finish(unit)
                if flight:
                    conn.process(0.05)
        finally:
            hasher.stop()
            self.session.waiting(None)
            for unit in flight:
                self.session.unroute(unit.route)

    def _admit(
        self, todo: collections.deque[tuple[Path, str]], flight: list[Unit], hasher: Hasher
    ) -> None:
        """Take the next files in, while there is room in flight."""
        while todo and len(flight) < UPLOADS_IN_FLIGHT:
            small = is_small(todo[0][0])
            if small and sum(isinstance(u, Pack) for u in flight) >= PACKS_IN_FLIGHT:
                return
            if not small and sum(u.step is Step.HASHING for u in flight) >= HASH_AHEAD:
                return
            unit = next_unit(todo, self.settings.chunk_size, self.progress_for, self.done)
            if isinstance(unit, Pack):
                self._ask(unit)
                flight.append(unit)
            elif unit is not None:
                hasher.add(unit)
                flight.append(unit)

    def _advance(self, unit: Unit) -> bool:
        """Move ``unit`` on by what has arrived; True when it sent its bytes just now."""
        step = unit.step
        if step is Step.ASKING and unit.tries and unit.accepted is not None:
            self.session.waiting(None)  # it waited out Busy answers, and is placed now
        if step is Step.HASHING and isinstance(unit, Upload) and unit.hashed.is_set():
            if unit.error is None:
                self._ask(unit)
            else:
                unit.step = Step.DONE  # a local problem: this file only
        elif step is Step.ASKING and unit.error is not None:
            if not self._ask_again(unit):
                unit.step = Step.DONE
        elif step is Step.ASKING and isinstance(unit, Upload) and unit.already_stored():
            if unit.copying():  # its holders copy it on; the manager says when they are done
                self.session.unroute(unit.route)
                unit.route = unit.upload_id = unit.accepted.upload_id if unit.accepted else ""
                self.session.route(unit.route, self._heard(unit, unit.on_replica))
                unit.step = Step.STORING
                unit.deadline = (
                    time.monotonic() + self.settings.transfer_timeout + unit.size * SECONDS_PER_BYTE
                )
            else:
                unit.step = Step.DONE  # the cluster had it: recorded, nothing to send
        elif step is Step.ASKING and isinstance(unit, Pack) and unit.accepted is not None:
            if unit.take_stored():
                self._send(unit)
                unit.step = Step.STORING
                return True
            unit.step = Step.DONE  # every file was already stored: nothing to send
        elif step is Step.ASKING and isinstance(unit, Upload) and unit.resumed():
            unit.step = Step.RESUMING
            unit.deadline = time.monotonic() + self.settings.request_timeout
        elif (step is Step.ASKING and unit.accepted is not None) or (
            step is Step.RESUMING and isinstance(unit, Upload) and unit.have is not None
        ):
            self._send(unit)
            unit.step = Step.STORING
            return True
        elif step is Step.STORING and unit.failed:
            unit.step = Step.DONE
        elif step is Step.STORING and unit.complete:
            # Every replica is safe: now give the manager a moment to record it, so a
            # `list` right after this command shows the file.
            unit.step = Step.RECORDING
            unit.deadline = time.monotonic() + self.settings.request_timeout
        elif step is Step.RECORDING and unit.recorded:
            unit.step = Step.DONE
        return False

    def _ask_again(self, unit: Unit) -> bool:
        """After a Busy answer (nothing was done with the request), ask again after a
        pause, within the request timeout: True while it does. When the timeout has run
        out the answer is final, and said as such."""
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
            if unit.accepted is None and unit.error is None:
                raise Unavailable(self.session.silent())
        elif unit.step is Step.RESUMING:
            if isinstance(unit, Upload) and unit.have is None:
                unit.error = Unavailable(
                    f"{unit.accepted.chain[0] if unit.accepted else 'the primary'} did not say "
                    f"which chunks of {unit.name!r} it has; run the upload again."
                )
                unit.step = Step.DONE
        elif unit.step is Step.STORING:
            if unit.complete or unit.failed:
                return
            unit.time_out()
            unit.step = Step.DONE
        elif unit.step is Step.RECORDING:
            unit.step = Step.DONE  # stored all the same: only the catalog lags

    def _finish(self, unit: Unit) -> None:
        self.session.unroute(unit.route)
        for name, outcome in unit.outcomes():
            self.done(name, outcome)

    def _heard(self, unit: Unit, handler: Callable[[Delivery], None]) -> Callable[[Delivery], None]:
        """``handler``, given only what ``unit`` may hear from whoever sent it (see
        ``client.session``): anything else is acked and ignored."""

        def checked(d: Delivery) -> None:
            if self._may_send(unit, d):
                handler(d)

        return checked

    def _may_send(self, unit: Unit, d: Delivery) -> bool:
        """The manager's answers and records from the manager; ``upload.have`` from the
        chain's primary; a replica's word from the worker of the chain it names (or from
        the manager's login: a copy's "stored" relayed by the manager, or services that
        share one login)."""
        s = self.session
        if d.type in FROM_MANAGER:
            return s.from_manager(d)
        chain = unit.accepted.chain if unit.accepted is not None else ()
        if d.type == m.UploadHave.TYPE:
            return s.from_worker(d, chain[:1])
        if d.type not in REPLICA_WORDS:
            return s.from_manager(d)
        if s.as_manager(d):  # a copy's "stored", relayed; or services sharing one login
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

    def _ask(self, unit: Unit, again: bool = False) -> None:
        """Ask the manager where the hashed file (or pack) goes; the answer arrives later.
        ``again``: after a Busy answer, under a new route, by the first ask's deadline."""
        req: m.Message
        if isinstance(unit, Pack):
            files = tuple(
                m.PackFile(u.name, u.size, u.sha256, u.mode, u.mtime) for u in unit.members
            )
            req = m.PackRequest(
                files=files, replicas=self.replicas, client=self.session.client_name
            )
        else:
            req = m.UploadRequest(
                name=unit.name,
                size=unit.size,
                sha256=unit.sha256,
                replicas=self.replicas,
                client=self.session.client_name,
                mode=unit.mode,
                mtime=unit.mtime,
            )
        unit.step = Step.ASKING
        self.session.unroute(unit.route)
        unit.route = uuid.uuid4().hex
        if not again:
            unit.deadline = time.monotonic() + self.settings.request_timeout
        self.session.route(unit.route, self._heard(unit, unit.on_placement))

        def refused(why: Confirm) -> None:
            answer = not_taken(why)
            unit.error = from_wire(answer.code, answer.message)

        self.session.send_request(req, unit.route, refused)

    def _send(self, unit: Unit) -> None:
        if isinstance(unit, Pack):
            self._send_pack(unit)
        else:
            self._send_chunks(unit)
        # Workers hash the whole file at the end: allow time for the bytes on top.
        unit.deadline = (
            time.monotonic() + self.settings.transfer_timeout + unit.size * SECONDS_PER_BYTE
        )

    def _send_pack(self, pack: Pack) -> None:
        """One message to the primary with every file's bytes; its confirmations and the
        manager's PackRecorded arrive under the pack's route."""
        acc = pack.accepted
        assert acc is not None
        files = []
        to_send = [u for u in pack.members if u.accepted is None]  # not already stored
        for member in to_send:
            member.accepted = m.UploadAccepted(
                member.upload_id, acc.chain, self.settings.chunk_size
            )
            member.progress.started(member.size)
            files.append(m.PackEntry(member.upload_id, member.sha256, member.size))
        # One zstd frame for the whole body when it shrinks; workers forward it as it is.
        body, encoding = compression.encode(b"".join(u.data for u in to_send))
        headers = m.PackHeaders(files=tuple(files), chain=acc.chain, hop=0, encoding=encoding)
        for member in pack.members:
            member.data = b""
        for member in to_send:
            member.sent = member.size

        def confirmed(ok: Confirm) -> None:
            if not ok:
                pack.error = Unavailable("RabbitMQ did not accept a pack of files.")
                return
            for member in to_send:
                member.progress.transferred(member.size)

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

    def _send_chunks(self, up: Upload) -> None:
        """Stream the file to the primary; replica confirmations arrive on up.on_replica."""
        acc = up.accepted
        assert acc is not None
        plan = ChunkPlan(up.size, acc.chunk_size)
        conn = self.session.conn

        def confirmed(n: int) -> Callable[[Confirm], None]:
            def on_confirm(ok: Confirm) -> None:
                if ok:
                    up.progress.transferred(n)
                elif up.error is None:
                    up.error = Unavailable(f"RabbitMQ did not accept chunks of {up.name!r}.")

            return on_confirm

        self.session.unroute(up.route)
        up.route = acc.upload_id
        self.session.route(up.route, self._heard(up, up.on_replica))
        up.progress.started(up.size)
        have = set(up.have.seqs) if up.have else set()
        if up.have is not None and up.have.complete:
            up.progress.transferred(up.size)
            return  # the primary finished it: its confirmations or the record will come

        def prepare(chunk: tuple[int, int, bytes]) -> tuple[int, int, int, bytes, str]:
            """On the encoding thread, a few chunks ahead of the publishing: compressed
            when that makes it smaller (zstd releases the GIL)."""
            seq, offset, data = chunk
            if seq in have:
                return seq, offset, len(data), b"", m.RAW
            body, encoding = compression.encode(data)
            return seq, offset, len(data), body, encoding

        chunks = pipelined(read_chunks(up.path, plan), prepare)
        with contextlib.closing(chunks):
            for seq, offset, length, body, encoding in chunks:
                if seq in have:  # the primary wrote it before the upload was cut off
                    up.progress.transferred(length)
                    continue
                h = m.ChunkHeaders(
                    upload_id=acc.upload_id,
                    seq=seq,
                    offset=offset,
                    total_size=up.size,
                    chunk_count=plan.count,
                    sha256=up.sha256,
                    chain=acc.chain,
                    hop=0,
                    encoding=encoding,
                )
                conn.publish(
                    worker_chunks(acc.chain[0]),
                    body,
                    type=m.CHUNK_TYPE,
                    headers=h.to_headers(),
                    reply_to=self.session.reply_queue,
                    correlation_id=acc.upload_id,
                    on_confirm=confirmed(length),
                )
                up.sent += length
                conn.poll_confirms()  # progress as the broker takes the chunks
                if up.failed:
                    break


def next_unit(
    todo: collections.deque[tuple[Path, str]],
    chunk_size: int,
    progress_for: Callable[[str], Progress],
    done: Done,
) -> Unit | None:
    """The next file to upload, or a pack of the small files that come next.

    Small files are read (and hashed) whole into the pack, which holds at most
    PACK_FILES files and ``chunk_size`` bytes. A pack of one is sent as a plain upload.
    None when the files taken had problems of their own (reported through ``done``).
    """
    path, name = todo.popleft()
    if not is_small(path):
        return Upload(path, name, progress_for(name))
    pack = Pack()
    while True:
        try:
            data = read_small(path)
        except WarrenError as exc:
            done(name, exc)
        else:
            member = Upload(path, name, progress_for(name))
            member.size, member.data = len(data), data
            member.sha256 = hashlib.sha256(data).hexdigest()
            member.hashed.set()
            pack.members.append(member)
            pack.size += len(data)
        if not todo or len(pack.members) >= PACK_FILES:
            break
        size = small_size(todo[0][0])
        if size is None or pack.size + size > chunk_size:
            break
        path, name = todo.popleft()
    if len(pack.members) == 1:
        single = pack.members[0]
        single.data = b""  # sent in chunks from the file, like any other
        return single
    return pack if pack.members else None
