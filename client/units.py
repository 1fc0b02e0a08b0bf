"""What an upload command moves, each at a named ``Step`` (the diagram is in
``client.upload``): files (``FileJob``), cut into sealed chunks (``Chunk``), which travel in
packs (``ChunkPack``), and the commits that record finished files (``Commit``). ``Batch``
moves them on; messages only record here what arrived."""

from __future__ import annotations

import enum
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from client.localfiles import file_mode_and_mtime
from client.outcomes import Progress, UploadResult, decode_answer
from warren import messages as m
from warren.errors import INTEGRITY, IntegrityError, Unavailable, WarrenError, from_wire
from warren.transport import Delivery


class Step(enum.Enum):
    CUTTING = "cutting"  # a file: its chunks are being read, cut and sealed
    WAITING = "waiting"  # a file: every chunk cut, some not stored yet
    ASKING = "asking"  # a pack or commit: sent to the manager, waiting for its answer
    STORING = "storing"  # a pack: bytes sent, waiting for every replica's confirmation
    RECORDING = "recording"  # a pack: every replica confirmed, waiting for the catalog
    DONE = "done"  # its outcome is known


class ChunkState(enum.Enum):
    PENDING = "pending"  # in a pack on its way
    STORED = "stored"  # on every worker of its chain, and in the catalog
    FAILED = "failed"


@dataclass(eq=False)
class Chunk:
    """One sealed chunk of this command (several files may share it: sent once)."""

    digest: str
    size: int  # sealed
    state: ChunkState = ChunkState.PENDING
    chain: tuple[str, ...] = ()
    error: WarrenError | None = None
    files: list[FileJob] = field(default_factory=list)  # waiting for it


class FileJob:
    """One file on its way: cut into chunks on the cutting thread, stored chunk by chunk,
    then committed as a new version of its name."""

    def __init__(self, path: Path, name: str, progress: Progress) -> None:
        self.path = path
        self.name = name
        self.progress = progress
        self.step = Step.CUTTING
        self.mode, self.mtime = file_mode_and_mtime(path)  # restored with the file
        self.size = 0
        self.digest = hashlib.sha256()  # of the plaintext, as it was cut (cutting thread)
        self.sha256 = ""
        self.chunks: list[m.ChunkRef] = []
        self.waiting: set[str] = set()  # chunks not stored yet
        self.chain: tuple[str, ...] = ()  # its first chunk's workers
        self.sent = 0  # sealed bytes this command published for it
        self.error: WarrenError | None = None
        self.version = 0
        self.started = False
        self.taken = False  # the batch has taken its first cut item

    def add(self, ref: m.ChunkRef, chunk: Chunk) -> None:
        if not self.started:
            try:
                self.progress.started(self.path.stat().st_size)
            except OSError:
                self.progress.started(0)
            self.started = True
        self.chunks.append(ref)
        if chunk.state is ChunkState.FAILED:
            self.fail(chunk.error or Unavailable(f"storing {self.name!r} failed."))
        elif chunk.state is ChunkState.PENDING:
            self.waiting.add(ref.sha256)
            chunk.files.append(self)
        else:
            self.chunk_stored(chunk)

    def chunk_stored(self, chunk: Chunk) -> None:
        self.waiting.discard(chunk.digest)
        if not self.chain and self.chunks and self.chunks[0].sha256 == chunk.digest:
            self.chain = chunk.chain
        for ref in self.chunks:
            if ref.sha256 == chunk.digest:
                self.progress.transferred(ref.plain)

    def fail(self, error: WarrenError) -> None:
        if self.error is None:
            self.error = error

    @property
    def ready(self) -> bool:
        """Every chunk cut and stored: the file can be committed."""
        return self.step is Step.WAITING and not self.waiting and self.error is None

    def outcome(self) -> UploadResult | WarrenError:
        if self.error is not None:
            return self.error
        for hop, worker in enumerate(self.chain):
            self.progress.replica(worker, hop)
        return UploadResult(
            self.name,
            self.size,
            self.sha256,
            self.chain,
            {w: hop for hop, w in enumerate(self.chain)},
            recorded=True,
            deduplicated=self.sent == 0,
            sent=self.sent,
            chunks=tuple(self.chunks),
            version=self.version,
        )


