"""The messages of owners' keys (``warren.ownerkey``): a client's requests to the manager
and its answers, and the record of a key the manager keeps beside the workers' blobs.

A wrapped key travels as base64 text; the manager stores it and hands it back to its
owner only, and never can open it. The owner of every request is the AMQP ``user_id`` the
broker validated, never a field of the body (``manager/keys.py``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from warren.codec import Message, message
from warren.errors import DecodeError

KEY_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_HOST = 255
MAX_WRAPPED_TEXT = 512  # base64 of a wrapped key (83 bytes today) with room for a new format


def check_key_id(value: str, where: str) -> None:
    if not KEY_ID.match(value):
        raise DecodeError(f"{where}: a key id is 16 lower-case hex digits")


def check_wrapped(value: str, where: str) -> None:
    if not value or len(value) > MAX_WRAPPED_TEXT:
        raise DecodeError(f"{where}: a wrapped key is 1 to {MAX_WRAPPED_TEXT} base64 characters")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{where}: a wrapped key that is not base64") from None


def check_host(value: str, where: str) -> None:
    if len(value) > MAX_HOST or not value.isprintable():
        raise DecodeError(f"{where}: a host label is at most {MAX_HOST} printable characters")


@dataclass(frozen=True)
class KeyEntry:
    """One of an owner's wrapped keys, as ``key.list`` and ``key.get`` show it."""

    id: str
    created: float
    host: str
    wrapped: str = ""  # base64; only in key.got (key.list leaves it out)


# -- client -> manager ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class KeyAdd(Message):
    """Keep one more wrapping of the sender's master key; answered KeyAdded."""

    TYPE = "key.add"
    wrapped: str
    host: str = ""
    first: bool = False  # init: refused if the sender has a key already (two inits racing)

    def validate(self) -> None:
        check_wrapped(self.wrapped, "key.add")
        check_host(self.host, "key.add")


@message
@dataclass(frozen=True)
class KeyList(Message):
    """The sender's keys (ids, when, from which host), without the wrapped bytes."""

    TYPE = "key.list"


@message
@dataclass(frozen=True)
class KeyGet(Message):
    """Every wrapped key of the sender: the client tries each with its password."""

    TYPE = "key.get"


@message
@dataclass(frozen=True)
class KeyRemove(Message):
    """Forget one of the sender's wrapped keys; refused for its last one."""

    TYPE = "key.remove"
    id: str

    def validate(self) -> None:
        check_key_id(self.id, "key.remove")


# -- manager -> client ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class KeyAdded(Message):
    TYPE = "key.added"
    id: str
    existed: bool = False  # the very same wrapped bytes were kept already


@message
@dataclass(frozen=True)
class KeyListReply(Message):
    """The sender's keys, oldest first (``key.list``: without ``wrapped``; ``key.get``:
    with it)."""

    TYPE = "key.list.reply"
    keys: tuple[KeyEntry, ...]


@message
@dataclass(frozen=True)
class KeyRemoved(Message):
    TYPE = "key.removed"
    id: str


# -- kept by the workers -------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRecord:
    """A key added (or, with ``removed``, taken away), as the workers keep it: sealed with
    the manager's key (``manager/records.py``), so a rebuilt catalog has every owner's keys
    and a worker can neither plant nor drop one."""

    owner: str
    id: str
    created: float
    host: str = ""
    wrapped: str = ""  # base64, empty for a removal
    removed: bool = False
