"""Which commands a worker takes as the manager's: by the routing key they came by, which
the broker lets only the manager's user publish with (``warren.topology.permissions``).
Intake (``worker/intake.py``) and serve (``worker/serve.py``) each hold one."""

from __future__ import annotations

import logging

from warren.config import Settings
from warren.errors import DecodeError
from warren.topology import manager_only_keys
from warren.transport import Delivery

log = logging.getLogger("warren.worker")


class ManagerOnly:
    """Tells the manager's commands from anyone else's by the routing key they came by.

    Only the manager's user may publish to a worker with ``<name>.orders`` (its commands on
    the chunks queue, which clients and other workers also write: chunks) or
    ``<name>.control`` (``topology.permissions``): RabbitMQ checked the publisher's right to
    the key, so the worker needs no word of who the manager is. Where
    ``WARREN_MANAGER_USER`` is set, the sender must be that user too (for users made by hand
    with looser rights). Where everyone shares one login, anyone may use any key.

    Whatever fails is refused (dead-lettered), logged as an error with the claimed and the
    real sender, and counted: ``refused`` goes out in every heartbeat, and ``status``
    shows it, so an operator hears of it."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.name
        self.manager_user = settings.manager_user
        self.keys = manager_only_keys(settings.name)
        self.refused = 0  # since this worker started; read by the heartbeat thread

    def check(self, d: Delivery) -> None:
        if d.routing_key not in self.keys:
            why = f"by routing key {d.routing_key!r}, which others may publish with"
        elif self.manager_user and d.user_id != self.manager_user:
            why = f"not from WARREN_MANAGER_USER ({self.manager_user!r})"
        else:
            return
        self.refused += 1
        log.error(
            "%s: refused %s, a command only the manager gives: it came from broker user %r, "
            "%s (the manager's keys: %s)",
            self.name,
            d.type,
            d.user_id,
            why,
            ", ".join(self.keys),
        )
        raise DecodeError(f"{d.type} from broker user {d.user_id!r} is not the manager's: ignored")
