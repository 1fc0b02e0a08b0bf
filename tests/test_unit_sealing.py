"""warren.sealing: what one key seals, only that key opens, in the context it was sealed for."""

from __future__ import annotations

import os
import secrets
import stat
import threading
from pathlib import Path

import pytest

from warren.errors import UsageError
from warren.sealing import FORMAT, OVERHEAD, Forged, Sealer, load_or_create_key


def test_what_is_sealed_opens_only_with_its_key_and_context() -> None:
    key = secrets.token_bytes(32)
    sealed = Sealer(key).seal(b"alice's report.txt", b"record ab")
    assert b"report" not in sealed and sealed[0] == FORMAT
    assert len(sealed) == len(b"alice's report.txt") + OVERHEAD
    assert Sealer(key).open(sealed, b"record ab") == b"alice's report.txt"
    for bad_key, context, value in [
        (secrets.token_bytes(32), b"record ab", sealed),  # another key
        (key, b"record cd", sealed),  # moved to another context
        (key, b"record ab", sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]),  # altered
        (key, b"record ab", bytes([FORMAT + 1]) + sealed[1:]),  # another format byte
        (key, b"record ab", sealed[:-1]),  # cut short
        (key, b"record ab", b""),
    ]:
        with pytest.raises(Forged):
            Sealer(bad_key).open(value, context)


def test_sealing_the_same_value_twice_gives_two_different_values() -> None:
    sealer = Sealer(secrets.token_bytes(32))
    assert sealer.seal(b"x", b"c") != sealer.seal(b"x", b"c")


def test_a_key_file_is_made_private_once_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "manager.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key and len(key) == 32
    assert list(path.parent.iterdir()) == [path]  # nothing left beside it


def test_managers_starting_at_once_end_up_with_one_key(tmp_path: Path) -> None:
    path = tmp_path / "manager.key"
    keys: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: keys.append(load_or_create_key(path))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1


@pytest.mark.parametrize(
    "mode, text, says",
    [
        (0o644, "ab" * 32, "may be read by others"),
        (0o600, "not a key", "does not hold a key"),
        (0o600, "ab" * 16, "does not hold a key"),
    ],
)
def test_a_bad_key_file_is_one_sentence(tmp_path: Path, mode: int, text: str, says: str) -> None:
    path = tmp_path / "manager.key"
    path.write_text(text)
    os.chmod(path, mode)
    with pytest.raises(UsageError, match=says):
        load_or_create_key(path)
