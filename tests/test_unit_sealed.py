"""A repository that no server can read (issue 24), on the in-memory broker: no plaintext on
any disk or in any message, dedup per chunk and only within an owner, a changed file sends
only what changed, a wrong password does nothing, a bad copy is read past and repaired."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.session import Progress
from tests.stubcluster import FAST, StubCluster, file_chunks, holds_blob, user_url, wait_for
from warren import messages as m
from warren.errors import EXIT_USAGE, WarrenError

MIB = 1024 * 1024
RUN = 32  # no run of this many bytes of a file may be found anywhere but on the client


def pieces(data: bytes) -> set[bytes]:
    """Every 16-byte piece of ``data`` at offsets divisible by 16: any run of 32 bytes of
    ``data`` holds one whole, so a disk without any of them holds no 32-byte run."""
    return {data[i : i + 16] for i in range(0, len(data) - 15, 16)}


def holds_a_run(blob: bytes, wanted: set[bytes]) -> bool:
    view = memoryview(blob)
    return any(bytes(view[i : i + 16]) in wanted for i in range(len(blob) - 15))


def servers_files(c: StubCluster) -> Iterator[Path]:
    """Every file under the manager's and the workers' data dirs (the client's own files
    are in ``client/`` beside them)."""
    for top in c.base.iterdir():
        if top.is_dir() and top.name != "client":
            yield from (p for p in top.rglob("*") if p.is_file())


def log_text(size: int) -> bytes:
    """Compressible text with random tokens: the kind that compresses 3x and would show
    through any format that only compressed it."""
    rnd = random.Random(7)
    lines: list[bytes] = []
    while sum(len(line) for line in lines) < size:
        token = rnd.getrandbits(64).to_bytes(8, "big").hex()
        lines.append(f"2026-12-07 12:00:{rnd.randrange(60):02d} INFO request {token} ok\n".encode())
    return b"".join(lines)[:size]


def test_no_32_byte_run_of_a_file_reaches_any_disk_or_message(
    stub: StubCluster, tmp_path: Path
) -> None:
    src = tmp_path / "client"
    src.mkdir()
    plain = {"random.bin": os.urandom(300_000), "log.txt": log_text(300_000)}
    for name, data in plain.items():
        (src / name).write_bytes(data)
    with stub.session() as s:
        for name in plain:
            s.upload(src / name, name, 2)
        s.download("log.txt", src / "back.txt")
    assert (src / "back.txt").read_bytes() == plain["log.txt"]
    wanted = set().union(*(pieces(d) for d in plain.values()))
    on_disk = [p for p in servers_files(stub) if holds_a_run(p.read_bytes(), wanted)]
    assert on_disk == [], f"plaintext found on a server's disk: {on_disk}"
    for d in stub.broker.published:
        if d.queue.startswith("warren.client."):
            continue  # a restore's way back to its owner: sealed too, checked by the client
        assert not holds_a_run(d.body, wanted), f"plaintext in a {d.type} to {d.queue}"
    for data in plain.values():  # and yet every replica is there, sealed
        chunks = file_chunks(stub, hashlib.sha256(data).hexdigest())
        assert chunks and sum(c.plain for c in chunks) == len(data)
        for c in chunks:
            assert sum(holds_blob(stub, w, c.sha256) for w in stub.workers) == 2


def sent(results: list[object]) -> int:
    return sum(getattr(r, "sent", 0) for r in results)


def test_two_owners_each_send_the_same_bytes_and_an_owner_again_sends_nothing(
    users: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(200_000)
    (tmp_path / "same.bin").write_bytes(data)
    with users.session(amqp_url=user_url("alice")) as alice:
        first = alice.upload(tmp_path / "same.bin", "same.bin", 2)
    with users.session(amqp_url=user_url("bob")) as bob:
        second = bob.upload(tmp_path / "same.bin", "mine.bin", 2)
    assert first.sent >= len(data) and second.sent >= len(data)  # each sent it all
    with users.session(amqp_url=user_url("alice")) as alice:
        again = alice.upload(tmp_path / "same.bin", "copy.bin", 2)
        assert again.sent == 0 and again.deduplicated
        assert {f.name for f in alice.files()} == {"same.bin", "copy.bin"}
    alice_blobs = {c.sha256 for c in file_chunks(users, first.sha256)}
    bob_blobs = {c.sha256 for c in file_chunks(users, second.sha256, owner="bob")}
    assert alice_blobs and bob_blobs and not alice_blobs & bob_blobs


@pytest.fixture
def big_chunks(tmp_path: Path) -> Iterator[StubCluster]:
    """Chunks of the size the default settings give (about 1 MiB)."""
    c = StubCluster(tmp_path, dataclasses.replace(FAST, chunk_size=4 * MIB))
    try:
        yield c.start(4)
    finally:
        c.stop_all()


def test_1_mib_inserted_mid_file_sends_at_most_6_mib_and_both_versions_restore(
    big_chunks: StubCluster, tmp_path: Path
) -> None:
    old = os.urandom(32 * MIB)
    at = 16 * MIB + 12_345  # unaligned
    new = old[:at] + os.urandom(MIB) + old[at:]
    src = tmp_path / "big.bin"
    with big_chunks.session() as s:
        src.write_bytes(old)
        first = s.upload(src, "big.bin", 2)
        src.write_bytes(new)
        second = s.upload(src, "big.bin", 2)
        assert first.sent >= len(old)
        assert second.sent <= 6 * MIB, f"{second.sent / MIB:.1f} MiB sent for 1 MiB inserted"
        s.download("big.bin", tmp_path / "v1", version=1)
        s.download("big.bin", tmp_path / "v2", version=2)
    assert (tmp_path / "v1").read_bytes() == old
    assert (tmp_path / "v2").read_bytes() == new


def test_a_wrong_password_sends_and_writes_nothing(stub: StubCluster, tmp_path: Path) -> None:
    here = tmp_path / "client"
    here.mkdir()
    (here / "a.txt").write_bytes(b"alpha" * 1000)
    with stub.session() as s:
        s.upload(here / "a.txt", "a.txt", 2)
    wrong = here / "wrong"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    before = len(stub.broker.published)
    with stub.session(password_file=str(wrong)) as s:
        with pytest.raises(WarrenError) as up:
            s.upload(here / "a.txt", "b.txt", 2)
        with pytest.raises(WarrenError) as down:
            s.download("a.txt", here / "out.txt")
    for exc in (up.value, down.value):
        assert exc.exit_code == EXIT_USAGE and "wrong password" in str(exc)
    by_client = [d for d in stub.broker.published[before:] if d.sender.startswith("warren client")]
    assert {d.type for d in by_client} <= {m.KeyGet.TYPE}, by_client
    assert sorted(os.listdir(here)) == ["a.txt", "wrong"]  # no out.txt, no .part


def test_a_flipped_byte_is_read_past_found_by_read_data_and_repaired(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(150_000)
    (tmp_path / "f.bin").write_bytes(data)
    with stub.session() as s:
        result = s.upload(tmp_path / "f.bin", "f.bin", 2)
    chunk = file_chunks(stub, result.sha256)[0]
    victim = result.chain[0]
    path = stub.workers[victim].blobs.blob_path(chunk.sha256)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 1
    path.write_bytes(bytes(blob))
    with stub.session() as s:
        [check] = s.read_data(("f.bin",))
        assert check.ok and check.bad and victim in check.bad[0]
        s.download("f.bin", tmp_path / "back.bin")  # the good copy, whoever serves first
    assert (tmp_path / "back.bin").read_bytes() == data

    copies = [w for w in stub.workers if holds_blob(stub, w, chunk.sha256)]
    assert victim not in copies
    wait_for(
        lambda: sum(holds_blob(stub, w, chunk.sha256) for w in stub.workers) == 2,
        what="a good second copy",
    )
    assert stub.workers[victim].blobs.damaged >= 1  # quarantined where it was found


def test_a_chunk_with_no_good_copy_left_is_exit_5(stub: StubCluster, tmp_path: Path) -> None:
    data = os.urandom(100_000)
    (tmp_path / "f.bin").write_bytes(data)
    with stub.session() as s:
        result = s.upload(tmp_path / "f.bin", "f.bin", 2)
    chunk = file_chunks(stub, result.sha256)[0]
    for w in result.chain:
        path = stub.workers[w].blobs.blob_path(chunk.sha256)
        path.write_bytes(b"\0" + path.read_bytes()[1:])
    with stub.session() as s, pytest.raises(WarrenError) as exc:
        s.download("f.bin", tmp_path / "back.bin", progress=Progress())
    assert exc.value.exit_code == 5
    assert not (tmp_path / "back.bin").exists()
