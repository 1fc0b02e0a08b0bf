"""What an upload command moves: a file (``Upload``) or a pack of small files (``Pack``),
each at a named ``Step`` (the diagram is in ``client.upload``), with what has arrived for it:
the manager's answer, each replica's word, the catalog's record. ``Batch`` moves them on."""

from __future__ import annotations

import enum
import threading
from pathlib import Path

from client.localfiles import (
    file_mode_and_mtime,
)
from client.outcomes import Progress, UploadResult, decode_answer
from warren import messages as m
from warren.errors import INTEGRITY, IntegrityError, Unavailable, WarrenError, from_wire
from warren.transport import Delivery


class Step(enum.Enum):
    HASHING = "hashing"  # on the hashing thread: size and SHA-256 not known yet
    ASKING = "asking"  # placement requested: waiting for the manager's answer
    RESUMING = "resuming"  # an unfinished upload goes on: waiting for what the primary has
    STORING = "storing"  # bytes sent: waiting for every replica's confirmation
    RECORDING = "recording"  # every replica confirmed: waiting for the catalog's record
    DONE = "done"  # its outcome is known


class Upload:
    """One file on its way. Alone it has its own steps; in a pack, the pack's."""

    def __init__(self, path: Path, name: str, progress: Progress) -> None:
        self.path = path
        self.name = name
        self.progress = progress
        self.step = Step.HASHING
        self.deadline = 0.0  # the current step's
        self.size = 0
        self.sha256 = ""
        self.mode, self.mtime = file_mode_and_mtime(path)  # restored with the file
        self.route = ""  # the correlation id its messages arrive under
        self.upload_id = ""
        self.data = b""  # a small file's bytes, until its pack is sent
        self.hashed = threading.Event()  # size and sha256 are known, or error says why not
        self.timed_out = False
        self.sent = 0  # bytes of the file this command published (not those already there)
        # What arrived: the manager's answer and the replicas' word.
        self.accepted: m.UploadAccepted | None = None
        self.error: WarrenError | None = None
        self.confirmed: dict[str, int] = {}  # worker -> hop
        self.failures: list[str] = []
        self.failure_codes: set[str] = set()  # wire codes of the failures
        self.recorded = False  # the manager has it in the catalog
        self.have: m.UploadHave | None = None  # resuming: the chunks the primary has
        # Asking again after Busy answers: how often so far, and when next (0: not waiting).
        self.tries = 0
        self.again_at = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None or bool(self.failures)

    @property
    def complete(self) -> bool:
        return self.is_complete()

    def is_complete(self) -> bool:
        """Every worker of the chain confirmed (or, for copies, the manager recorded it).
        A plain method under the property, so that ``make mutants`` can mutate it: mutmut
        leaves decorated functions alone."""
        if self.accepted is None:
            return False
        if self.accepted.copies:  # the manager says when the last copy is on disk
            return self.recorded
        return len(self.confirmed) == len(self.accepted.chain)

    def failed_on(self, msg: m.ReplicaFailed) -> None:
        self.failures.append(f"{msg.worker}: {msg.reason}")
        self.failure_codes.add(msg.code)

    def time_out(self) -> None:
        """Its replicas did not all confirm in time: those that did not are named."""
        self.timed_out = True

    def resumed(self) -> bool:
        return self.accepted is not None and self.accepted.resumed

    def already_stored(self) -> bool:
        """The manager found the content on workers and recorded it: every worker of the
        chain counts as confirmed, and no byte is sent. (When they are fewer than asked,
        it is ``copying``: they copy it on, and the record comes when they are done.)"""
        if self.accepted is None or not self.accepted.stored:
            return False
        for hop, worker in enumerate(self.accepted.chain):
            if worker not in self.confirmed:
                self.confirmed[worker] = hop
                self.progress.replica(worker, hop)
        self.recorded = not self.accepted.copies
        return True

    def copying(self) -> bool:
        return self.accepted is not None and self.accepted.stored and self.accepted.copies > 0

    def on_placement(self, d: Delivery) -> None:
        d.ack()
        if d.type == m.UploadHave.TYPE:
            self.have = m.UploadHave.decode(d.body)
            return
        answer = decode_answer(d)
        if isinstance(answer, m.UploadAccepted):
            self.accepted = answer
        elif isinstance(answer, m.ErrorReply):
            self.error = from_wire(answer.code, answer.message)

    def on_replica(self, d: Delivery) -> None:
        d.ack()
        msg = m.decode(d.type, d.body)
        if isinstance(msg, m.ReplicaStored) and msg.worker not in self.confirmed:
            self.confirmed[msg.worker] = msg.hop
            self.progress.replica(msg.worker, msg.hop)
        elif isinstance(msg, m.ReplicaFailed):
            self.failed_on(msg)
        elif isinstance(msg, m.UploadRecorded):
            # Recorded means stored on the whole chain, whoever sent the last chunk (after
            # a resume, the confirmations may have gone to the client that was cut off),
            # or every copy of deduplicated content on disk.
            self.recorded = True
            for hop, worker in enumerate(self.accepted.chain if self.accepted else ()):
                if worker not in self.confirmed:
                    self.confirmed[worker] = hop
                    self.progress.replica(worker, hop)

    def outcomes(self) -> list[tuple[str, UploadResult | WarrenError]]:
        return [(self.name, self.outcome())]

    def outcome(self) -> UploadResult | WarrenError:
        if self.error is not None:
            return self.error
        if self.failures:
            # Wrong bytes are an integrity error (exit 5); a worker that could not forward or
            # write them, during a leader election say, makes the cluster unavailable (4).
            sentence = f"storing {self.name!r} failed on {'; '.join(self.failures)}."
            if INTEGRITY in self.failure_codes:
                return IntegrityError(sentence)
            return from_wire(sorted(self.failure_codes)[0], sentence)
        assert self.accepted is not None
        if self.timed_out and not self.complete and self.accepted.copies:
            return Unavailable(
                f"{self.name!r} is stored on {', '.join(self.confirmed)} but the copies to "
                f"{self.accepted.copies} more workers did not finish in time; the manager "
                "goes on with them (see status)."
            )
        if self.timed_out and not self.complete:
            missing = [w for w in self.accepted.chain if w not in self.confirmed]
            return Unavailable(f"{', '.join(missing)} did not confirm {self.name!r} in time.")
        chain = self.accepted.chain
        if self.accepted.copies:  # the holders, then the workers it was copied to
            chain = tuple(sorted(self.confirmed, key=lambda w: self.confirmed[w]))
        return UploadResult(
            self.name,
            self.size,
            self.sha256,
            chain,
            dict(self.confirmed),
            recorded=self.recorded,
            deduplicated=self.accepted.stored,
            sent=self.sent,
        )


