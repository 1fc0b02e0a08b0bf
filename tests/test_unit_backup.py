"""Snapshots, the client's side: the walk, patterns, manifest, change detection, diff and
restore's choice as pure functions; then backup, snapshots, ls, diff, restore and forget
run as the CLI runs them (``client.__main__.main``) on the in-memory broker."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import backup as backup_module
from client import cli, snap_cmd
from client import snapshot as snapshot_module
from client.backup import Listed, list_snapshots, load_manifest, plan_forget, resolve
from client.snaprestore import TreeRestorer
from client.snapshot import (
    DIR,
    FILE,
    SYMLINK,
    Entry,
    Manifest,
    decode,
    diff,
    encode,
    reuse,
    select,
    walk,
)
from tests.stubcluster import StubCluster
from warren import chunkseal, retention
from warren import messages as m
from warren.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, IntegrityError, NotFound, UsageError

Run = Callable[..., tuple[int, str, str]]
REF = m.ChunkRef("a" * 64, 40, 12)


# -- pure --------------------------------------------------------------------------------


def test_walk_stores_each_path_under_its_last_component_never_following_links(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("not mine to back up")
    top = tmp_path / "home" / "photos"
    (top / "2024").mkdir(parents=True)
    (top / "2024" / "a.jpg").write_bytes(b"jpg")
    (top / "2024" / "a.tmp").write_bytes(b"tmp")
    (top / "cache" / "deep").mkdir(parents=True)
    (top / "cache" / "deep" / "c").write_bytes(b"c")
    (top / "empty").mkdir()
    os.symlink(outside, top / "out")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(top / "sock"))
    notes = tmp_path / "notes.txt"
    notes.write_text("n")
    warnings: list[str] = []
    entries, local = walk([top, notes], ["*.tmp", "cache"], warnings.append)
    sock.close()
    assert [(e.path, e.type) for e in entries] == [
        ("notes.txt", FILE),
        ("photos", DIR),
        ("photos/2024", DIR),
        ("photos/2024/a.jpg", FILE),
        ("photos/empty", DIR),
        ("photos/out", SYMLINK),
    ]
    assert entries[-1].target == str(outside)
    assert local["photos/2024/a.jpg"] == top / "2024" / "a.jpg"
    assert len(warnings) == 1 and "sock" in warnings[0]


def test_a_manifest_round_trips_and_encodes_the_same_tree_to_the_same_bytes(
    tmp_path: Path,
) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_bytes(b"x")
    os.symlink("f", tmp_path / "t" / "l")
    entries, _ = walk([tmp_path / "t"], [], print)
    entries = [e if e.type != FILE else Entry(**{**e.__dict__, "chunks": (REF,)}) for e in entries]
    manifest = Manifest("h", [str(tmp_path / "t")], list(reversed(entries)))
    data = encode(manifest)
    assert decode(data) == Manifest("h", manifest.paths, entries)
    assert encode(decode(data)) == data
    body = json.loads(data)
    assert [e["path"] for e in body["entries"]] == ["t", "t/f", "t/l"]
    assert body["entries"][1]["chunks"] == [["a" * 64, 40, 12]]
    for bad in ("../x", "t/../../x", "/etc/passwd", "t//x"):
        forged = data.replace(b'"t/f"', json.dumps(bad).encode())
        with pytest.raises(IntegrityError):
            decode(forged)


BASE = Entry("p/f", FILE, 0o644, 10, ctime_ns=20, inode=30, size=40, chunks=(REF,))


@pytest.mark.parametrize(
    "change",
    [{"size": 41}, {"mtime_ns": 11}, {"ctime_ns": 21}, {"inode": 31}, {"path": "p/g"}],
)
def test_any_of_path_size_mtime_ctime_inode_changed_means_read_again(
    change: dict[str, object],
) -> None:
    now = Entry(**{**BASE.__dict__, "chunks": ()} | change)
    parent = Manifest("h", ["/p"], [BASE])
    out, todo, new = reuse([now], parent)
    assert todo == [now.path] and out == [now]
    assert new == ({"p/g"} if "path" in change else set())


def test_an_unmodified_file_takes_its_parents_chunks() -> None:
    now = Entry(**{**BASE.__dict__, "chunks": (), "mode": 0o600})  # chmod alone: ctime moves
    parent = Manifest("h", ["/p"], [Entry(**{**BASE.__dict__, "sha256": "b" * 64})])
    out, todo, new = reuse([now], parent)
    assert todo == [] and new == set()
    assert out[0].chunks == (REF,) and out[0].sha256 == "b" * 64 and out[0].mode == 0o600
    assert reuse([now], None)[1:] == (["p/f"], {"p/f"})


def test_diff_says_added_removed_modified_and_metadata_lines() -> None:
    def f(path: str, **kw: object) -> Entry:
        return Entry(**{**BASE.__dict__, "path": path} | kw)

    a = Manifest("h", [], [f("d", type=DIR), f("d/same"), f("d/mod"), f("d/gone"), f("d/ch")])
    b_entries = [f("d", type=DIR), f("d/same"), f("d/mod", chunks=(m.ChunkRef("c" * 64, 1, 1),))]
    b_entries += [f("d/new"), f("d/ch", mode=0o600), f("e", type=DIR)]
    lines, counts = diff(a, Manifest("h", [], b_entries))
    assert lines == [
        ("U", "/d/ch"),
        ("-", "/d/gone"),
        ("M", "/d/mod"),
        ("+", "/d/new"),
        ("+", "/e/"),
    ]
    assert (counts["files_new"], counts["files_removed"], counts["files_changed"]) == (1, 1, 1)
    assert counts["dirs_new"] == 1


def test_restore_picks_by_subpath_include_and_exclude() -> None:
    entries = [
        Entry(p, DIR if "." not in p else FILE, 0o755, 1)
        for p in ("ph", "ph/24", "ph/24/a.jpg", "ph/24/b.png", "ph/x", "ph/x/c.jpg", "ph/t.jpg")
    ]
    man = Manifest("h", ["/home/me/ph"], entries)
    rels = [rel for _, rel in select(man, "", ["*.jpg"], ["x"])]
    assert rels == ["ph", "ph/24", "ph/24/a.jpg", "ph/t.jpg"]
    assert [rel for _, rel in select(man, "ph/24", [], [])] == ["a.jpg", "b.png"]
    assert [rel for _, rel in select(man, "/home/me/ph/24", [], ["*.png"])] == ["a.jpg"]


def _listed(i: str, t: float, host: str = "h") -> Listed:
    return Listed(m.SnapshotEntry(i, t, host, (), ""), ("/p",))


def test_ids_resolve_by_latest_or_a_unique_prefix_and_forget_plans_by_policy() -> None:
    snaps = [_listed("abcd0" + "0" * 11, 1.0), _listed("abcd1" + "0" * 11, 2.0)]
    snaps.append(_listed("ffff" + "0" * 12, 3.0, host="other"))
    assert resolve(snaps, "latest").id.startswith("ffff")
    assert resolve(snaps, "abcd1").id.startswith("abcd1")
    assert resolve(snaps, "ffff").id.startswith("ffff")
    with pytest.raises(UsageError, match="at least 4"):
        resolve(snaps, "fff")
    with pytest.raises(UsageError, match="start of 2 snapshots"):
        resolve(snaps, "abcd")
    with pytest.raises(NotFound):
        resolve(snaps, "0123")
    plan = plan_forget(snaps, [], retention.Policy(last=1))
    assert plan.remove == ["abcd0" + "0" * 11]  # each host's group keeps its newest
    assert plan_forget(snaps, ["ffff"], retention.Policy()).remove == ["ffff" + "0" * 12]


# -- on the in-memory broker -----------------------------------------------------------------


@pytest.fixture
def run(
    stub: StubCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Run]:
    """``run(*argv)``: (exit code, stdout, stderr) of the command as ``main`` runs it."""
    from client.__main__ import main

    def go(*argv: str) -> tuple[int, str, str]:
        session = stub.session(request_timeout=10.0)

        def opened(*_a: object, **_k: object) -> object:
            session.open()
            return session

        monkeypatch.setattr(cli, "open_session", opened)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield go


def _summary(out: str) -> dict[str, object]:
    last = json.loads(out.strip().splitlines()[-1])
    assert last["message_type"] == "summary"
    return dict(last)


def _tree(root: Path) -> dict[str, tuple[str, int, int, bytes | str]]:
    """Every path under ``root``: kind, mode, mtime_ns, and bytes or link target."""
    out: dict[str, tuple[str, int, int, bytes | str]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("l", 0, st.st_mtime_ns, os.readlink(p))
        elif p.is_dir():
            out[rel] = ("d", stat.S_IMODE(st.st_mode), st.st_mtime_ns, b"")
        else:
            out[rel] = ("f", stat.S_IMODE(st.st_mode), st.st_mtime_ns, p.read_bytes())
    return out


def test_two_snapshots_of_a_changing_tree_each_restore_exactly(run: Run, stub: StubCluster) -> None:
    home = stub.base / "client" / "home"
    top = home / "docs"
    (top / "sub").mkdir(parents=True)
    (top / "keep.txt").write_bytes(b"kept " * 999)
    (top / "sub" / "change.bin").write_bytes(os.urandom(300_000))
    (top / "gone.txt").write_bytes(b"gone")
    (top / "mode.sh").write_bytes(b"#!/bin/sh\n")
    (top / "empty").mkdir()
    (top / "ro").mkdir()
    (top / "ro" / "in").write_bytes(b"in a folder no one may write")
    (top / "ro").chmod(0o555)  # its mode comes back after its contents are written
    (top / "sub").chmod(0o750)
    os.symlink("keep.txt", top / "link")
    os.utime(top / "keep.txt", ns=(1_500_000_000_123_456_789,) * 2)
    os.utime(top / "empty", ns=(1_400_000_000_000_000_000,) * 2)
    first = _tree(home)
    code, out, err = run("backup", str(top), "--json", "--tag", "one")
    assert code == EXIT_OK, err
    s1 = _summary(out)
    assert (s1["files_new"], s1["files_changed"], s1["files_unmodified"]) == (5, 0, 0)

    (top / "sub" / "change.bin").write_bytes(os.urandom(200_000))
    (top / "gone.txt").unlink()
    (top / "new.txt").write_bytes(b"new")
    (top / "mode.sh").chmod(0o700)
    (top / "empty" / "now").mkdir()
    second = _tree(home)
    code, out, err = run("backup", str(top), "--json")
    assert code == EXIT_OK, err
    s2 = _summary(out)
    assert (s2["files_new"], s2["files_changed"], s2["files_unmodified"]) == (1, 2, 2)

    code, out, _ = run("snapshots", "--json")
    listed = json.loads(out)
    assert [s["id"] for s in listed] == [s1["snapshot_id"], s2["snapshot_id"]]
    assert listed[0]["paths"] == [str(top)] and listed[0]["tags"] == ["one"]
    for snap, want in ((s1, first), (s2, second)):
        target = stub.base / "client" / f"out-{snap['snapshot_id']}"
        code, _, err = run("restore", str(snap["snapshot_id"])[:6], "-o", str(target))
        assert code == EXIT_OK, err
        assert _tree(target) == want
    code, out, _ = run("diff", str(s1["snapshot_id"]), "latest")
    assert code == EXIT_OK
    for line in ("-    /docs/gone.txt", "+    /docs/new.txt", "M    /docs/sub/change.bin"):
        assert line in out.splitlines()
    code, out, _ = run("ls", "latest", "docs/sub", "--json")
    assert [json.loads(x).get("path") for x in out.splitlines()[1:]] == ["/docs/sub/change.bin"]


def test_an_unchanged_re_backup_of_500_files_reads_and_sends_nothing(
    run: Run, stub: StubCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = stub.base / "client" / "many"
    top.mkdir(parents=True)
    for i in range(500):
        (top / f"f{i:03}").write_bytes(f"file {i}\n".encode())
    monkeypatch.setattr(snap_cmd, "STATUS_EVERY", 0.0)  # every status line, not two a second
    code, out, err = run("backup", str(top), "--json")
    assert code == EXIT_OK, err
    assert _summary(out)["files_new"] == 500
    status = [json.loads(line) for line in out.splitlines()[:-1]]
    assert status and {s["message_type"] for s in status} == {"status"}
    assert status[-1]["files_done"] == status[-1]["total_files"] == 500
    reads: list[Path] = []
    real_cut = chunkseal.cut

    def counting(path: Path, params: chunkseal.ChunkParams, seed: int) -> Iterator[bytes]:
        reads.append(path)
        return real_cut(path, params, seed)

    monkeypatch.setattr(chunkseal, "cut", counting)
    code, out, err = run("backup", str(top), "--json")
    assert code == EXIT_OK, err
    s = _summary(out)
    assert (s["files_unmodified"], s["files_new"], s["files_changed"]) == (500, 0, 0)
    assert s["bytes_sent"] == 0  # the manifest did not change: its chunks are stored
    assert not [p for p in reads if top in p.parents]
    assert len(reads) == 1  # the manifest's temp file only
    code, out, err = run("backup", str(top), "--json", "--host", "elsewhere")
    assert code == EXIT_OK, err
    assert _summary(out)["files_new"] == 500  # another host's snapshot is no parent


def test_a_restore_never_writes_through_a_link_in_its_folder(run: Run, stub: StubCluster) -> None:
    top = stub.base / "client" / "docs"
    top.mkdir(parents=True)
    (top / "a").write_bytes(b"a")
    assert run("backup", str(top))[0] == EXIT_OK
    target, elsewhere = stub.base / "client" / "out", stub.base / "client" / "elsewhere"
    target.mkdir()
    elsewhere.mkdir()
    os.symlink(elsewhere, target / "docs")
    code, _, err = run("restore", "latest", "-o", str(target))
    assert code == EXIT_USAGE and "symbolic link" in err
    assert list(elsewhere.iterdir()) == []


def test_a_manifest_that_is_not_the_one_its_meta_names_is_refused(
    run: Run, stub: StubCluster
) -> None:
    top = stub.base / "client" / "docs"
    top.mkdir(parents=True)
    (top / "a").write_bytes(b"a")
    assert run("backup", str(top))[0] == EXIT_OK
    with stub.session() as s:
        snap = list_snapshots(s, s.owner_keys())[-1]
        assert load_manifest(s, s.owner_keys(), snap).paths == [str(top)]
        with pytest.raises(IntegrityError, match="SHA-256"):
            load_manifest(s, s.owner_keys(), dataclasses.replace(snap, manifest_sha256="0" * 64))
        manifest = load_manifest(s, s.owner_keys(), snap)
        [(entry, rel)] = [(e, rel) for e, rel in select(manifest, "", [], []) if e.type == FILE]
        restorer = TreeRestorer(s, stub.base / "client" / "out")
        restorer.run([(dataclasses.replace(entry, sha256="0" * 64), rel)])
    [(what, error)] = restorer.errors
    assert what == "docs/a" and isinstance(error, IntegrityError)
    assert list((stub.base / "client" / "out" / "docs").iterdir()) == []  # no .part left


def test_forget_dry_run_changes_nothing_and_keep_last_keeps_one(
    run: Run, stub: StubCluster
) -> None:
    top = stub.base / "client" / "f"
    top.mkdir(parents=True)
    for i in range(3):
        (top / "x").write_bytes(b"v%d" % i)
        assert run("backup", str(top), "--json")[0] == EXIT_OK
    ids = [s["id"] for s in json.loads(run("snapshots", "--json")[1])]
    assert len(ids) == 3
    assert run("forget")[0] == EXIT_USAGE
    code, out, _ = run("forget", "--keep-last", "1", "--dry-run", "--json")
    assert code == EXIT_OK
    [group] = json.loads(out)
    assert [s["id"] for s in group["remove"]] == ids[1::-1]
    assert [s["id"] for s in group["keep"]] == ids[2:]
    assert [s["id"] for s in json.loads(run("snapshots", "--json")[1])] == ids
    assert not [p for p in stub.broker.published if p.type == m.ForgetRequest.TYPE]
    code, out, _ = run("forget", "--keep-last", "1")
    assert code == EXIT_OK
    assert [s["id"] for s in json.loads(run("snapshots", "--json")[1])] == ids[2:]


def test_a_file_that_vanishes_is_left_out_and_the_snapshot_said_incomplete(
    run: Run, stub: StubCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = stub.base / "client" / "u"
    top.mkdir(parents=True)
    (top / "ok").write_bytes(b"ok")
    (top / "vanishes").write_bytes(b"no")
    (top / "grows").write_bytes(b"short")
    real_walk = snapshot_module.walk

    def walk_then_delete(
        paths: list[Path], excludes: list[str], warn: Callable[[str], None]
    ) -> tuple[list[Entry], dict[str, Path]]:
        walked = real_walk(paths, excludes, warn)
        (top / "vanishes").unlink()  # after the walk, before it is read
        with open(top / "grows", "ab") as f:
            f.write(b" and longer")
        return walked

    monkeypatch.setattr(backup_module, "walk", walk_then_delete)  # as backup calls it
    code, out, err = run("backup", str(top), "--json")
    assert code == EXIT_FAILURE and "incomplete" in err and "u/vanishes" in err
    s = _summary(out)
    assert s["failed"] == ["u/vanishes"] and s["files_new"] == 2
    code, out, _ = run("ls", "latest", "--json")
    nodes = [json.loads(x) for x in out.splitlines()[1:]]
    assert [(n["path"], n["size"]) for n in nodes] == [("/u", 0), ("/u/grows", 16), ("/u/ok", 2)]
    target = stub.base / "client" / "r"
    assert run("restore", "latest", "-o", str(target))[0] == EXIT_OK
    assert (target / "u" / "grows").read_bytes() == b"short and longer"


def test_no_file_name_reaches_a_server(run: Run, stub: StubCluster) -> None:
    names = ("zebra-holiday-Aq7", "quokka-taxes-Zp3", "walrus-diary-Mb9")
    top = stub.base / "client" / names[0]
    (top / names[1]).mkdir(parents=True)
    (top / names[1] / names[2]).write_bytes(b"secret " * 100)
    assert run("backup", str(top), "--json", "--host", "h")[0] == EXIT_OK
    assert run("snapshots", "--json")[0] == EXIT_OK
    assert run("restore", "latest", "-o", str(stub.base / "client" / "r"))[0] == EXIT_OK
    for path in stub.base.rglob("*"):
        if path.is_file() and stub.base / "client" not in path.parents:
            data = path.read_bytes()
            assert not [n for n in names if n.encode() in data], path
    for msg in stub.broker.published:
        if msg.queue.startswith("warren.client."):
            continue
        seen = msg.body + json.dumps(msg.headers, default=str).encode()
        assert not [n for n in names if n.encode() in seen], (msg.queue, msg.type)
