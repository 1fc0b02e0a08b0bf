"""Sealing: bytes only the holder of a key can read, and nobody without it can forge.

A sealed value is ``FORMAT`` (one byte: the format it was written in), a random 12-byte
nonce, and the AES-256-GCM ciphertext with its 16-byte tag. The associated data is the
format byte and a ``context`` the caller names (what the value is, and what it belongs to),
so a sealed value moved to another context, or its format byte changed, fails to open.

The manager seals the records the workers keep beside their blobs with its own key (the
file ``WARREN_MANAGER_KEY_FILE`` names): a worker stores and returns them, but can neither
read nor forge nor usefully alter them, so a catalog rebuilt from the workers holds only
what the manager recorded (docs/security.md).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from warren.errors import DecodeError, UsageError

FORMAT = 1
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES


class Forged(DecodeError):
    """A sealed value that does not open with this key in this context: damaged, forged,
    moved from elsewhere, or sealed with another key."""


class Sealer:
    """Seals and opens values with one key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a sealing key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        header = bytes([FORMAT])
        return header + nonce + self._aead.encrypt(nonce, plaintext, header + context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        """The plaintext; ``Forged`` if it was not sealed with this key in this context."""
        if len(sealed) < OVERHEAD or sealed[0] != FORMAT:
            raise Forged("not a sealed value of a format this version reads")
        nonce = sealed[1 : 1 + NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + NONCE_BYTES :], sealed[:1] + context)
        except InvalidTag:
            raise Forged("a sealed value that does not authenticate") from None


def load_or_create_key(path: Path) -> bytes:
    """The key kept in ``path`` (64 hex digits), made there first if the file is missing.

    A new key is written whole beside the file and linked into place, so two managers
    starting at once end up with the same key; a file others may read is refused, as
    config files are."""
    if not path.exists():
        _create_key(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read the key file {path}: {exc.strerror or exc}.") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(f"the key file {path} may be read by others; chmod 600 it.")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise UsageError(f"the key file {path} does not hold a key ({KEY_BYTES * 2} hex digits).")
    return key


def _create_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        with contextlib.suppress(FileExistsError):  # another made it first: theirs it is
            os.link(tmp, path)
    finally:
        tmp.unlink()
