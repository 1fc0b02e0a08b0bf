"""Owners' keys on the in-memory broker: init, key add|list|remove|passwd, unlock, and the
keys' records on the workers that a rebuilt catalog takes back (and a forged one it does
not). Commands run as the CLI runs them (``client.__main__.main``), over a stub session."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import cli
from client.owner import unlock
from manager.records import _KEY
from tests.stubcluster import StubCluster, user_url, wait_for
from warren import messages as m
from warren import ownerkey
from warren.errors import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Refused,
    UsageError,
)
from warren.ownerkey import WrongPassword
from warren.sealing import Sealer
from warren.testing import Message
from worker.records import LOG, append_records

SMALL_N = 2**4  # WARREN_SCRYPT_N as the suite sets it

Run = Callable[..., tuple[int, str, str]]


def pw_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def run(
    users: StubCluster, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Run]:
    """``run(user, password_file, *argv)``: (exit code, stdout, stderr) of the command, run
    by ``main`` as a user would, as broker user ``user``."""
    from client.__main__ import main

    def go(user: str, password: Path | None, *argv: str) -> tuple[int, str, str]:
        session = users.session(
            amqp_url=user_url(user),
            password_file=str(password or ""),
            scrypt_n=SMALL_N,
            request_timeout=10.0,
        )

        def opened(*_a: object, **_k: object) -> object:
            session.open()
            return session

        monkeypatch.setattr(cli, "open_session", opened)
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield go


def key_ids(run: Run, user: str) -> list[str]:
    code, out, _ = run(user, None, "key", "list", "--json")
    assert code == EXIT_OK
    return [k["id"] for k in json.loads(out)]


def unlocked(c: StubCluster, user: str, password: Path) -> ownerkey.OwnerKeys:
    with c.session(amqp_url=user_url(user), password_file=str(password)) as s:
        return unlock(s)


def test_init_once_then_it_says_already(run: Run, users: StubCluster, tmp_path: Path) -> None:
    pw = pw_file(tmp_path, "pw", "s3cret")
    code, out, err = run("alice", pw, "init")
    assert code == EXIT_OK, err
    assert "created the key of alice" in out
    first = key_ids(run, "alice")
    keys = unlocked(users, "alice", pw)

    code, out, err = run("alice", pw, "init")
    assert code == EXIT_OK, err
    assert "already" in out and first[0] in out
    assert key_ids(run, "alice") == first  # no second key, the same master
    assert unlocked(users, "alice", pw) == keys

    wrong = pw_file(tmp_path, "wrong", "guess")
    code, out, err = run("alice", wrong, "init")
    assert code == EXIT_USAGE and "wrong password" in err and "Traceback" not in err
    assert key_ids(run, "alice") == first


def test_a_wrong_password_sends_nothing_but_the_key_fetch(
    run: Run, users: StubCluster, tmp_path: Path
) -> None:
    pw, wrong, new = (pw_file(tmp_path, n, n + "-pw") for n in ("pw", "wrong", "new"))
    assert run("alice", pw, "init")[0] == EXIT_OK
    sent: list[str] = []

    def watch(msg: Message) -> list[Message]:
        if msg.user_id == "alice":
            sent.append(msg.type)
        return [msg]

    users.broker.intercept = watch
    code, _, err = run("alice", wrong, "key", "add", "--new-password-file", str(new))
    assert code == EXIT_USAGE and err.startswith("error: wrong password"), err
    assert sent == [m.KeyGet.TYPE]
    sent.clear()
    with pytest.raises(WrongPassword):
        unlocked(users, "alice", wrong)
    assert sent == [m.KeyGet.TYPE]
    users.broker.intercept = None
    assert len(key_ids(run, "alice")) == 1


def test_no_key_yet_is_told_to_run_init(run: Run, users: StubCluster, tmp_path: Path) -> None:
    pw = pw_file(tmp_path, "pw", "pw")
    with pytest.raises(UsageError, match="no key yet for carol: run `.*init` first"):
        unlocked(users, "carol", pw)
    new = pw_file(tmp_path, "new", "new")
    code, _, err = run("carol", pw, "key", "add", "--new-password-file", str(new))
    assert code == EXIT_USAGE and "no key yet for carol" in err and "init" in err
    assert key_ids(run, "carol") == []


def test_key_add_then_either_password_opens_the_same_keys(
    run: Run, users: StubCluster, tmp_path: Path
) -> None:
    pw, laptop = pw_file(tmp_path, "pw", "desk"), pw_file(tmp_path, "laptop", "lap")
    assert run("alice", pw, "init")[0] == EXIT_OK
    code, out, err = run("alice", pw, "key", "add", "--new-password-file", str(laptop))
    assert code == EXIT_OK, err
    ids = key_ids(run, "alice")
    assert len(ids) == 2 and ids[1] in out
    assert unlocked(users, "alice", pw) == unlocked(users, "alice", laptop)


def test_the_last_key_cannot_be_removed(run: Run, users: StubCluster, tmp_path: Path) -> None:
    pw, other = pw_file(tmp_path, "pw", "one"), pw_file(tmp_path, "other", "two")
    assert run("alice", pw, "init")[0] == EXIT_OK
    [only] = key_ids(run, "alice")
    code, _, err = run("alice", None, "key", "remove", only)
    assert code == EXIT_REFUSED and "last key" in err, err
    assert key_ids(run, "alice") == [only]
    code, _, err = run("alice", None, "key", "remove", "0123456789abcdef")
    assert code == EXIT_NOT_FOUND, err

    assert run("alice", pw, "key", "add", "--new-password-file", str(other))[0] == EXIT_OK
    assert run("alice", None, "key", "remove", only)[0] == EXIT_OK
    assert len(key_ids(run, "alice")) == 1
    with pytest.raises(WrongPassword):
        unlocked(users, "alice", pw)
    unlocked(users, "alice", other)


def test_key_passwd_swaps_the_password(run: Run, users: StubCluster, tmp_path: Path) -> None:
    old, new = pw_file(tmp_path, "old", "old"), pw_file(tmp_path, "new", "new")
    assert run("alice", old, "init")[0] == EXIT_OK
    keys = unlocked(users, "alice", old)
    code, out, err = run("alice", old, "key", "passwd", "--new-password-file", str(new))
    assert code == EXIT_OK, err
    assert "password changed" in out and len(key_ids(run, "alice")) == 1
    assert unlocked(users, "alice", new) == keys
    with pytest.raises(WrongPassword):
        unlocked(users, "alice", old)


def test_another_owner_cannot_see_or_remove_my_keys(
    run: Run, users: StubCluster, tmp_path: Path
) -> None:
    pw = pw_file(tmp_path, "pw", "alice's")
    assert run("alice", pw, "init")[0] == EXIT_OK
    [mine] = key_ids(run, "alice")
    assert key_ids(run, "bob") == []
    with users.session(amqp_url=user_url("bob")) as s:
        assert s.request(m.KeyGet(), m.KeyListReply).keys == ()
    code, _, err = run("bob", None, "key", "remove", mine)
    assert code == EXIT_NOT_FOUND, err
    # bob's init makes bob's key, however alice's password is
    assert run("bob", pw, "init")[0] == EXIT_OK
    assert key_ids(run, "alice") == [mine] and key_ids(run, "bob") != [mine]
    assert unlocked(users, "alice", pw) != unlocked(users, "bob", pw)


def test_a_password_file_others_can_read_is_refused(
    run: Run, users: StubCluster, tmp_path: Path
) -> None:
    pw = pw_file(tmp_path, "pw", "pw")
    pw.chmod(0o644)
    code, _, err = run("alice", pw, "init")
    assert code == EXIT_USAGE and "chmod 600" in err, err
    assert key_ids(run, "alice") == []


def test_without_a_password_file_or_terminal_it_says_so(
    run: Run, users: StubCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    code, _, err = run("alice", None, "init")
    assert code == EXIT_USAGE and "WARREN_PASSWORD_FILE" in err, err
    assert key_ids(run, "alice") == []


def rebuild(c: StubCluster) -> None:
    c.kill("manager")
    shutil.rmtree(c.base / "manager")
    c.start_manager()


def test_a_rebuilt_catalog_has_the_keys_and_not_the_removed_ones(
    run: Run, users: StubCluster, tmp_path: Path
) -> None:
    pw, lap = pw_file(tmp_path, "pw", "desk"), pw_file(tmp_path, "lap", "lap")
    assert run("alice", pw, "init")[0] == EXIT_OK
    assert run("alice", pw, "key", "add", "--new-password-file", str(lap))[0] == EXIT_OK
    assert run("bob", pw, "init")[0] == EXIT_OK
    first = key_ids(run, "alice")[0]
    assert run("alice", None, "key", "remove", first)[0] == EXIT_OK
    alice, bob = key_ids(run, "alice"), key_ids(run, "bob")
    keys = unlocked(users, "alice", lap)

    rebuild(users)
    wait_for(lambda: key_ids(run, "alice") == alice, what="alice's keys back")
    assert key_ids(run, "bob") == bob
    assert unlocked(users, "alice", lap) == keys
    with pytest.raises(WrongPassword):  # the removed wrapping stayed removed
        unlocked(users, "alice", pw)


def test_a_key_record_a_worker_forged_is_not_taken(
    run: Run, users: StubCluster, tmp_path: Path
) -> None:
    """A worker writes key records of its own into its log: a key for alice it knows the
    password of, and a removal of alice's real key, each sealed with a key that is not the
    manager's and also as plain JSON (what a manager that did not seal would take). A
    rebuilt catalog takes none of them."""
    pw = pw_file(tmp_path, "pw", "alice's")
    assert run("alice", pw, "init")[0] == EXIT_OK
    [real] = key_ids(run, "alice")
    planted = ownerkey.wrap(ownerkey.new_master(), "the worker's", n=SMALL_N)
    from manager.keys import key_id

    forger = Sealer(os.urandom(32))
    forged = [
        m.KeyRecord("alice", key_id(planted), 1.0, "w1", base64.b64encode(planted).decode()),
        m.KeyRecord("alice", real, 9e9, removed=True),
    ]
    lines = [{"forget": base64.b64encode(forger.seal(_json(r), _KEY)).decode()} for r in forged] + [
        {"forget": base64.b64encode(_json(r)).decode()} for r in forged
    ]
    for worker in users.workers.values():
        append_records(worker.root, lines)
        assert (worker.root / LOG).exists()

    rebuild(users)
    wait_for(lambda: _catching_up_done(run), what="the rebuilt manager to answer")
    wait_for(lambda: key_ids(run, "alice") == [real], what="alice's real key only")
    assert unlocked(users, "alice", pw)


def _catching_up_done(run: Run) -> bool:
    return run("alice", None, "key", "list", "--json")[0] == EXIT_OK


def _json(r: m.KeyRecord) -> bytes:
    return json.dumps(dataclasses.asdict(r), separators=(",", ":")).encode()


def test_a_second_first_key_is_refused_so_racing_inits_share_one(
    run: Run, users: StubCluster, tmp_path: Path
) -> None:
    """Two inits of one owner at once both see no key: the manager takes the first one's
    and refuses the other's (``first``), which then opens the winner's key."""
    pw = pw_file(tmp_path, "pw", "pw")
    assert run("alice", pw, "init")[0] == EXIT_OK
    [first] = key_ids(run, "alice")
    late = ownerkey.wrap(ownerkey.new_master(), "pw", n=SMALL_N)
    with users.session(amqp_url=user_url("alice")) as s:
        req = m.KeyAdd(wrapped=base64.b64encode(late).decode(), host="h", first=True)
        with pytest.raises(Refused, match="has a key already"):
            s.request(req, m.KeyAdded)
    assert key_ids(run, "alice") == [first]
