"""warren/ownerkey.py: the master key, its subkeys, and its wrapping by a password."""

from __future__ import annotations

import pytest

from warren import ownerkey
from warren.errors import EXIT_USAGE
from warren.ownerkey import NotAKey, WrongPassword

N = 2**4  # scrypt's cost, lowered as WARREN_SCRYPT_N lowers it for the suite


def test_a_wrapped_key_opens_with_its_password_only() -> None:
    master = ownerkey.new_master()
    wrapped = ownerkey.wrap(master, "correct horse", n=N)
    assert len(wrapped) == ownerkey.WRAPPED_BYTES and wrapped[0] == ownerkey.FORMAT
    assert master not in wrapped
    assert ownerkey.unwrap(wrapped, "correct horse") == master
    with pytest.raises(WrongPassword, match="^wrong password") as exc:
        ownerkey.unwrap(wrapped, "correct horse ")
    assert exc.value.exit_code == EXIT_USAGE
    # each wrapping has its own salt and nonce: the same password wraps differently
    assert ownerkey.wrap(master, "correct horse", n=N) != wrapped


def test_the_wrapping_records_its_cost_so_any_setting_opens_it() -> None:
    master = ownerkey.new_master()
    cheap = ownerkey.wrap(master, "pw", n=N)
    dear = ownerkey.wrap(master, "pw", n=2**10)
    assert ownerkey.cost_of(cheap) == N and ownerkey.cost_of(dear) == 2**10
    assert ownerkey.unwrap(cheap, "pw") == ownerkey.unwrap(dear, "pw") == master


@pytest.mark.parametrize("at", range(ownerkey.WRAPPED_BYTES))
def test_any_byte_of_a_wrapped_key_changed_and_it_does_not_open(at: int) -> None:
    """Header (version, n, r, p, salt) is associated data, nonce and ciphertext are
    authenticated: changing any byte fails, as a wrong password (or as not a key)."""
    master = ownerkey.new_master()
    wrapped = bytearray(ownerkey.wrap(master, "pw", n=N))
    wrapped[at] ^= 0x01 if at else 0x02
    with pytest.raises((WrongPassword, NotAKey)):
        ownerkey.unwrap(bytes(wrapped), "pw")


def test_a_cost_beyond_reason_is_refused_before_scrypt_runs() -> None:
    """The manager hands the wrapped bytes out: one it made up must not make the client
    allocate gigabytes."""
    wrapped = bytearray(ownerkey.wrap(ownerkey.new_master(), "pw", n=N))
    wrapped[1:5] = (2**30).to_bytes(4, "big")
    with pytest.raises(NotAKey, match="power of two"):
        ownerkey.unwrap(bytes(wrapped), "pw")
    with pytest.raises(NotAKey):
        ownerkey.unwrap(bytes(wrapped[:-1]), "pw")


def test_subkeys_are_distinct_and_fixed_by_the_master() -> None:
    master = ownerkey.new_master()
    keys = ownerkey.derive(master)
    assert keys == ownerkey.derive(master)
    assert len({keys.seal, keys.ids, keys.manifest, master}) == 4
    assert all(len(k) == 32 for k in (keys.seal, keys.ids, keys.manifest))
    assert 0 <= keys.chunker_seed < 2**32
    other = ownerkey.derive(ownerkey.new_master())
    assert other.seal != keys.seal and other.ids != keys.ids
    assert other.chunker_seed != keys.chunker_seed or other.manifest != keys.manifest
    with pytest.raises(ValueError):
        ownerkey.derive(master[:16])