class Pack:
    """Small files on their way together: one request, one message, one confirmation per
    worker. Each member is an Upload that keeps its own confirmations and outcome."""

    def __init__(self) -> None:
        self.members: list[Upload] = []
        self.step = Step.ASKING
        self.deadline = 0.0
        self.size = 0
        self.route = ""
        self.accepted: m.PackAccepted | None = None
        self.error: WarrenError | None = None
        self.tries = 0  # as an Upload's
        self.again_at = 0.0

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def complete(self) -> bool:
        return self.is_complete()

    def is_complete(self) -> bool:
        """Every member is stored on the whole chain, or has failed. (A plain method under
        the property, as Upload's.)"""
        return self.accepted is not None and all(u.failures or u.complete for u in self.members)

    def take_stored(self) -> list[Upload]:
        """The manager's answer is in: the members it found already stored are done (they
        count as confirmed and recorded); the others, still to be sent, are returned."""
        assert self.accepted is not None
        stored = {f.upload_id: f.chain for f in self.accepted.stored}
        to_send = []
        for member, upload_id in zip(self.members, self.accepted.upload_ids, strict=True):
            member.upload_id = upload_id
            if upload_id in stored:
                member.accepted = m.UploadAccepted(upload_id, stored[upload_id], 0, stored=True)
                member.already_stored()
            else:
                to_send.append(member)
        return to_send

    @property
    def recorded(self) -> bool:
        return all(u.failures or u.recorded for u in self.members)

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
        by_id = {u.upload_id: u for u in self.members}
        if isinstance(msg, m.PackStored):
            for f in msg.files:
                member = by_id.get(f.upload_id)
                if member is not None and msg.worker not in member.confirmed:
                    member.confirmed[msg.worker] = msg.hop
                    member.progress.replica(msg.worker, msg.hop)
        elif isinstance(msg, m.ReplicaFailed) and msg.upload_id in by_id:
            by_id[msg.upload_id].failed_on(msg)
        elif isinstance(msg, m.PackRecorded):
            for upload_id in msg.upload_ids:
                if upload_id in by_id:
                    by_id[upload_id].recorded = True

    def time_out(self) -> None:
        for u in self.members:
            u.time_out()

    def outcomes(self) -> list[tuple[str, UploadResult | WarrenError]]:
        if self.error is not None:
            return [(u.name, self.error) for u in self.members]
        return [(u.name, u.outcome()) for u in self.members]


Unit = Upload | Pack
