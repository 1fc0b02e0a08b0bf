"""An owner's keys: one random master key, kept in the cluster only wrapped by passwords.

Everything an owner's content is sealed with comes from one 32-byte master key made on the
client (``new_master``) by ``warren init``. The cluster never sees it in the clear: the
manager keeps it *wrapped* (``wrap``), sealed with AES-256-GCM under a key that scrypt
derives from a password, once per password (one per machine, say), as restic keeps its key
files (restic's doc/design.rst, "Keys, Encryption and MAC"). Without a password the wrapped
bytes are useless, so a manager, a worker or the broker holding them learns nothing.

The keys the content path uses are derived from the master (``derive``) by HKDF-SHA256, one
``info`` label each, so that none of them can be computed from another: the chunk sealing
key, the key of the keyed hash that names chunks (ids mean nothing without it, and dedup
never crosses owners), the content-defined chunker's seed (borg keys its chunker so chunk
boundaries do not fingerprint content) and the key that will seal snapshot manifests.

The wrapped format (``FORMAT`` 1, 83 bytes; docs/protocol.md) records scrypt's parameters,
so a key wrapped with one cost opens with any setting of ``WARREN_SCRYPT_N``::

    version (1 byte) | n (4 bytes, big-endian) | r (1) | p (1) | salt (16)
    | nonce (12) | AES-256-GCM(master) with its tag (48)

The first 23 bytes are the associated data: a changed cost, salt or version fails to open
as a wrong password would. No I/O here: the client reads passwords, the manager stores.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from warren.errors import UsageError

FORMAT = 1
MASTER_BYTES = 32
SALT_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
# scrypt's cost: n=2**15, r=8 takes about 100 ms and 32 MiB here. WARREN_SCRYPT_N lowers it
# for the test suite only, which runs many client commands; the format records what was used.
DEFAULT_N = 2**15
R = 8
P = 1
_HEADER = struct.Struct(">BIBB16s")
WRAPPED_BYTES = _HEADER.size + NONCE_BYTES + MASTER_BYTES + TAG_BYTES
# What a wrapped key may ask of the machine opening it: the manager hands them out, and a
# cost it made up must not make a client allocate gigabytes (128 * n * r bytes).
MAX_N = 2**20
MAX_MEMORY = 1 << 30

# HKDF info labels: one per subkey, never reused for anything else.
_SEAL = b"warren owner v1 seal"
_IDS = b"warren owner v1 chunk ids"
_CHUNKER = b"warren owner v1 chunker seed"
_MANIFEST = b"warren owner v1 manifest"


class WrongPassword(UsageError):
    """The password opens none of the owner's wrapped keys (exit 2)."""


class NotAKey(UsageError):
    """Bytes that are not a wrapped key of a format this version reads."""


@dataclass(frozen=True)
class OwnerKeys:
    """The keys the content path uses, all derived from the owner's master key."""

    seal: bytes  # 32 bytes: AES-256-GCM key that seals chunks
    ids: bytes  # 32 bytes: key of the keyed hash that names chunks
    chunker_seed: int  # 32 bits: seeds the content-defined chunker's gear table
    manifest: bytes  # 32 bytes: seals snapshot manifests


def new_master() -> bytes:
    """A fresh master key: 32 random bytes from the OS."""
    return secrets.token_bytes(MASTER_BYTES)


def derive(master: bytes) -> OwnerKeys:
    """The subkeys of ``master``, each by HKDF-SHA256 under its own label."""
    if len(master) != MASTER_BYTES:
        raise ValueError(f"a master key is {MASTER_BYTES} bytes, not {len(master)}")

    def hkdf(info: bytes, length: int = 32) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)

    return OwnerKeys(
        seal=hkdf(_SEAL),
        ids=hkdf(_IDS),
        chunker_seed=int.from_bytes(hkdf(_CHUNKER, 4), "big"),
        manifest=hkdf(_MANIFEST),
    )


def check_cost(n: int, r: int = R, p: int = P) -> None:
    """scrypt parameters this version will spend time and memory on."""
    if n < 2 or n & (n - 1) or n > MAX_N:
        raise NotAKey(f"scrypt's n must be a power of two from 2 to {MAX_N}, not {n}.")
    if not (1 <= r <= 32 and 1 <= p <= 16) or 128 * n * r > MAX_MEMORY:
        raise NotAKey(f"scrypt parameters r={r}, p={p} are out of range.")


def wrap(master: bytes, password: str, *, n: int = DEFAULT_N) -> bytes:
    """``master`` sealed under a key scrypt derives from ``password`` (``FORMAT`` above)."""
    if len(master) != MASTER_BYTES:
        raise ValueError(f"a master key is {MASTER_BYTES} bytes, not {len(master)}")
    check_cost(n)
    salt = secrets.token_bytes(SALT_BYTES)
    header = _HEADER.pack(FORMAT, n, R, P, salt)
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(_stretch(password, salt, n, R, P)).encrypt(nonce, master, header)
    return header + nonce + sealed


def unwrap(wrapped: bytes, password: str) -> bytes:
    """The master key ``wrapped`` holds; ``WrongPassword`` if ``password`` does not open it
    (a wrapped key that was altered cannot be told from a wrong password, and need not be)."""
    if len(wrapped) != WRAPPED_BYTES or wrapped[0] != FORMAT:
        raise NotAKey("a wrapped key of a format this version does not read.")
    version, n, r, p, salt = _HEADER.unpack_from(wrapped)
    check_cost(n, r, p)
    header = wrapped[: _HEADER.size]
    nonce = wrapped[_HEADER.size : _HEADER.size + NONCE_BYTES]
    try:
        return AESGCM(_stretch(password, salt, n, r, p)).decrypt(
            nonce, wrapped[_HEADER.size + NONCE_BYTES :], header
        )
    except InvalidTag:
        raise WrongPassword("wrong password: it opens none of this owner's keys.") from None


def cost_of(wrapped: bytes) -> int:
    """The scrypt ``n`` a wrapped key was made with (0 for bytes that are not one)."""
    if len(wrapped) != WRAPPED_BYTES or wrapped[0] != FORMAT:
        return 0
    return int(_HEADER.unpack_from(wrapped)[1])


def _stretch(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())