class ChunkPack:
    """Sealed chunks on their way together: one request, one message, one confirmation per
    worker of its chain."""

    def __init__(self) -> None:
        self.members: list[tuple[Chunk, bytes]] = []  # each chunk with its bytes, until sent
        self.opened = time.monotonic()  # when its first chunk went in
        self.step = Step.ASKING
        self.deadline = 0.0
        self.size = 0
        self.route = ""
        self.accepted: m.PackAccepted | None = None
        self.error: WarrenError | None = None
        self.tries = 0  # Busy answers so far
        self.again_at = 0.0
        self.by_id: dict[str, Chunk] = {}  # upload id -> chunk, once placed
        self.confirmed: dict[str, set[str]] = {}  # upload id -> workers that stored it
        self.recorded: set[str] = set()  # upload ids the catalog has
        self.failures: dict[str, tuple[str, str]] = {}  # upload id -> (reason, wire code)

    def take_stored(self) -> list[tuple[Chunk, bytes]]:
        """The manager's answer is in: the chunks it found stored are done; the others,
        still to be sent, are returned."""
        assert self.accepted is not None
        stored = {f.upload_id: f.chain for f in self.accepted.stored}
        to_send = []
        for (chunk, data), upload_id in zip(self.members, self.accepted.upload_ids, strict=True):
            if upload_id in stored:
                chunk.chain = stored[upload_id]
                chunk_stored(chunk)
            else:
                chunk.chain = self.accepted.chain
                self.by_id[upload_id] = chunk
                to_send.append((chunk, data))
        self.members = []
        return to_send

    @property
    def complete(self) -> bool:
        return self.is_complete()

    def is_complete(self) -> bool:
        """Every chunk sent is on every worker of the chain (or failed). A plain method
        under the property, so that ``make mutants`` can mutate it: mutmut leaves
        decorated functions alone."""
        return self.accepted is not None and all(
            u in self.failures or self._on_chain(u, c) for u, c in self.by_id.items()
        )

    def _on_chain(self, upload_id: str, chunk: Chunk) -> bool:
        """Every worker of the chunk's chain confirmed it (others' word counts for none)."""
        return set(chunk.chain) <= self.confirmed.get(upload_id, set())

    @property
    def all_recorded(self) -> bool:
        return all(u in self.failures or u in self.recorded for u in self.by_id)

    def on_placement(self, d: Delivery) -> None:
        d.ack()
        if self.accepted is not None or self.error is not None:
            return
        answer = decode_answer(d)
        if isinstance(answer, m.PackAccepted) and len(answer.upload_ids) == len(self.members):
            self.accepted = answer
        elif isinstance(answer, m.ErrorReply):
            self.error = from_wire(answer.code, answer.message)
        else:
            self.error = Unavailable("the manager answered a pack with something else.")

    def on_replica(self, d: Delivery) -> None:
        d.ack()
        msg = m.decode(d.type, d.body)
        if isinstance(msg, m.PackStored):
            for f in msg.files:
                if f.upload_id in self.by_id:
                    self.confirmed.setdefault(f.upload_id, set()).add(msg.worker)
        elif isinstance(msg, m.ReplicaStored) and msg.upload_id in self.by_id:
            self.confirmed.setdefault(msg.upload_id, set()).add(msg.worker)
        elif isinstance(msg, m.ReplicaFailed) and msg.upload_id in self.by_id:
            self.failures[msg.upload_id] = (f"{msg.worker}: {msg.reason}", msg.code)
        elif isinstance(msg, m.PackRecorded):
            self.recorded.update(u for u in msg.upload_ids if u in self.by_id)

    def settle(self, timed_out: bool = False) -> None:
        """Each chunk's outcome, told to the files waiting for it."""
        for upload_id, chunk in self.by_id.items():
            if chunk.state is not ChunkState.PENDING:
                continue
            if upload_id in self.failures:
                reason, code = self.failures[upload_id]
                sentence = f"storing a chunk failed on {reason}."
                error: WarrenError = (
                    IntegrityError(sentence) if code == INTEGRITY else from_wire(code, sentence)
                )
                chunk_failed(chunk, error)
            elif self._on_chain(upload_id, chunk):
                chunk_stored(chunk)
            elif timed_out:
                missing = [w for w in chunk.chain if w not in self.confirmed.get(upload_id, ())]
                late = ", ".join(missing)
                for job in chunk.files:  # each file's sentence names it (the first error wins)
                    job.fail(Unavailable(f"{late} did not confirm {job.name!r} in time."))
                chunk_failed(chunk, Unavailable(f"{late} did not confirm in time."))

    def fail_all(self, error: WarrenError) -> None:
        for chunk, _ in self.members:
            chunk_failed(chunk, error)
        for chunk in self.by_id.values():
            if chunk.state is ChunkState.PENDING:
                chunk_failed(chunk, error)


def chunk_stored(chunk: Chunk) -> None:
    chunk.state = ChunkState.STORED
    for job in chunk.files:
        job.chunk_stored(chunk)
    chunk.files = []


def chunk_failed(chunk: Chunk, error: WarrenError) -> None:
    chunk.state = ChunkState.FAILED
    chunk.error = error
    for job in chunk.files:
        job.fail(error)
    chunk.files = []


class Commit:
    """Finished files, recorded together as new versions of their names."""

    def __init__(self, files: list[FileJob]) -> None:
        self.files = files
        self.step = Step.ASKING
        self.deadline = 0.0
        self.route = ""
        self.reply: m.CommitReply | None = None
        self.error: WarrenError | None = None
        self.tries = 0
        self.again_at = 0.0

    def on_answer(self, d: Delivery) -> None:
        d.ack()
        if self.reply is not None or self.error is not None:
            return
        answer = decode_answer(d)
        if isinstance(answer, m.CommitReply) and len(answer.versions) == len(self.files):
            self.reply = answer
        elif isinstance(answer, m.ErrorReply):
            self.error = from_wire(answer.code, answer.message)
        else:
            self.error = Unavailable("the manager answered a commit with something else.")


Unit = ChunkPack | Commit
