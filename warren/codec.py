"""How control messages travel: frozen dataclasses as compact JSON, the class named by the
AMQP ``type`` property, and ``decode`` wrapping every failure (bad JSON, a wrong field type,
a value out of range) in ``DecodeError`` so a consumer can dead-letter it and carry on.

The messages themselves are in ``warren.messages`` (client and manager) and
``warren.worker_messages`` (worker, manager and restores); ``warren.messages`` offers all."""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from typing import Any, ClassVar, TypeVar, Union

from warren.errors import DecodeError

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
WORKER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_NAME_BYTES = 4096
# Small files travel in packs: one request, one message and one confirmation per worker for
# up to MAX_PACK_FILES files, instead of all of that for each file.
MAX_PACK_FILES = 256
# A chain names at most this many workers, each once: a chunk goes through each at most once.
MAX_CHAIN = 16

T = TypeVar("T", bound="Message")


class Message:
    """Base of every control message: JSON on the wire, the class in the ``type`` property."""

    TYPE: ClassVar[str] = ""

    def encode(self) -> bytes:
        return _ENCODER.encode(self).encode()

    @classmethod
    def decode(cls: type[T], body: bytes) -> T:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{cls.TYPE}: body is not JSON ({exc})") from None
        value: T = _build(cls, data, cls.TYPE)
        value.validate()
        return value

    def validate(self) -> None:
        """Check the values, not just the types; raise DecodeError on anything invalid."""


REGISTRY: dict[str, type[Message]] = {}


def message(cls: type[T]) -> type[T]:
    """Register a message class under its TYPE so that ``decode`` can find it."""
    if not cls.TYPE or cls.TYPE in REGISTRY:
        raise TypeError(f"message type {cls.TYPE!r} is empty or taken")
    REGISTRY[cls.TYPE] = cls
    return cls


def decode(type_name: str | None, body: bytes) -> Message:
    """Decode a control message by its AMQP ``type`` property."""
    cls = REGISTRY.get(type_name or "")
    if cls is None:
        raise DecodeError(f"unknown message type {type_name!r}")
    return cls.decode(body)


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _fields_of(value: Any) -> dict[str, Any]:
    """``json``'s hook for what it cannot encode itself: a message (or one of its parts) as
    its fields. Faster than ``dataclasses.asdict`` and its deep copy of every value; a
    manager encodes a message per pack and worker, and that showed in its profile."""
    names = _FIELDS.get(type(value))
    if names is None:
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            raise TypeError(f"{type(value).__name__} is not a message field")
        names = _FIELDS[type(value)] = tuple(f.name for f in dataclasses.fields(value))
    return {name: getattr(value, name) for name in names}


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_fields_of)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    """The resolved field types of a message class, cached: resolving costs an eval each."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise DecodeError(f"{where}: expected an object")
    hints = _type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                continue
            raise DecodeError(f"{where}: missing field {f.name!r}")
        kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected a list")
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{where}[]") for v in value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, hint, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise DecodeError(f"{where}: expected int")
    if not isinstance(value, hint):
        raise DecodeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def check_sha256(value: str, where: str) -> None:
    if not HEX64.match(value):
        raise DecodeError(f"{where}: not a hex SHA-256")


def check_upload_id(value: str, where: str) -> None:
    if not HEX32.match(value):
        raise DecodeError(f"{where}: not an upload id")


def check_worker(value: str, where: str) -> None:
    if not WORKER_NAME.match(value):
        raise DecodeError(f"{where}: {value!r} is not a worker name")


def check_chain(chain: tuple[str, ...], where: str) -> None:
    """A chain names one to MAX_CHAIN workers, each by a valid name and each once: a
    sender cannot loop a chunk through the workers (each would store and forward it)."""
    if not chain:
        raise DecodeError(f"{where}: empty chain")
    if len(chain) > MAX_CHAIN:
        raise DecodeError(f"{where}: a chain of more than {MAX_CHAIN} workers")
    for w in chain:
        if not isinstance(w, str):
            raise DecodeError(f"{where}: the chain holds a non-name")
        check_worker(w, "chain")
    if len(set(chain)) != len(chain):
        raise DecodeError(f"{where}: the chain names a worker twice")


def check_file_name(value: str) -> None:
    """File names may hold spaces and any Unicode; they only ever live in the catalog. A lone
    surrogate (JSON lets a sender escape one) is not Unicode text: such a name could be
    neither encoded again nor stored in the catalog, so it is invalid here, at the door."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise DecodeError("a file name must be valid Unicode (no lone surrogate)") from None
    if not value or "\x00" in value or size > MAX_NAME_BYTES:
        raise DecodeError("a file name must be 1 to 4096 bytes with no NUL character")


def check_size(value: int, where: str) -> None:
    if value < 0:
        raise DecodeError(f"{where}: negative size")
