"""A restore is never turned against the user who runs it, on the in-memory broker.

What a catalog (or whoever wrote into it) says about a file, its name and its mode, and
what sits in the destination folder (symbolic links someone planted), must not make a
restore write outside the folder it was asked to fill, change another file, or hand back a
setuid program. The services' own files are private. Asserted on what a user sees: bytes
and modes on disk, exit codes, the sentences on stderr.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.args import build_parser
from client.cli import App
from client.session import Session
from tests.stubcluster import StubCluster
from warren import errors
from warren import messages as m
from warren.errors import UsageError
from warren.testing import Message


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubCluster]:
    c = StubCluster(tmp_path / "cluster")
    try:
        yield c.start(2)
    finally:
        c.stop_all()


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def download(s: Session, *argv: str) -> int:
    """``warren download ARGV`` over the session ``s``: its exit code (a raised
    WarrenError becomes its code, as ``client.__main__`` does)."""
    try:
        return App(build_parser().parse_args(["download", *argv])).download(s)
    except errors.WarrenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def test_a_tree_restore_never_writes_through_a_symlinked_folder_under_dir(
    stub: StubCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere)  # planted: out/sub/... would land in elsewhere/
    with stub.session() as s:
        s.upload(write(tmp_path / "a", b"a"), "docs/sub/a.txt", 1)
        s.upload(write(tmp_path / "c", b"c"), "docs/sub/deeper/c.txt", 1)
        s.upload(write(tmp_path / "b", b"b"), "docs/b.txt", 1)
        code = download(s, "docs/", "-o", str(out))
    err = capsys.readouterr().err
    assert code == errors.EXIT_USAGE
    assert list(elsewhere.iterdir()) == []
    assert (out / "b.txt").read_bytes() == b"b"
    assert err.count("is a symbolic link") == 2 and str(out / "sub") in err


def test_a_single_download_onto_a_symlink_needs_force_and_replaces_the_link(
    stub: StubCluster, tmp_path: Path
) -> None:
    victim = write(tmp_path / "victim", b"keep me", 0o600)
    out = tmp_path / "out"
    out.mkdir()
    (out / "dangling").symlink_to(tmp_path / "nothing-yet")
    (out / "link").symlink_to(victim)
    with stub.session() as s:
        s.upload(write(tmp_path / "f", b"restored", 0o640), "f", 1)
        for name in ("dangling", "link"):
            with pytest.raises(UsageError, match="symbolic link"):
                s.download("f", out / name)
        assert not (tmp_path / "nothing-yet").exists()
        s.download("f", out / "link", overwrite=True)
    assert victim.read_bytes() == b"keep me" and stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert not (out / "link").is_symlink() and (out / "link").read_bytes() == b"restored"
    assert stat.S_IMODE((out / "link").stat().st_mode) == 0o640


def test_mode_and_mtime_go_on_the_file_not_on_a_path_swapped_for_a_link(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever can write the folder swaps the restored file for a link to a file of the
    user's right after the rename: a chmod by path would make that file 0755."""
    victim = write(tmp_path / "victim", b"secret", 0o600)
    os.utime(victim, (1_000_000_000, 1_000_000_000))
    out = tmp_path / "out"
    out.mkdir()
    src = write(tmp_path / "src", b"#!/bin/sh\n", 0o755)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    real_replace = os.replace

    def replace_then_swap(a: Any, b: Any, **kw: Any) -> None:
        real_replace(a, b, **kw)
        if os.path.basename(b) == "tool":
            real_replace(out / "tool", out / "moved")
            (out / "tool").symlink_to(victim)

    with stub.session() as s:
        s.upload(src, "tool", 1)
        monkeypatch.setattr(os, "replace", replace_then_swap)
        s.download("tool", out / "tool")
    st = victim.stat()
    assert (stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (0o600, 1_000_000_000)
    st = (out / "moved").stat()
    assert (stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (0o755, 1_600_000_000)


def test_setuid_and_setgid_come_back_only_for_root_with_keep_setid(
    stub: StubCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with stub.session() as s:
        s.upload(write(tmp_path / "suid", b"#!/bin/sh\n", 0o6755), "suid", 1)
        s.upload(write(tmp_path / "plain", b"#!/bin/sh\n", 0o755), "plain", 1)
        capsys.readouterr()
        assert download(s, "suid", "-o", str(out / "a")) == 0
        assert download(s, "plain", "-o", str(out / "p")) == 0
        err = capsys.readouterr().err
        if os.geteuid() == 0:
            assert download(s, "suid", "-o", str(out / "b"), "--keep-setid") == 0
            assert stat.S_IMODE((out / "b").stat().st_mode) == 0o6755
        capsys.readouterr()
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        assert download(s, "suid", "-o", str(out / "c"), "--keep-setid") == 0
        err_c = capsys.readouterr().err
    assert stat.S_IMODE((out / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "c").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "p").stat().st_mode) == 0o755
    # one note, for the file that had them
    assert err.count("note:") == 1 and "setuid" in err and "suid" in err
    assert err_c.count("note:") == 1


def test_a_bad_name_in_the_catalog_skips_that_file_and_the_others_are_restored(
    stub: StubCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "deep" / "out"  # made by the restore, with its parents
    with stub.session() as s:
        for name in ("t/ok", "t/../x", "t//abs", "t/nul", "t/z/ok2"):
            s.upload(write(tmp_path / "src", name.encode()), name, 1)

        def nul_name(msg: Message) -> list[Message]:
            # No upload may name a file with a NUL; a catalog from elsewhere might.
            if msg.type == m.ListReply.TYPE:
                reply = m.ListReply.decode(msg.body)
                files = tuple(
                    dataclasses.replace(f, name="t/n\x00ul") if f.name == "t/nul" else f
                    for f in reply.files
                )
                body = dataclasses.replace(reply, files=files).encode()
                return [dataclasses.replace(msg, body=body)]
            return [msg]

        stub.broker.intercept = nul_name
        capsys.readouterr()
        code = download(s, "t/", "-o", str(out))
        stub.broker.intercept = None
    err = capsys.readouterr().err
    assert code == errors.EXIT_USAGE
    assert (out / "ok").read_bytes() == b"t/ok" and (out / "z" / "ok2").read_bytes() == b"t/z/ok2"
    assert sorted(p.name for p in out.iterdir()) == ["ok", "z"]
    assert not (tmp_path / "deep" / "x").exists()
    assert err.count("skipped") == 3, err
    assert "'t/../x'" in err and "'t//abs'" in err and "'t/n\\x00ul'" in err


def test_the_catalog_and_the_data_dirs_are_private(tmp_path: Path) -> None:
    """Made so at start, whatever the umask; folders and a catalog already there too."""
    base = tmp_path / "cluster"
    manager_dir, worker_dir = base / "manager", base / "workers" / "w1"
    manager_dir.mkdir(parents=True, mode=0o755)
    worker_dir.mkdir(parents=True, mode=0o755)
    (manager_dir / "catalog.sqlite3").touch(mode=0o644)  # an empty file is an empty catalog
    old = os.umask(0o022)
    try:
        c = StubCluster(base).start(2)
        try:
            with c.session() as s:
                s.upload(write(tmp_path / "f", b"x"), "f", 1)  # the WAL is written
            modes = {
                p.name: stat.S_IMODE(p.stat().st_mode)
                for p in (
                    manager_dir,
                    worker_dir,
                    base / "workers" / "w2",
                    *manager_dir.glob("catalog.sqlite3*"),
                )
            }
        finally:
            c.stop_all()
    finally:
        os.umask(old)
    assert {"catalog.sqlite3-wal", "catalog.sqlite3-shm"} <= set(modes)
    assert modes == {
        "manager": 0o700,
        "w1": 0o700,
        "w2": 0o700,
        "catalog.sqlite3": 0o600,
        "catalog.sqlite3-wal": 0o600,
        "catalog.sqlite3-shm": 0o600,
    }
