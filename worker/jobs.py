"""The jobs of a worker's intake (``worker/intake.py``): a chunk or a pack on its way
through named steps, and why a replica failed here."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from warren import messages as m
from warren.transport import Delivery, Transport


class Step(enum.Enum):
    FORWARDING = "forwarding"  # written (or stored) here; waiting for the next worker's queue
    FINISHING = "finishing"  # the last chunk: the replica is being verified on the pool
    ANNOUNCING = "announcing"  # waiting for the manager's queue to take "stored" or "failed"
    SETTLED = "settled"  # acked, requeued or dead-lettered: nothing more to do


@dataclass(frozen=True)
class Failed:
    """Why a replica failed here, with its wire code (warren.errors): INTEGRITY (the bytes
    were wrong) or UNAVAILABLE (they could not be forwarded or written; a retry may do)."""

    code: str
    reason: str


@dataclass
class ChunkJob:
    conn: Transport
    d: Delivery
    h: m.ChunkHeaders
    complete: bool  # every chunk of the upload is here: this one finishes it
    step: Step = Step.FORWARDING
    refused: int = 0  # how many times the next worker's queue refused it


@dataclass
class PackJob:
    conn: Transport
    d: Delivery
    p: m.PackHeaders
    step: Step = Step.FORWARDING
    stored: bool = False  # the files are on disk here (or failed: see error)
    forwarded: bool = False  # the next worker's queue has the pack (or there is none)
    error: Failed | None = None
    refused: int = 0  # how many times the next worker's queue refused it
