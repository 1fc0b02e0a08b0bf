"""Who may send a worker the chunks of an upload: the one the manager placed it for.

Before the manager answers a client, it tells every worker of the chain, on that worker's
chunks queue (so before any chunk), which upload ids to expect and from whom: the primary
from the client's broker user, each backup from the worker before it. Before a repair it
tells the copy's target to expect the copy from the source. A chunk or pack of any other
upload, or from any other sender, or along any other chain than the one the manager placed
it on, is dead-lettered (``warren.worker.intake``). The sender is the AMQP ``user_id``,
which RabbitMQ checks against the connection's login.

The expectations are kept in memory and appended to ``expected.log``, so a restarted worker
still takes the chunks queued for it. An entry lives as long as its upload may (the
manager abandons uploads older than ``WARREN_UPLOAD_EXPIRY``), or a few minutes after the
replica is finished here (a redelivered last chunk is still taken); the log is compacted
to what is still live when the worker starts and every few thousand uploads.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from worker.disk import write_all

# A finished upload's entry stays this long, for redeliveries of its last messages.
AFTER_FINISH = 600.0
# Marks the chain on a line of the log, "<id> <time> chain=w1,w2 <sender>" (older lines
# have none).
CHAIN = "chain="
# Expired entries are dropped (and the log compacted) every this many new ones.
PRUNE_EVERY = 4096


class Expected:
    def __init__(self, path: Path, keep: float) -> None:
        self.path = path
        self.keep = keep  # seconds an unfinished upload's entry lives
        self._senders: dict[str, tuple[str, float]] = {}  # upload id -> (sender, until)
        self._chains: dict[str, tuple[str, ...]] = {}  # upload id -> its placed chain
        self._added = 0
        self._load()

    def _load(self) -> None:
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for line in self.path.read_text().splitlines():
                parts = line.split(" ", 3)
                chain: tuple[str, ...] = ()
                if len(parts) == 4 and parts[2].startswith(CHAIN):  # else an older line
                    chain = tuple(parts.pop(2)[len(CHAIN) :].split(","))
                else:
                    parts = line.split(" ", 2)
                if len(parts) != 3 or not parts[2]:
                    continue  # a line cut short by a crash
                upload_id, placed, sender = parts
                with contextlib.suppress(ValueError):
                    until = float(placed) + self.keep
                    if until > now:
                        self._senders[upload_id] = (sender, until)
                        if chain:
                            self._chains[upload_id] = chain
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._compact()

    def _compact(self) -> None:
        """The log rewritten with what is still live (a crash meanwhile leaves the old)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            "".join(
                self._line(u, until - self.keep, s, self._chains.get(u, ()))
                for u, (s, until) in self._senders.items()
            )
        )
        os.replace(tmp, self.path)

    @staticmethod
    def _line(upload_id: str, placed: float, sender: str, chain: tuple[str, ...]) -> str:
        placed_on = f"{CHAIN}{','.join(chain)} " if chain else ""
        return f"{upload_id} {placed} {placed_on}{sender}\n"

    def add(self, entries: Iterable[tuple[str, str, tuple[str, ...]]]) -> None:
        """Expect these uploads from these senders (broker user names), along these chains
        (empty: any)."""
        now = time.time()
        lines = []
        for upload_id, sender, chain in entries:
            if " " in upload_id or "\n" in upload_id or "\n" in sender:
                continue  # not an id the manager makes or a name the broker gives
            self._senders[upload_id] = (sender, now + self.keep)
            if chain:  # worker names (warren.codec.check_worker): no space, comma or newline
                self._chains[upload_id] = chain
            else:
                self._chains.pop(upload_id, None)
            lines.append(self._line(upload_id, now, sender, chain))
        if not lines:
            return
        # Not synced: a process crash keeps it; after a crash of the machine, an upload
        # whose entry was lost is refused and fails, and the client may run it again.
        # An append the disk refuses is cut off again (a half line would join the next).
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            end = os.fstat(fd).st_size
            try:
                write_all(fd, memoryview("".join(lines).encode()), end)
            except OSError:
                os.ftruncate(fd, end)
                raise
        finally:
            os.close(fd)
        self._added += len(lines)
        if self._added >= PRUNE_EVERY:  # expired entries leave memory and the log
            self._added = 0
            self._senders = {u: e for u, e in self._senders.items() if e[1] > now}
            self._chains = {u: c for u, c in self._chains.items() if u in self._senders}
            self._compact()

    def sender(self, upload_id: str) -> str | None:
        """Who may send this upload's chunks, if the manager placed it here."""
        entry = self._senders.get(upload_id)
        return entry[0] if entry and entry[1] > time.time() else None

    def chain(self, upload_id: str) -> tuple[str, ...]:
        """The chain the manager placed this upload on (empty: not said, any chain)."""
        return self._chains.get(upload_id, ())

    def finished(self, upload_id: str) -> None:
        """The replica is done here: keep the entry a little longer, for redeliveries."""
        entry = self._senders.get(upload_id)
        if entry is not None:
            self._senders[upload_id] = (entry[0], min(entry[1], time.time() + AFTER_FINISH))
