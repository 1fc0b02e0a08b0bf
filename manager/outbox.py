"""Everything the manager sends, in one place: commands to a worker's two queues, answers
and notices to a client's reply queue, and the sealed records workers keep.

A queue is declared before the manager publishes to it (idempotent: a worker that is down
finds its commands in its durable queue when it is back). The connection is the one of the
manager's current term (``attach``); everything here runs on the manager's one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from manager.records import RecordSeal
from warren import messages as m
from warren.topology import worker_control, worker_orders, worker_topology
from warren.transport import Transport


class Outbox:
    def __init__(self, seal: RecordSeal) -> None:
        self.seal = seal
        self._conn: Transport | None = None

    def attach(self, conn: Transport) -> None:
        """The connection of a new term: what is sent from now on goes there."""
        self._conn = conn

    @property
    def conn(self) -> Transport:
        assert self._conn is not None, "no connection: the manager is not active"
        return self._conn

    def to_worker(self, worker: str, msg: m.Message) -> None:
        """On the worker's chunks queue: behind the chunks already queued there (records,
        expectations, discards and deletions that must not overtake them). By the orders
        key, which only the manager may publish with: how the worker knows them for its."""
        self._publish(worker, worker_orders(worker), msg)

    def command(self, worker: str, msg: m.Message) -> None:
        """On the worker's control queue: restores, copies, deletes, verifies, reports."""
        self._publish(worker, worker_control(worker), msg)

    def to_client(self, queue: str, msg: m.Message, cid: str | None) -> None:
        """A message to a client's reply queue: transient, like the queue itself. Best
        effort: the client may be gone (then it is returned)."""
        self.conn.publish(queue, msg.encode(), type=msg.TYPE, correlation_id=cid, persistent=False)

    def records(
        self,
        workers: Iterable[str],
        records: list[m.VersionRecord],
        expect: Callable[[str], tuple[m.Expect, ...]] = lambda _worker: (),
    ) -> None:
        """Version records to keep beside the data, sealed once, and the uploads each
        worker is to take the chunks of, from whom (``expect(worker)``): one message each."""
        sealed = self.seal.seal(records)
        for worker in workers:
            cmd = m.RecordVersions(records=sealed, expect=expect(worker))
            if cmd.records or cmd.expect:
                self.to_worker(worker, cmd)

    def forget(self, workers: Iterable[str], keys: list[m.VersionKey]) -> None:
        """Deleted versions, sealed, to every worker's log (a dead one's queue keeps it):
        a catalog rebuilt from the workers keeps them deleted."""
        cmd = m.ForgetVersions(keys=self.seal.seal_deletions(keys))
        for worker in workers:
            self.to_worker(worker, cmd)

    def _publish(self, worker: str, queue: str, msg: m.Message) -> None:
        conn = self.conn
        conn.declare(worker_topology(worker))
        conn.publish(queue, msg.encode(), type=msg.TYPE)
