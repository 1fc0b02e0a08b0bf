"""The menu's snapshot entries, driven in-process on the in-memory broker.

Keys come from a script instead of a terminal, and every typed line from a list: the
menu's own code runs as it does in a terminal (its chooser, its path prompt, its error
handling), only the keyboard and ``input`` are stand-ins. ``tests/test_menu.py`` drives
the real program in a pseudo-terminal on RabbitMQ; these run in a second.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rich.console import Console

from client import menu
from tests.stubcluster import StubCluster
from warren import errors

BACKUP, SNAPSHOTS, RESTORE, QUIT = "7", "8", "9", "11"  # the main menu's numbers


class ScriptedKeys:
    """The keyboard, replaced by the keys a person would press, in order ("11" is two)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = list("".join(keys))

    @contextlib.contextmanager
    def cbreak(self) -> Iterator[None]:
        yield

    def read(self) -> str:
        if not self.keys:
            raise AssertionError("the menu asked for a key after the script ended")
        return self.keys.pop(0)


Drive = Callable[[list[str], list[str]], tuple[int, str, str]]


@pytest.fixture
def drive(stub: StubCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Drive]:
    """``drive(keys, lines)``: the menu run on the stub cluster until it quits; its exit
    status, what it printed and what it said on stderr."""
    session = stub.session(request_timeout=10.0)
    session.open()
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # Menu asks for its fileno only
    monkeypatch.setattr(sys.stdin, "fileno", lambda: 0)

    def go(keys: list[str], lines: list[str]) -> tuple[int, str, str]:
        def typed(_prompt: str = "") -> str:
            if not lines:
                raise AssertionError("the menu asked for a line after the script ended")
            return lines.pop(0)

        monkeypatch.setattr(builtins, "input", typed)
        out, err = io.StringIO(), io.StringIO()
        m = menu.Menu(
            session,
            Console(file=out, width=250, highlight=False),
            Console(file=err, width=250, highlight=False, soft_wrap=True),
            quiet=True,
        )
        script = ScriptedKeys(keys)
        m.keys = script  # type: ignore[assignment]
        code = m.run(session.status())
        assert not script.keys and not lines, f"left unused: {script.keys} {lines}"
        return code, out.getvalue(), err.getvalue()

    try:
        yield go
    finally:
        session.close()


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture
def album(stub: StubCluster) -> Path:
    """A folder of two files in a subfolder, neither small enough to be trivial."""
    folder = stub.base / "client" / "album"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(os.urandom(150_000))
    (folder / "sub" / "b.txt").write_bytes(b"second file\n" * 100)
    return folder


def test_a_folder_backed_up_from_the_menu_is_in_its_list_of_snapshots(
    drive: Drive, album: Path
) -> None:
    # When they back up the folder by its path, then look at the snapshots
    code, out, err = drive([BACKUP, SNAPSHOTS, QUIT], [str(album)])

    # Then the backup says which snapshot it made, what it read and what it sent
    assert code == errors.EXIT_OK, err
    saved = re.search(
        r"snapshot ([0-9a-f]{8}) saved: 2 new, 0 changed, 0 unmodified files; ([\d.]+ \w+) sent",
        out,
    )
    assert saved, out
    # And the list, after it, names that snapshot with this folder's path
    listed = out[out.index("› snapshots") :]
    row = next((line for line in listed.splitlines() if saved[1] in line), "")
    assert str(album) in row, listed
    assert "1 snapshots" in listed
    assert err == ""


def test_a_snapshot_restored_from_the_menu_is_the_folder_byte_for_byte(
    drive: Drive, album: Path, stub: StubCluster
) -> None:
    # Given a snapshot of the folder taken from the menu, then the folder's files changed
    target = stub.base / "client" / "restored"
    want = tree(album)

    # When they pick it from the list and restore it into a new folder
    code, out, err = drive([BACKUP, RESTORE, "1", QUIT], [str(album), str(target)])

    # Then every file comes back under the folder's name, the same bytes, and it says so
    assert code == errors.EXIT_OK, err
    snapshot = re.findall(r"snapshot ([0-9a-f]{8}) saved", out)[0]
    assert f"restored 2 files of snapshot {snapshot} to {target}" in out
    assert tree(target / "album") == want
    assert err == ""


def test_a_folder_that_does_not_exist_is_one_sentence_and_the_menu_goes_on(
    drive: Drive, stub: StubCluster
) -> None:
    # When they give a folder that is not there, then ask for the snapshots
    missing = stub.base / "client" / "nowhere"
    code, out, err = drive([BACKUP, SNAPSHOTS, QUIT], [str(missing)])

    # Then it is said in one sentence, no snapshot is made, and the menu carried on
    assert err == f"error: {missing} is not a folder.\n"
    assert "0 snapshots" in out[out.index("› snapshots") :]
    assert code == errors.EXIT_OK
