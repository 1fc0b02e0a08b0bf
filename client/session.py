"""The client's side of the protocol, with no terminal output: the command line, the
menu (through ``client/actions.py``) and tests use it.

A ``Session`` is a ``Channel`` (``client/channel.py``: the connection, the reply queue and
its routes, requests and their answers) with the user's operations on top: list, versions,
delete, verify, prune, status, upload (``client/upload.py``) and download
(``client/restore.py``). Local files and the sentences about them are in
``client/localfiles.py``.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from client.channel import Channel
from client.fetch import ChunkFetcher
from client.outcomes import CopyCheck
from client.outcomes import DownloadResult as DownloadResult
from client.outcomes import Progress as Progress
from client.outcomes import UploadResult as UploadResult
from client.restore import Restorer
from client.upload import Batch
from warren import messages as m
from warren.errors import IntegrityError, WarrenError
from warren.ownerkey import OwnerKeys
from warren.transport import Delivery


@dataclass
class ReadCheck:
    """One file read back by ``verify --read-data``: ``chunks`` of it fetched and opened;
    ``ok`` unless no good copy of one was found; ``bad`` the copies that failed their check
    on the way (another holder's was read: repair replaces them)."""

    name: str
    version: int
    chunks: int
    ok: bool
    reason: str = ""
    bad: list[str] = field(default_factory=list)
    damaged: bool = True  # when not ok: no good copy (else: no holder could be reached)


def _nowhere(_fd: int, _data: bytes, _offset: int) -> None:
    """Where ``verify --read-data`` writes what it reads."""


class Session(Channel):
    """A channel to the cluster and what a user does over it."""

    _keys: OwnerKeys | None = None

    def owner_keys(self) -> OwnerKeys:
        """The owner's keys, opened with its password once a session (``client.owner``):
        a wrong password, or no key yet, is exit 2 before any content is sent or written."""
        if self._keys is None:
            from client.owner import unlock  # not at the top: client.owner uses Session

            self._keys = unlock(self)
        return self._keys

    def files(self, prefix: str = "") -> list[m.FileEntry]:
        """The latest version of each of this user's files (under ``prefix``)."""
        return [f for page in self.pages(prefix) for f in page]

    def pages(self, prefix: str = "") -> Iterator[list[m.FileEntry]]:
        """``files``, a page at a time as the manager sends them (in name order)."""
        after = ""
        while True:
            req = m.ListRequest(prefix=prefix, after=after)
            reply = self.request(req, m.ListReply)
            yield list(reply.files)
            if not reply.more or not reply.files:
                return
            after = reply.files[-1].name

    def versions(self, name: str) -> list[m.FileEntry]:
        """Every kept version of ``name``, oldest first (NotFound for an unknown name)."""
        return list(self.request(m.VersionsRequest(name=name), m.VersionsReply).versions)

    def delete(self, name: str, version: int = 0) -> tuple[int, ...]:
        """Delete one version of ``name`` (or every version); the versions removed."""
        req = m.DeleteRequest(name=name, version=version)
        return self.request(req, m.DeleteReply).versions

    def verify(self, names: tuple[str, ...] = ()) -> tuple[list[CopyCheck], list[str]]:
        """Every live holder of these files (or of all of yours) re-hashes its copy now:
        one check per copy, and the names with no live copy at all. A damaged copy is
        quarantined by its worker and the manager has a good one made."""
        cid = uuid.uuid4().hex
        results: dict[tuple[str, str], m.VerifyResult] = {}
        checkers: set[str] = set()  # the workers of the copies: only they answer

        def on_result(d: Delivery) -> None:
            d.ack()
            if d.type != m.VerifyResult.TYPE or not self.from_worker(d, checkers):
                return
            r = m.VerifyResult.decode(d.body)
            if r.worker in checkers and (r.worker == d.user_id or self.as_manager(d)):
                results[(r.worker, r.sha256)] = r

        def on_accepted(acc: m.VerifyAccepted) -> None:
            checkers.update(c.worker for c in acc.copies)

        try:
            req = m.VerifyRequest(names=names)
            acc = self.request(req, m.VerifyAccepted, on_result, cid, on_answer=on_accepted)
            want = {(c.worker, c.sha256) for c in acc.copies}
            self.wait(
                lambda: want <= set(results),
                self.settings.transfer_timeout,
                f"not every worker answered within {self.settings.transfer_timeout:g} s.",
            )
        finally:
            self.unroute(cid)
        checks = []
        for c in acc.copies:
            r = results[(c.worker, c.sha256)]
            checks.append(CopyCheck(c.name, c.version, c.worker, r.ok, r.reason))
        return checks, list(acc.missing)

    def prune(self, keep_last: int, prefix: str = "", dry_run: bool = False) -> list[m.FileEntry]:
        """Keep the ``keep_last`` newest versions of each file; the versions removed (or,
        in a dry run, that would be)."""
        req = m.PruneRequest(keep_last=keep_last, prefix=prefix, dry_run=dry_run)
        return list(self.request(req, m.PruneReply).removed)

    def status(self) -> m.StatusReply:
        return self.request(m.StatusRequest(), m.StatusReply)

    # -- transfers -------------------------------------------------------------------------

    def upload(
        self, path: Path, name: str, replicas: int, progress: Progress | None = None
    ) -> UploadResult:
        """Store one file on ``replicas`` workers; return once every replica is confirmed."""
        outcome: list[UploadResult | WarrenError] = []
        self.upload_many(
            [(path, name)],
            replicas,
            lambda _n: progress or Progress(),
            lambda _n, r: outcome.append(r),
        )
        if isinstance(outcome[0], WarrenError):
            raise outcome[0]
        return outcome[0]

    def upload_many(
        self,
        items: list[tuple[Path, str]],
        replicas: int,
        progress_for: Callable[[str], Progress],
        done: Callable[[str, UploadResult | WarrenError], None],
        commit: bool = True,
    ) -> None:
        """Store many files, pipelined (see ``client.upload.Batch``); ``done(name, result
        or error)`` for each as it finishes. A broker failure ends the whole batch.
        ``commit``: each becomes a version of its name (without: only its chunks are
        stored, pinned for a while, and the result lists them: a snapshot's files)."""
        keys = self.owner_keys()  # a wrong password: exit 2 before anything is sent
        Batch(self, keys, replicas, progress_for, done, commit).run(items)

    def read_data(self, names: tuple[str, ...], percent: float = 100.0) -> list[ReadCheck]:
        """Each file (the latest version of those named, or of all) read back as a restore
        reads it, nothing written: ``percent`` of its chunks picked at random (restic's
        ``check --read-data-subset``), every one fetched, checked against its SHA-256 and
        opened with the owner's key; all of them: the whole file's SHA-256 too. Only the
        owner can check this much: a worker checks its blobs' hashes, never what they hold."""
        keys = self.owner_keys()
        wanted = names or tuple(f.name for page in self.pages() for f in page)
        checks = []
        for name in wanted:  # the latest version: its answer says which, and its chunks
            acc = self.request(
                m.DownloadRequest(name=name, client=self.client_name), m.DownloadAccepted
            )
            picked = tuple(
                c for c in acc.chunks if percent >= 100 or random.random() * 100 < percent
            )
            fetcher = ChunkFetcher(self, keys, -1, acc.name, picked, Progress(), _nowhere)
            try:
                sha = fetcher.run()
            except IntegrityError as exc:
                checks.append(
                    ReadCheck(acc.name, acc.version, len(picked), False, str(exc), fetcher.bad)
                )
                continue
            except WarrenError as exc:  # unavailable: no verdict on the data
                checks.append(ReadCheck(acc.name, acc.version, 0, False, str(exc), damaged=False))
                continue
            whole = len(picked) == len(acc.chunks)
            ok = not whole or sha == acc.sha256
            reason = "" if ok else "the file as read back fails its SHA-256 check"
            checks.append(ReadCheck(acc.name, acc.version, len(picked), ok, reason, fetcher.bad))
        return checks

    def download(
        self,
        name: str,
        dest: Path,
        progress: Progress | None = None,
        overwrite: bool = False,
        version: int = 0,
        under: Path | None = None,
        keep_setid: bool = False,
    ) -> DownloadResult:
        """Restore ``name`` (the latest version unless one is named) to ``dest``, verified;
        another replica is tried on failure. ``under`` and ``keep_setid``: see
        ``client.restore.Restorer.download``."""
        return Restorer(self, self.owner_keys()).download(
            name, dest, progress, overwrite, version, under=under, keep_setid=keep_setid
        )
