"""Where sealed chunks go: a pack's chunks the owner already stored (held by enough live
workers) are answered ``stored``, the others placed on one chain of workers, published to
that chain before the client hears where to send.

It runs on the manager's one thread, and each placement is one catalog transaction.
Whole-file uploads (``upload.request``, ``pack.request`` without ``chunks``) are gone with
sealed chunks: such a request is refused with one sentence (``WHOLE_FILES``).
"""

from __future__ import annotations

import logging
import time
import uuid

from manager.catalog import Catalog, Upload
from manager.chains import choose_chain
from manager.health import Health
from manager.holdings import PENDING
from manager.outbox import Outbox
from manager.term import Term
from warren import messages as m
from warren.config import Settings
from warren.errors import Busy, Refused
from warren.sizes import human_size

log = logging.getLogger("warren.manager")

# What a client from before sealed chunks is told.
WHOLE_FILES = (
    "whole-file uploads are gone: files are sealed on the client now, in chunks; "
    "upgrade this client."
)


class Placement:
    """Placement of sealed chunks, and deduplication within an owner."""

    def __init__(
        self, settings: Settings, catalog: Catalog, outbox: Outbox, term: Term, health: Health
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.outbox = outbox
        self.term = term
        self.health = health

    def place_pack(self, req: m.PackRequest, reply_to: str, owner: str) -> m.PackAccepted:
        """Sealed chunks: those the owner already stored, which ``replicas`` live workers
        hold, are ``stored`` (and pinned for the commit that will use them: garbage
        collection leaves them be meanwhile); the others are placed on one chain."""
        if not req.chunks:
            raise Refused(WHOLE_FILES)
        ids: dict[int, str] = {}
        stored = []
        now = time.time()
        held = self.catalog.held_chunks(owner, [f.sha256 for f in req.files])
        for i, f in enumerate(req.files):
            holders = held.get(f.sha256, [])
            if req.replicas >= 1 and len(holders) >= req.replicas:
                ids[i] = uuid.uuid4().hex
                stored.append(m.StoredFile(ids[i], tuple(holders[: req.replicas])))
        if stored:
            found = [(f.sha256, f.size) for i, f in enumerate(req.files) if i in ids]
            self.catalog.hold_chunks(owner, found, req.replicas, now)
        rest = [i for i in range(len(req.files)) if i not in ids]
        chain = stored[0].chain if stored else ()
        if rest:
            ups = self._reserve(
                [req.files[i] for i in rest], req.replicas, req.client, reply_to, owner
            )
            ids.update(zip(rest, (up.upload_id for up in ups), strict=True))
            chain = ups[0].chain
        log.info(
            "%d chunks (%d bytes) from %s: %d placed on %s, %d already stored",
            len(req.files),
            sum(f.size for f in req.files),
            req.client or "a client",
            len(rest),
            " -> ".join(chain),
            len(stored),
        )
        return m.PackAccepted(
            upload_ids=tuple(ids[i] for i in range(len(req.files))),
            chain=chain,
            stored=tuple(stored),
        )

    def _reserve(
        self,
        files: list[m.PackFile],
        replicas: int,
        client: str,
        reply_to: str,
        owner: str,
    ) -> list[Upload]:
        """Pick one chain with room for all of ``files`` (sealed chunks) and record each as
        a pending upload, in one transaction. A worker still deleting an old copy of the
        same blob is not picked for it."""
        total = sum(f.size for f in files)
        self._within_quota(owner, total * replicas)
        avoid = set().union(*(self.catalog.deleting(f.sha256) for f in files))
        candidates = [c for c in self.catalog.candidates() if c.name not in avoid]
        try:
            chain = tuple(choose_chain(candidates, total, replicas))
        except Refused as exc:
            silent = [c for c in candidates if not c.alive]
            if self.term.just_connected() and silent and 1 <= replicas <= len(candidates):
                # After the broker restarted, say: the workers may be reconnecting too,
                # silent only until their next heartbeat. Not a refusal yet: nothing was
                # done, and the client asks again until its request timeout.
                raise Busy(
                    f"{exc} The manager has just connected and may not have heard from "
                    "every worker yet: try again in a moment."
                ) from None
            raise
        ups = [_upload_of(f, replicas, chain, client, owner, reply_to) for f in files]
        now = time.time()
        self.catalog.add_uploads(ups, now)
        # Published before the answer, so they are in each worker's queue before any chunk:
        # whom to take the chunks from (the client, then each worker).
        senders = {w: owner if hop == 0 else chain[hop - 1] for hop, w in enumerate(chain)}
        self.outbox.records(
            chain,
            [],
            lambda worker: tuple(m.Expect(up.upload_id, senders[worker], chain) for up in ups),
        )
        return ups

    def _within_quota(self, owner: str, more: int) -> None:
        """Refuse, before any byte is sent, what would take ``owner`` past its quota: its
        data on the workers (every replica) and its uploads in flight, plus ``more``."""
        quota = self.catalog.quota(owner)
        if quota is None or more <= 0:
            return
        used = self.catalog.owner_usage(owner)
        if used + more > quota:
            raise Refused(
                f"this would take {owner or 'you'} past the quota of {human_size(quota)}: "
                f"{human_size(used)} stored or on the way (every replica counted), and this "
                f"needs {human_size(more)} more."
            )


def _upload_of(
    f: m.PackFile,
    replicas: int,
    chain: tuple[str, ...],
    client: str,
    owner: str,
    reply_to: str = "",
) -> Upload:
    """A new upload of the sealed chunk ``f`` on ``chain``."""
    return Upload(
        upload_id=uuid.uuid4().hex,
        name=f.name,
        size=f.size,
        sha256=f.sha256,
        wanted=replicas,
        chain=chain,
        client=client,
        state=PENDING,
        reply_to=reply_to,
        owner=owner,
        mode=f.mode,
        mtime=f.mtime,
    )
