"""A worker's chunk store on disk.

Layout under the worker's data dir::

    blobs/ab/<sha256>          finished replicas, named by content hash (never by file name)
    blobs/ab/<sha256>.zst      the same for content that came compressed: its zstd frames as
                               they came (worker/frames.py), so a restore compresses nothing
    incoming/<id>.part         an upload being received, written chunk by chunk at its offset
    incoming/<id>.seqs         the chunks already written (one number per line): a journal that
                               lets a restarted worker resume instead of starting over
    incoming/<id>.zpart        an upload whose first chunk came compressed: its frames in the
                               order they came, each a record of its own (no journal needed)
    incoming/<id>.done         the upload finished (its sha256): a redelivered chunk is a no-op
                               (both only for files of more than one chunk)
    incoming/<sha256>.<r>.blob a file of a pack being written (small files come whole in
                               packs); left over from a crash, it is removed at start

Every write is idempotent: a redelivered chunk rewrites the same bytes at the same offset.
A replica becomes visible only by an atomic rename after fsync and SHA-256 verification,
so a partial file is never listed or served.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from warren.chunks import Writeback, sha256_file
from warren.messages import HEX32, HEX64, ZSTD, BlobEntry
from worker import frames
from worker.disk import fsync_path, sync_files, write_all

log = logging.getLogger("warren.worker.store")


class CorruptUpload(Exception):
    """The assembled bytes do not match the SHA-256 the client announced."""

    @classmethod
    def mismatch(cls, expected: str, actual: str) -> CorruptUpload:
        return cls(f"SHA-256 mismatch: expected {expected[:12]}…, got {actual[:12]}…")


@dataclass(frozen=True)
class Usage:
    free_bytes: int
    used_bytes: int
    files: int


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.incoming = root / "incoming"
        self._received: dict[str, set[int]] = {}
        self._digests: dict[str, _Running] = {}  # uploads whose bytes came in order so far
        self._zpart_end: dict[str, int] = {}  # uploads kept as frames: where the next goes
        self._lock = threading.Lock()  # guards the usage counters (finalize runs off-thread)
        self.damaged = 0  # copies found damaged and quarantined (counted at open)
        self._used = 0
        self._files = 0
        self._folders: set[str] = set()  # folders of blobs/ known to exist

    def open(self) -> None:
        """Create the folders and count what is stored (a scan, once, at start)."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        for leftover in self.incoming.glob("*.blob"):  # a pack cut short: never acknowledged
            leftover.unlink(missing_ok=True)
        used = files = 0
        for entry in self.inventory():
            path = self.find(entry.sha256)
            used += path.stat().st_size if path is not None else 0  # the disk's bytes
            files += 1
        self._used, self._files = used, files
        quarantined = self.root / "quarantine"
        self.damaged = len(list(quarantined.iterdir())) if quarantined.is_dir() else 0

    # -- receiving -------------------------------------------------------------------------

    def _path(self, upload_id: str, suffix: str) -> Path:
        if not HEX32.match(upload_id):  # the id becomes a file name: accept nothing else
            raise ValueError(f"bad upload id {upload_id!r}")
        return self.incoming / f"{upload_id}{suffix}"

    def blob_path(self, sha256: str) -> Path:
        if not HEX64.match(sha256):
            raise ValueError(f"bad sha256 {sha256!r}")
        return self.blobs / sha256[:2] / sha256

    def find(self, sha256: str) -> Path | None:
        """The stored blob of this content, as its own bytes or as frames; None if none."""
        path = self.blob_path(sha256)
        if path.exists():
            return path
        framed = path.with_name(sha256 + frames.SUFFIX)
        return framed if framed.exists() else None

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
    ) -> _Running | None:
        """Hash the bytes as they are written, while chunks come in order (they do, except after
        a restart or a redelivery), so finishing need not read the file back."""
        if fresh and offset == 0:
            self._digests[upload_id] = _Running()
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

    def finalize(self, upload_id: str, sha256: str, size: int) -> Path:
        """Finish an upload whose chunks are all in, on this one thread."""
        return self.finish(upload_id, sha256, size, self.take_running(upload_id))

    def take_running(self, upload_id: str) -> _Running | None:
        """The receiving side's bookkeeping for an upload about to be finished: forgotten
        here, on the thread that receives chunks (the journal on disk stays the truth), and
        its running hash handed to ``finish``."""
        self._received.pop(upload_id, None)
        self._zpart_end.pop(upload_id, None)
        return self._digests.pop(upload_id, None)

    def finish(self, upload_id: str, sha256: str, size: int, running: _Running | None) -> Path:
        """fsync, verify the whole-file SHA-256, and move the replica into the store.

        The hash is the one computed as the chunks were written when they came in order,
        else the file is read back. Touches only the disk and the locked usage counters, so
        it runs on a pool thread: that read of a large file takes a while.
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
        return self._keep(upload_id, part, self.blob_path(sha256), sha256, several)

    def _keep(self, upload_id: str, part: Path, target: Path, sha256: str, several: bool) -> Path:
        """Move a verified, synced replica into the store (unless this content is stored
        already, in either form) and mark the upload done."""
        target.parent.mkdir(exist_ok=True)
        existing = self.find(sha256)
        if existing is not None and existing != target:
            part.unlink()
        else:
            size = os.stat(part).st_size
            os.replace(part, target)
            if existing is None:  # counted as soon as it is there, whatever fails next
                with self._lock:
                    self._used += size
                    self._files += 1
            fsync_path(target.parent)
        if several:  # more than one chunk: remember it is done, for redeliveries
            self._path(upload_id, ".done").write_text(sha256)
            self._path(upload_id, ".seqs").unlink(missing_ok=True)
            fsync_path(self.incoming)
        return existing or target

    def _finish_frames(
        self, upload_id: str, sha256: str, size: int, running: _Running | None
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
                return self._keep(upload_id, part, self.blob_path(sha256), sha256, several=True)
            os.fsync(fd)
        finally:
            os.close(fd)
        framed = self.blob_path(sha256).with_name(sha256 + frames.SUFFIX)
        return self._keep(upload_id, zpart, framed, sha256, several=True)

    def put_blobs(self, blobs: list[tuple[str, memoryview]]) -> None:
        """Store small files whole (a pack): each verified, synced and renamed into place.

        The bytes are checked against their hash before anything is written. Files are
        written under temporary names, synced all at once, renamed, and the renames synced:
        two file-system syncs for the whole pack instead of two fsyncs per file. Storing
        again what is already stored is a no-op, so a redelivered pack is harmless.
        """
        for sha256, data in blobs:
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise CorruptUpload.mismatch(sha256, actual)
        # One random part for the pack's temporary names (each also has its file's hash).
        tag = uuid.uuid4().hex[:8]
        todo: dict[str, tuple[str, str, memoryview]] = {}  # sha256 -> (target, tmp, bytes)
        for sha256, data in blobs:
            if sha256 in todo:
                continue
            target = str(self.blob_path(sha256))
            if self.find(sha256) is None:
                todo[sha256] = (target, os.path.join(self.incoming, f"{sha256}.{tag}.blob"), data)
        if not todo:
            return
        try:
            for _, tmp, data in todo.values():
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    write_all(fd, data, 0)
                finally:
                    os.close(fd)
            sync_files([Path(tmp) for _, tmp, _ in todo.values()])
            folders = sorted({os.path.dirname(target) for target, _, _ in todo.values()})
            for folder in folders:
                self._folder(folder)  # a new folder takes space too
            for target, tmp, data in todo.values():
                self._rename_blob(tmp, target, len(data))
            sync_files([Path(f) for f in folders])
        except OSError:
            for _, tmp, _ in todo.values():  # a full disk, say: leave nothing half-written
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise

    def _rename_blob(self, tmp: str, target: str, size: int) -> None:
        """Move a synced, verified file of a pack into place, counted once it is there."""
        with self._lock:
            fresh = not os.path.exists(target)
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # its folder went since it was made here
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(tmp, target)
            if fresh:
                self._used += size
                self._files += 1

    def _folder(self, path: str) -> None:
        """Make a folder of ``blobs/`` once (a pack's files fall into many of the 256)."""
        if path not in self._folders:
            os.makedirs(path, exist_ok=True)
            self._folders.add(path)

    def quarantine(self, sha256: str) -> None:
        """A damaged copy leaves the store (never served, never reported as held again)
        for ``quarantine/``, where an operator can look at it."""
        path = self.find(sha256)
        if path is None:
            return
        target = self.root / "quarantine" / f"{path.name}.{int(time.time())}"
        target.parent.mkdir(exist_ok=True)
        try:
            size = path.stat().st_size
            os.replace(path, target)
        except FileNotFoundError:
            return
        with self._lock:
            self._used -= size
            self._files -= 1
            self.damaged += 1

    def check(self, sha256: str, size: int | None = None) -> str | None:
        """Re-read a stored blob now: None if it is good, else why not."""
        path = self.find(sha256)
        if path is None:
            return "this worker has no copy"
        digest = hashlib.sha256()
        actual_size = 0
        try:
            for data in frames.content(path):
                digest.update(data)
                actual_size += len(data)
        except FileNotFoundError:
            return "this worker has no copy"
        except frames.Damaged as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read it: {exc.strerror or exc}"
        actual = digest.hexdigest()
        if size is not None and actual_size != size:
            return f"size {actual_size}, expected {size}"
        if actual != sha256:
            return f"SHA-256 mismatch: got {actual[:12]}…"
        return None

    def delete_blob(self, sha256: str) -> int:
        """Remove a stored blob (garbage collection); return the bytes given back."""
        path = self.find(sha256)
        if path is None:
            return 0
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        fsync_path(path.parent)
        with self._lock:
            self._used -= size
            self._files -= 1
        return size

    def discard(self, upload_id: str) -> None:
        """Forget a partial upload (bad hash, or abandoned)."""
        self.take_running(upload_id)
        self._discard_files(upload_id)

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
        """At start: partial uploads and done markers untouched since ``older_than`` (the
        upload expiry) belong to nobody any more. Returns how many files were removed."""
        removed = 0
        for path in self.incoming.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < older_than:
                    path.unlink()
                    removed += 1
        return removed

    def _discard_files(self, upload_id: str) -> None:
        for suffix in (".part", ".seqs", ".zpart", ".zsort"):
            self._path(upload_id, suffix).unlink(missing_ok=True)

    # -- what is stored --------------------------------------------------------------------

    def inventory(self) -> Iterator[BlobEntry]:
        """Every blob held and the size of its file (a compressed one's header says; one
        whose header does not read is reported as 0 bytes, for scrub to find damaged)."""
        for sub in sorted(self.blobs.iterdir()) if self.blobs.is_dir() else []:
            for blob in sorted(sub.iterdir()):
                if HEX64.match(blob.name):
                    yield BlobEntry(sha256=blob.name, size=blob.stat().st_size)
                elif blob.name.endswith(frames.SUFFIX) and HEX64.match(blob.stem):
                    yield BlobEntry(sha256=blob.stem, size=frames.file_size(blob))

    def usage(self) -> Usage:
        free = shutil.disk_usage(self.root).free
        with self._lock:
            return Usage(free_bytes=free, used_bytes=self._used, files=self._files)


class _Running:
    """The SHA-256 of an upload's first ``next_offset`` bytes, and their write-back."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.next_offset = 0
        self.chunks = 0  # of an upload kept as frames: written in order, one record each
        self.writeback = Writeback()
