"""Failures a user meets: a clear sentence, a non-zero exit code by kind, never a traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from devtools.localnode import free_port
from tests.cluster import Cluster, MakeCluster, Result, chunks_on_disk
from warren import errors

WORKERS = ("w1", "w2", "w3", "w4")


def assert_clean_failure(res: Result, code: int, words: str) -> None:
    assert res.code == code, (res.code, res.out, res.err)
    assert words in res.err
    assert "Traceback" not in res.err + res.out
    assert len(res.err.strip().splitlines()) == 1, res.err


def test_missing_local_file(cluster: Cluster, tmp_path: Path) -> None:
    res = cluster.client("upload", str(tmp_path / "no such file.txt"))
    assert_clean_failure(res, errors.EXIT_USAGE, "no such file")


def test_a_folder_with_no_file_in_it_is_a_usage_error(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    res = cluster.client("upload", str(tmp_path / "empty"))
    assert_clean_failure(res, errors.EXIT_USAGE, "no regular file to upload")


def test_unknown_name(cluster: Cluster, tmp_path: Path) -> None:
    res = cluster.client("download", "never uploaded.bin", "-o", str(tmp_path / "x"))
    assert_clean_failure(res, errors.EXIT_NOT_FOUND, "no file named 'never uploaded.bin'")
    assert not (tmp_path / "x").exists()


def test_more_replicas_than_live_workers_is_refused_before_any_byte(
    cluster: Cluster, tmp_path: Path
) -> None:
    p = tmp_path / "refused.bin"
    p.write_bytes(os.urandom(3 * 1024 * 1024))  # bytes no other test stores
    cluster.ensure_key()
    placed = cluster.log_path("manager").read_text().count(" placed on ")
    start = time.time() - 1  # mtimes may be a little behind the clock
    res = cluster.client("upload", str(p), "--replicas", "5")
    assert_clean_failure(res, errors.EXIT_REFUSED, "asked for 5 replicas but only 4 workers")
    assert "refused.bin" not in cluster.files()
    # The manager placed nothing, so no chunk had anywhere to go: no worker has any of it
    manager_log = cluster.log_path("manager").read_text()
    assert manager_log.count(" placed on ") == placed, manager_log
    assert chunks_on_disk(cluster, WORKERS, since=start) == 0


def test_zero_replicas_is_a_usage_error(cluster: Cluster, tmp_path: Path) -> None:
    p = tmp_path / "f.txt"
    p.write_text("hello")
    res = cluster.client("upload", str(p), "--replicas", "0")
    assert_clean_failure(res, errors.EXIT_USAGE, "at least 1")


def test_existing_destination_is_not_overwritten(cluster: Cluster, tmp_path: Path) -> None:
    p = tmp_path / "keep.txt"
    p.write_text("stored")
    cluster.client("upload", str(p)).ok()
    dest = tmp_path / "mine.txt"
    dest.write_text("precious")
    res = cluster.client("download", "keep.txt", "-o", str(dest))
    assert_clean_failure(res, errors.EXIT_USAGE, "already exists")
    assert dest.read_text() == "precious"
    cluster.client("download", "keep.txt", "-o", str(dest), "--force").ok()
    assert dest.read_text() == "stored"


def test_unwritable_destination_folder(cluster: Cluster, tmp_path: Path) -> None:
    # Given a stored file and a folder the client may not write in
    p = tmp_path / "unwritable.txt"
    p.write_text("stored")
    cluster.client("upload", str(p)).ok()
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    # Root writes anywhere through CAP_DAC_OVERRIDE: as root, run the client without it, so
    # the mode bits stop it as they stop any user
    argv = [sys.executable, "-m", "client", "download", "unwritable.txt"]
    argv += ["-o", str(folder / "restored.txt")]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) runs the client without CAP_DAC_OVERRIDE"
        argv = [setpriv, "--bounding-set=-dac_override", "--", *argv]
    try:
        proc = subprocess.run(
            argv, env=cluster.env(), cwd=cluster.base, capture_output=True, timeout=180
        )
        # Then the OS's refusal is one sentence and a usage exit code, not a traceback
        res = Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        assert_clean_failure(res, errors.EXIT_USAGE, f"cannot write {folder / 'restored.txt'}")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_broker_unreachable(cluster: Cluster) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    res = cluster.client("list", WARREN_AMQP_URL=url, WARREN_CONNECT_TIMEOUT="2")
    assert_clean_failure(res, errors.EXIT_UNAVAILABLE, "cannot reach RabbitMQ at")
    assert "guest:guest" not in res.err  # no password in messages


def test_wrong_password_is_refused_not_retried(cluster: Cluster) -> None:
    # Given a client that would keep trying to connect for two minutes
    url = cluster.url.replace("guest:guest", "guest:wrong")
    started = time.monotonic()
    res = cluster.client("list", WARREN_AMQP_URL=url, WARREN_CONNECT_TIMEOUT="120")
    # Then it gives up on the first refusal, long before that
    assert_clean_failure(res, errors.EXIT_REFUSED, "refused")
    assert time.monotonic() - started < 60, "the client retried refused credentials"
    assert "check the user 'guest' and its password in WARREN_AMQP_URL" in res.err


def test_bad_setting_is_a_usage_error(cluster: Cluster) -> None:
    res = cluster.client("list", WARREN_WINDOW="lots")
    assert_clean_failure(res, errors.EXIT_USAGE, "WARREN_WINDOW")


def test_usage_errors_exit_2(cluster: Cluster) -> None:
    res = cluster.client("upload")
    assert res.code == errors.EXIT_USAGE
    assert "Traceback" not in res.err
    res = cluster.client("upload", "a", "b", "--name", "x")
    assert_clean_failure(res, errors.EXIT_USAGE, "--name works with a single file only")


def test_manager_never_started(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Given a broker on which no warren service has ever run
    c = make_cluster()
    p = tmp_path / "f.txt"
    p.write_text("hello")
    # Then asking anything says so at once, for every kind of command
    for args in (("list",), ("upload", str(p)), ("download", "f.txt", "-o", str(tmp_path / "o"))):
        res = c.client(*args)
        assert_clean_failure(res, errors.EXIT_UNAVAILABLE, "the manager has never run")


def test_manager_down(make_cluster: MakeCluster) -> None:
    # Given a manager that ran once (its queue exists) but is stopped now
    c = make_cluster(WARREN_REQUEST_TIMEOUT="2")
    c.start("manager")
    c.wait_alive([])
    c.kill("manager")
    res = c.client("status")
    assert_clean_failure(res, errors.EXIT_UNAVAILABLE, "did not answer within 2 s; is it running?")
