"""A worker's uploads being received: chunks assembled in ``incoming/`` until the file is
whole, verified and handed to the blob store (worker/blobs.py).

Layout under the worker's data dir::

    incoming/<id>.part         an upload being received, written chunk by chunk at its offset
    incoming/<id>.seqs         the chunks already written (one number per line): a journal that
                               lets a restarted worker resume instead of starting over
    incoming/<id>.zpart        an upload whose first chunk came compressed: its frames in the
                               order they came, each a record of its own (no journal needed)
    incoming/<id>.done         the upload finished (its sha256): a redelivered chunk is a no-op
                               (both only for files of more than one chunk)

Every write is idempotent: a redelivered chunk rewrites the same bytes at the same offset.
A replica becomes visible only by an atomic rename after fsync and SHA-256 verification,
so a partial file is never listed or served.

``Incoming`` belongs to the ingest thread: it alone writes chunks, and its bookkeeping in
memory (the chunks received, the running hashes, where each ``.zpart`` ends) is unlocked.
``take_running`` hands an upload's running hash over, on that thread, to ``finish``, which
runs on the pool and touches only that upload's files and the blob store. Two calls are
safe from any thread, for they only read or remove files: ``have`` (serve asks it for a
resumed upload) and ``sweep`` (at start, and from scrub).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from warren.chunks import Writeback, sha256_file
from warren.messages import HEX32, ZSTD
from worker import frames
from worker.blobs import BlobStore, CorruptUpload
from worker.disk import fsync_path, write_all

log = logging.getLogger("warren.worker.incoming")


class Incoming:
    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.dir = root / "incoming"
        self.blobs = blobs  # where a finished upload goes
        self._received: dict[str, set[int]] = {}
        self._digests: dict[str, Running] = {}  # uploads whose bytes came in order so far
        self._zpart_end: dict[str, int] = {}  # uploads kept as frames: where the next goes

    def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not HEX32.match(upload_id):  # the id becomes a file name: accept nothing else
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.dir / f"{upload_id}{suffix}"

    def done_sha256(self, upload_id: str) -> str | None:
        """The hash of a finished upload, or None if it is not finished here."""
        try:
            return self._path(upload_id, ".done").read_text().strip() or None
        except FileNotFoundError:
            return None

    def write_chunk(
        self,
        upload_id: str,
        seq: int,
        offset: int,
        data: bytes,
        chunk_count: int,
        wire: tuple[bytes, str] | None = None,
        total_size: int = 0,
    ) -> int:
        """Write one chunk at its offset and journal it; return how many chunks are in.

        ``wire``: the chunk as it came (its body and encoding). An upload of several chunks
        whose first came compressed is kept as its frames (``.zpart``), the others as their
        bytes. A file of one chunk needs no journal (nor, later, a done marker): a
        redelivery of its only chunk simply stores it again, identically. Small files skip
        two file creations per replica that way, and creating files is most of what they cost.
        """
        if self._framed(upload_id, chunk_count, wire):
            assert wire is not None
            return self._write_frame(upload_id, seq, offset, data, wire, chunk_count, total_size)
        received = self._received_set(upload_id)
        if seq not in received:
            running = self._hash_in_order(upload_id, offset, data, fresh=not received)
            fd = os.open(self._path(upload_id, ".part"), os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                write_all(fd, memoryview(data), offset)
                if running is not None:
                    running.writeback.written_up_to(fd, running.next_offset)
            finally:
                os.close(fd)
            if chunk_count > 1:
                with open(self._path(upload_id, ".seqs"), "a") as journal:
                    journal.write(f"{seq}\n")
            received.add(seq)
        return len(received)

    def _framed(self, upload_id: str, chunk_count: int, wire: tuple[bytes, str] | None) -> bool:
        """Whether this upload is kept as frames: decided by its first chunk, then by the
        file it began (a restarted worker goes on as it began)."""
        if upload_id in self._zpart_end:
            return True
        if chunk_count <= 1 or upload_id in self._received:
            return False
        if self._path(upload_id, ".part").exists():
            return False
        if self._path(upload_id, ".zpart").exists():
            return True
        return wire is not None and wire[1] == ZSTD

    def _write_frame(
        self,
        upload_id: str,
        seq: int,
        offset: int,
        data: bytes,
        wire: tuple[bytes, str],
        chunk_count: int,
        total_size: int,
    ) -> int:
        """Append one chunk's frame to the upload's ``.zpart``, unless it is there already."""
        path = self._path(upload_id, ".zpart")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            end = self._zpart_end.get(upload_id)
            if end is None:  # first touch in this process: what came before a restart
                received, end = frames.end_of(fd)
                if end == 0:
                    end = frames.append(fd, 0, [frames.file_header(total_size, chunk_count)])
                else:
                    os.ftruncate(fd, end)  # a record cut short by a crash goes
                self._received[upload_id] = received
            received = self._received[upload_id]
            if seq not in received:
                running = self._hash_in_order(upload_id, offset, data, fresh=not received)
                end = frames.append(fd, end, frames.chunk_record(seq, len(data), *wire))
                if running is not None:
                    running.writeback.written_up_to(fd, end)
                    running.chunks += 1
                received.add(seq)
            self._zpart_end[upload_id] = end
        finally:
            os.close(fd)
        return len(received)

    def _hash_in_order(
        self, upload_id: str, offset: int, data: bytes, fresh: bool
    ) -> Running | None:
        """Hash the bytes as they are written, while chunks come in order (they do, except after
        a restart or a redelivery), so finishing need not read the file back."""
        if fresh and offset == 0:
            self._digests[upload_id] = Running()
        running = self._digests.get(upload_id)
        if running is None:
            return None
        if running.next_offset == offset:
            running.digest.update(data)
            running.next_offset += len(data)
            return running
        del self._digests[upload_id]  # out of order: finishing reads the file back
        return None

    def _received_set(self, upload_id: str) -> set[int]:
        received = self._received.get(upload_id)
        if received is None:
            received = set()
            try:
                for line in self._path(upload_id, ".seqs").read_text().split():
                    received.add(int(line))
            except FileNotFoundError:
                pass
            except ValueError:
                log.warning("upload %s: damaged journal, receiving it again", upload_id)
                received = set()
            self._received[upload_id] = received
        return received

    def take_running(self, upload_id: str) -> Running | None:
        """The receiving side's bookkeeping for an upload about to be finished: forgotten
        here, on the thread that receives chunks (the journal on disk stays the truth), and
        its running hash handed to ``finish``."""
        self._received.pop(upload_id, None)
        self._zpart_end.pop(upload_id, None)
        return self._digests.pop(upload_id, None)

    def finish(self, upload_id: str, sha256: str, size: int, running: Running | None) -> Path:
        """fsync, verify the whole-file SHA-256, and move the replica into the blob store.

        The hash is the one computed as the chunks were written when they came in order,
        else the file is read back. Touches only this upload's files and the blob store
        (whose counters are locked), so it runs on a pool thread: that read of a large file
        takes a while.
        """
        if self._path(upload_id, ".zpart").exists():
            return self._finish_frames(upload_id, sha256, size, running)
        part = self._path(upload_id, ".part")
        fd = os.open(part, os.O_RDWR)  # every upload wrote its first chunk, even an empty one
        try:
            os.ftruncate(fd, size)  # an empty file has one empty chunk and nothing to write
            os.fsync(fd)
        finally:
            os.close(fd)
        if running is not None and running.next_offset == size:
            actual = running.digest.hexdigest()
        else:
            actual = sha256_file(part)
        if actual != sha256:
            self._discard_files(upload_id)
            raise CorruptUpload.mismatch(sha256, actual)
        several = self._path(upload_id, ".seqs").exists()
        return self._keep(upload_id, part, sha256, framed=False, several=several)

    def _keep(self, upload_id: str, part: Path, sha256: str, framed: bool, several: bool) -> Path:
        """Hand a verified, synced replica to the blob store and mark the upload done."""
        stored = self.blobs.keep(part, sha256, framed)
        if several:  # more than one chunk: remember it is done, for redeliveries
            self._path(upload_id, ".done").write_text(sha256)
            self._path(upload_id, ".seqs").unlink(missing_ok=True)
            fsync_path(self.dir)
        return stored

    def _finish_frames(
        self, upload_id: str, sha256: str, size: int, running: Running | None
    ) -> Path:
        """``finish`` for an upload kept as frames. When its chunks came in order (the
        usual case) they are in order in the file and were hashed as they came; else the
        file is read, put in order and hashed. Content that turned out not to compress
        (only its first chunk did) is stored as its own bytes instead."""
        zpart = self._path(upload_id, ".zpart")
        try:
            if running is not None and running.next_offset == size:
                actual = running.digest.hexdigest()
                fd = os.open(zpart, os.O_RDONLY)
                try:
                    if frames.read_file_header(fd) != (size, running.chunks):
                        raise frames.Damaged("its chunks do not add up to the file")
                finally:
                    os.close(fd)
            else:
                actual = frames.in_order(zpart, size)
        except frames.Damaged as exc:
            actual = f"unreadable ({exc})"
        if actual != sha256:
            self._discard_files(upload_id)
            raise CorruptUpload.mismatch(sha256, actual)
        fd = os.open(zpart, os.O_RDWR)
        try:
            if not frames.compressed_enough(size, os.fstat(fd).st_size):
                part = self._path(upload_id, ".part")
                frames.unframe(fd, part)
                zpart.unlink()
                return self._keep(upload_id, part, sha256, framed=False, several=True)
            os.fsync(fd)
        finally:
            os.close(fd)
        return self._keep(upload_id, zpart, sha256, framed=True, several=True)

    def abandon(self, upload_id: str) -> int:
        """An upload nobody will finish: its partial data and markers go; the bytes freed."""
        freed = 0
        self.take_running(upload_id)
        for suffix in (".part", ".seqs", ".done", ".zpart"):
            path = self._path(upload_id, suffix)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
        return freed

    def have(self, upload_id: str) -> tuple[tuple[int, ...], bool]:
        """The chunks of an upload written here, by its journal on disk (any thread may
        ask: the journal is only appended to), and whether the replica is finished."""
        if self.done_sha256(upload_id) is not None:
            return (), True
        try:
            fd = os.open(self._path(upload_id, ".zpart"), os.O_RDONLY)
        except FileNotFoundError:
            pass
        else:
            try:
                return tuple(sorted(frames.end_of(fd)[0])), False
            finally:
                os.close(fd)
        try:
            lines = self._path(upload_id, ".seqs").read_text().split("\n")
        except FileNotFoundError:
            return (), False
        # The last line may be half written: only whole lines count.
        return tuple(sorted({int(x) for x in lines[:-1] if x.isdigit()})), False

    def sweep(self, older_than: float) -> int:
        """Partial uploads and done markers untouched since ``older_than`` (the upload
        expiry) belong to nobody any more. Returns how many files were removed."""
        removed = 0
        for path in self.dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
        return removed

    def _discard_files(self, upload_id: str) -> None:
        for suffix in (".part", ".seqs", ".zpart", ".zsort"):
            self._path(upload_id, suffix).unlink(missing_ok=True)


class Running:
    """The SHA-256 of an upload's first ``next_offset`` bytes, and their write-back."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.next_offset = 0
        self.chunks = 0  # of an upload kept as frames: written in order, one record each
        self.writeback = Writeback()
