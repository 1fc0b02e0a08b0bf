"""warren.chunkseal: files cut by content keyed by the owner's seed, chunks named and sealed so
that only their owner reads them, and every damaged or forged blob refused."""

from __future__ import annotations

import random
import secrets
import tracemalloc
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import example, given, settings
from hypothesis import strategies as st

from warren import chunkseal as cs
from warren.errors import EXIT_INTEGRITY

MIB = 1024 * 1024
LIMIT = 4 * MIB
PARAMS = cs.params_for(LIMIT)
SEED = 0x5EED_0F_A11CE
SEAL, IDS = secrets.token_bytes(32), secrets.token_bytes(32)
TEXT = b"".join(
    f'10.0.{i % 250}.{i % 7} - - [01/Jan/2026:00:00:{i % 60:02}] "GET /item/{i} HTTP/1.1" 200 '
    f"{i * 37 % 5000}\n".encode()
    for i in range(20_000)
)[:MIB]


def randbytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 MiB of random bytes, written once for the tests that need a large file."""
    path = tmp_path_factory.mktemp("chunkseal") / "random-64m"
    path.write_bytes(randbytes(64 * MIB, seed=64))
    return path


def seal(data: bytes, seal_key: bytes = SEAL, ids_key: bytes = IDS) -> bytes:
    return cs.seal_chunk(seal_key, cs.chunk_id(ids_key, data), data)


def open_(sealed: bytes, max_size: int = LIMIT) -> bytes:
    chunk_id, plain = cs.open_chunk(SEAL, IDS, sealed, max_size)
    assert chunk_id == cs.chunk_id(IDS, plain)
    return plain


def forge(chunk_id: bytes, encoded: bytes, key: bytes = SEAL, form: int = cs.FORMAT) -> bytes:
    """A sealed chunk made by hand with the right key, around any ``encoded`` bytes: what a
    client with a bug, or an attacker holding the key, could store."""
    head = bytes((form,)) + chunk_id
    nonce = secrets.token_bytes(cs.NONCE_BYTES)
    return head + nonce + AESGCM(key).encrypt(nonce, encoded, head)


def ids_of(path: Path, seed: int = SEED, params: cs.ChunkParams = PARAMS) -> dict[bytes, int]:
    return {cs.chunk_id(IDS, c): len(c) for c in cs.cut(path, params, seed)}


# -- sealing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [randbytes(MIB), TEXT, b"", b"x"], ids=["random", "text", "0", "1"]
)
def test_a_sealed_chunk_opens_to_its_bytes_and_shows_none_of_them(data: bytes) -> None:
    sealed = seal(data)
    assert sealed[0] == cs.FORMAT and sealed[1:33] == cs.chunk_id(IDS, data)
    assert len(sealed) <= len(data) + cs.SEAL_OVERHEAD
    assert open_(sealed) == data
    if data is TEXT:
        assert len(sealed) < len(TEXT) // 3  # compressed before it was sealed
        assert b"GET /item/" not in sealed


def test_random_bytes_cost_exactly_the_overhead() -> None:
    data = randbytes(300_000)
    assert len(seal(data)) == len(data) + cs.SEAL_OVERHEAD


def test_sealing_is_deterministic_per_key_and_unrelated_across_owners() -> None:
    data = randbytes(100_000, seed=7)
    assert seal(data) == seal(data)
    assert cs.sealed_digest(seal(data)) == cs.sealed_digest(seal(data))
    assert seal(data, seal_key=secrets.token_bytes(32)) != seal(data)
    other_seal, other_ids = secrets.token_bytes(32), secrets.token_bytes(32)
    theirs = seal(data, other_seal, other_ids)
    assert cs.sealed_digest(theirs) != cs.sealed_digest(seal(data))
    assert cs.chunk_id(other_ids, data) != cs.chunk_id(IDS, data)
    assert theirs[33:45] != seal(data)[33:45]  # not even the nonce is shared
    with pytest.raises(cs.Damaged):
        cs.open_chunk(SEAL, IDS, theirs, LIMIT)  # nor can one owner open another's chunks


def test_the_nonce_covers_the_encoded_bytes_not_just_the_id() -> None:
    """Two different messages under one nonce would leak their XOR: a chunk sealed by hand
    under some id with other bytes must get another nonce than the real one."""
    data = randbytes(5000, seed=3)
    cid = cs.chunk_id(IDS, data)
    assert cs.seal_chunk(SEAL, cid, data)[33:45] != cs.seal_chunk(SEAL, cid, data[::-1])[33:45]


def test_every_altered_byte_is_refused() -> None:
    sealed = seal(TEXT[:200] + randbytes(200))  # header, id, nonce, body and tag all covered
    for at in range(len(sealed)):
        bad = bytearray(sealed)
        bad[at] ^= 0x01
        with pytest.raises(cs.Damaged):
            cs.open_chunk(SEAL, IDS, bytes(bad), LIMIT)
    for short in (sealed[:-1], sealed[: cs.SEAL_OVERHEAD - 1], b"", sealed + b"\0"):
        with pytest.raises(cs.Damaged):
            cs.open_chunk(SEAL, IDS, short, LIMIT)


def test_a_chunk_under_another_id_is_refused() -> None:
    a, b = seal(b"chunk a" * 50), seal(b"chunk b" * 50)
    swapped = a[:1] + b[1:33] + a[33:]
    with pytest.raises(cs.Damaged):
        cs.open_chunk(SEAL, IDS, swapped, LIMIT)
    # Sealed with the right key but under an id that is not its plaintext's: refused too.
    lying = cs.seal_chunk(SEAL, cs.chunk_id(IDS, b"something else"), b"chunk a" * 50)
    with pytest.raises(cs.Damaged, match="not those of the chunk id"):
        cs.open_chunk(SEAL, IDS, lying, LIMIT)


def test_damage_is_an_integrity_error_in_one_sentence() -> None:
    with pytest.raises(cs.Damaged) as caught:
        cs.open_chunk(SEAL, IDS, bytes(100), LIMIT)
    assert caught.value.exit_code == EXIT_INTEGRITY
    assert "\n" not in str(caught.value) and str(caught.value).count(". ") == 0


def test_a_zstd_bomb_sealed_with_the_right_key_is_refused_not_inflated() -> None:
    zeros = bytes(256 * MIB)
    frame = zstandard.ZstdCompressor(level=1).compress(zeros)
    bomb = forge(cs.chunk_id(IDS, zeros), b"\x01" + frame)
    del zeros
    tracemalloc.start()
    try:
        with pytest.raises(cs.Damaged, match="more than"):
            cs.open_chunk(SEAL, IDS, bomb, LIMIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB
    # A frame that hides its size, one that is not a frame, and an unknown encoding (each
    # under the id of the bytes it would give) are refused as well.
    hidden = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1000))
    for plain, encoded in [
        (bytes(1000), b"\x01" + hidden),
        (b"not a zstd frame", b"\x01" + b"not a zstd frame"),
        (b"abc", b"\x02" + b"abc"),
    ]:
        with pytest.raises(cs.Damaged):
            cs.open_chunk(SEAL, IDS, forge(cs.chunk_id(IDS, plain), encoded), LIMIT)
    assert open_(forge(cs.chunk_id(IDS, b"abc"), b"\x00abc")) == b"abc"  # forge() seals
    with pytest.raises(cs.Damaged, match="format"):  # a format from the future, authentic
        cs.open_chunk(SEAL, IDS, forge(cs.chunk_id(IDS, b"abc"), b"\x00abc", form=3), LIMIT)


def test_a_plaintext_larger_than_allowed_is_refused() -> None:
    data = randbytes(10_000)
    with pytest.raises(cs.Damaged, match="more than"):
        cs.open_chunk(SEAL, IDS, seal(data), 9_999)
    with pytest.raises(cs.Damaged, match="more than"):
        cs.open_chunk(SEAL, IDS, seal(TEXT), len(TEXT) - 1)  # compressed, claiming its size
    assert open_(seal(data), 10_000) == data


@settings(max_examples=200, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=4000),
        st.binary(min_size=1, max_size=64).map(lambda b: b * (70_000 // len(b))),  # compresses
    )
)
@example(b"")
@example(b"\0")  # raw, and what a careless strip would lose
@example(bytes(300))  # the shortest that compresses
@example(b"\xff" * 4000)
def test_any_bytes_seal_and_open_to_themselves(data: bytes) -> None:
    sealed = seal(data)
    assert len(sealed) <= len(data) + cs.SEAL_OVERHEAD
    assert open_(sealed, len(data)) == data


# -- cutting ---------------------------------------------------------------------------------


def test_params_for_four_mib_messages_give_about_one_mib_chunks() -> None:
    assert PARAMS.max_size <= LIMIT - cs.SEAL_OVERHEAD
    assert PARAMS.max_size > 4 * MIB - 1024 and 0.9 * MIB < PARAMS.avg_size <= MIB
    assert PARAMS.min_size == PARAMS.avg_size // 4
    assert cs.params_for(64 * MIB).max_size == 4 * MIB
    with pytest.raises(ValueError):
        cs.params_for(cs.MIN_LIMIT - 1)


def test_an_empty_file_is_one_empty_chunk_and_a_small_file_one_chunk(tmp_path: Path) -> None:
    empty, small = tmp_path / "empty", tmp_path / "small"
    empty.write_bytes(b"")
    small.write_bytes(randbytes(PARAMS.min_size - 1))
    assert list(cs.cut(empty, PARAMS, SEED)) == [b""]
    assert list(cs.cut(small, PARAMS, SEED)) == [small.read_bytes()]
    sealed = list(cs.seal_file_chunks(empty, SEAL, IDS, SEED, PARAMS))
    assert [(c.plain_size, open_(c.sealed)) for c in sealed] == [(0, b"")]


def test_chunks_average_about_one_mib_and_rebuild_the_file(big_file: Path) -> None:
    chunks = list(cs.cut(big_file, PARAMS, SEED))  # each stays valid after the next is cut
    assert b"".join(chunks) == big_file.read_bytes()
    assert max(len(c) for c in chunks) <= PARAMS.max_size
    assert 0.5 * MIB <= 64 * MIB / len(chunks) <= 2 * MIB


def test_cutting_reads_a_large_file_in_bounded_memory(big_file: Path) -> None:
    tracemalloc.start()
    try:
        total = sum(len(c) for c in cs.cut(big_file, PARAMS, SEED))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == 64 * MIB
    # pyfastcdc's buffer (two max sizes), the chunk taken and the one before it: a quarter
    # of the file here, and the same for a file of any size.
    assert peak < 4 * PARAMS.max_size + MIB


def test_inserting_one_mib_mid_file_changes_only_a_few_mib_of_chunks(tmp_path: Path) -> None:
    data = randbytes(32 * MIB, seed=32)
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_bytes(data)
    # Inserted at no boundary, and not a whole MiB either: fixed-size chunks of any power of
    # two would all move after it (an exact MiB would realign them).
    at, inserted = 16 * MIB + 12_345, randbytes(MIB + 777, seed=99)
    new.write_bytes(data[:at] + inserted + data[at:])
    before, after = ids_of(old), ids_of(new)
    fresh = sum(size for cid, size in after.items() if cid not in before)
    assert MIB <= fresh <= 6 * MIB
    assert sum(after.values()) == 33 * MIB + 777


def test_the_seed_keys_where_files_are_cut(big_file: Path) -> None:
    mine = [len(c) for c in cs.cut(big_file, PARAMS, SEED)]
    theirs = [len(c) for c in cs.cut(big_file, PARAMS, SEED + 1)]
    assert mine != theirs
    assert mine == [len(c) for c in cs.cut(big_file, PARAMS, SEED)]  # and only the seed
    assert not set(ids_of(big_file, SEED)) & set(ids_of(big_file, SEED + 1))


def test_tiny_limits_still_cut_chunks_that_fit(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(randbytes(200_000) + bytes(50_000))  # long runs of zeros cut nowhere
    for limit in (1024, cs.MIN_LIMIT):
        params = cs.params_for(limit)
        chunks = list(cs.cut(path, params, SEED))
        assert b"".join(chunks) == path.read_bytes()
        sealed = [seal(c) for c in chunks]
        assert max(len(s) for s in sealed) <= limit
        assert b"".join(open_(s) for s in sealed) == path.read_bytes()


def test_seal_file_chunks_pipelined_gives_the_same_chunks(tmp_path: Path) -> None:
    path = tmp_path / "mixed"
    path.write_bytes(randbytes(6 * MIB) + TEXT * 6)
    plain = list(cs.seal_file_chunks(path, SEAL, IDS, SEED, PARAMS))
    piped = list(cs.seal_file_chunks(path, SEAL, IDS, SEED, PARAMS, threads=2))
    assert plain == piped and len(plain) > 4
    assert all(c.digest == cs.sealed_digest(c.sealed) for c in plain)
    assert b"".join(open_(c.sealed) for c in plain) == path.read_bytes()
    assert sum(c.plain_size for c in plain) == path.stat().st_size


@pytest.mark.parametrize("size", [0, 1, 5000, 300_000, 1_000_000])
def test_a_file_smaller_than_a_chunk_is_cut_as_the_stream_would_cut_it(
    tmp_path: Path, size: int
) -> None:
    """Small files are read whole and cut in memory (``cut_buf``): the cuts must be the
    ones the stream reader makes, or dedup would depend on how a file was read."""
    params = cs.params_for(1024 * 1024)  # chunks of 64 KiB to 1 MiB: 300 KB cuts
    path = tmp_path / "f"
    path.write_bytes(random.Random(size).randbytes(size))
    with open(path, "rb", buffering=0) as f:
        streamed = [bytes(c.data) for c in params.chunker(SEED).cut_stream(f)] or [b""]
    cut = list(cs.cut(path, params, SEED))
    assert cut == streamed
    assert size < 1_000_000 or len(cut) > 1  # cuts inside the file: boundaries checked
