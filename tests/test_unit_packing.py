"""How an upload command groups files (small ones into packs, large ones alone), and hashes
the large ones on a thread of their own."""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

from client.outcomes import Progress
from client.upload import PACK_FILE_MAX, PACK_FILES, Hasher, Pack, Upload, next_unit
from warren.errors import WarrenError


def plan(paths: list[Path]) -> tuple[list[list[str]], list[str]]:
    """The uploads an upload command would make, as lists of names; and the failures."""
    todo = collections.deque((p, p.name) for p in paths)
    failed: list[str] = []

    def done(name: str, outcome: object) -> None:
        assert isinstance(outcome, WarrenError)
        failed.append(name)

    units: list[list[str]] = []
    while todo:
        up = next_unit(todo, 1024 * 1024, lambda _n: Progress(), done)
        if isinstance(up, Pack):
            units.append([u.name for u in up.members])
            for u in up.members:
                assert u.sha256 == hashlib.sha256(u.path.read_bytes()).hexdigest()
                assert u.data == u.path.read_bytes()
        elif isinstance(up, Upload):
            assert up.data == b""  # sent in chunks from the file
            units.append([up.name])
    return units, failed


def files(folder: Path, sizes: list[int], prefix: str = "f") -> list[Path]:
    paths = []
    for i, size in enumerate(sizes):
        p = folder / f"{prefix}{i:04}"
        p.write_bytes(b"x" * size)
        paths.append(p)
    return paths


def test_small_files_go_together_and_large_ones_alone(tmp_path: Path) -> None:
    small = files(tmp_path, [10, 0, 4096], "s")
    big = files(tmp_path, [PACK_FILE_MAX + 1], "b")
    more = files(tmp_path, [5, 6], "t")
    units, failed = plan(small + big + more)
    assert units == [["s0000", "s0001", "s0002"], ["b0000"], ["t0000", "t0001"]]
    assert failed == []


def test_a_pack_stops_at_its_file_count_and_at_the_chunk_size(tmp_path: Path) -> None:
    units, _ = plan(files(tmp_path, [1] * (PACK_FILES + 5)))
    assert [len(u) for u in units] == [PACK_FILES, 5]
    quarter = PACK_FILE_MAX  # four of these fill a 1 MiB pack
    units, _ = plan(files(tmp_path, [quarter] * 6, "q"))
    assert [len(u) for u in units] == [4, 2]


def test_a_lone_small_file_is_a_plain_upload_and_so_is_a_missing_one(tmp_path: Path) -> None:
    [only] = files(tmp_path, [3])
    assert plan([only]) == ([[only.name]], [])
    # A missing file is no pack member: it fails alone, as a plain upload ("no such file")
    a, b, c = files(tmp_path, [1, 2, 3], "m")
    b.unlink()
    units, failed = plan([a, b, c])
    assert units == [[a.name], [b.name], [c.name]]
    assert failed == []


class Boom(Progress):
    def hashing(self, done: int, total: int) -> None:
        raise RuntimeError("boom")


def test_the_hasher_gives_each_file_its_hash_or_its_sentence(tmp_path: Path) -> None:
    # Given a good file, a missing one, and one whose progress hook is broken, in that order
    good, missing, hooked = files(tmp_path, [PACK_FILE_MAX + 1, 1, PACK_FILE_MAX + 2])
    missing.unlink()
    ups = [Upload(good, "good", Progress()), Upload(missing, "missing", Progress())]
    ups.append(Upload(hooked, "hooked", Boom()))
    woken: list[int] = []
    hasher = Hasher(lambda: woken.append(1))
    try:
        # When they are hashed
        for up in ups:
            hasher.add(up)
        assert all(up.hashed.wait(10) for up in ups)
    finally:
        hasher.stop()
    # Then each has its size and hash, or the sentence that says why not, and the hasher
    # went on to the next file after each failure
    assert ups[0].size == PACK_FILE_MAX + 1
    assert ups[0].sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert ups[0].error is None
    assert str(ups[1].error) == f"{missing}: no such file."
    assert str(ups[2].error) == f"{hooked}: hashing it failed (boom)."
    assert len(woken) == 3
