"""The client's command line against a running cluster: flags anywhere, -v, --json per
file as it is confirmed, status in flight, and SIGTERM or SIGHUP during a download."""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import Cluster, file_sha256, while_running
from tests.test_faults import frozen
from warren import errors
from warren.chunkseal import SEAL_OVERHEAD


def test_quiet_and_client_name_before_the_command_are_honoured(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a file no other test stores
    f = tmp_path / "quiet before.txt"
    f.write_bytes(os.urandom(3000))
    # When -q and --client-name come before the command
    res = cluster.client("-q", "--client-name", "early-bird", "upload", str(f)).ok()
    # Then nothing is printed, and the manager heard the name given (with its chunks)
    assert res.out == "" and res.err == ""
    assert f" chunks ({3000 + SEAL_OVERHEAD} bytes) from early-bird" in cluster.logs()
    # And after the command it means the same
    g = tmp_path / "quiet after.txt"
    g.write_bytes(os.urandom(3000))
    res = cluster.client("upload", str(g), "-q", "--client-name", "late-bird").ok()
    assert res.out == "" and "from late-bird" in cluster.logs()


def test_verbose_logs_the_protocol_on_stderr(cluster: Cluster) -> None:
    res = cluster.client("-v", "--client-name", "chatty", "list", "--json").ok()
    assert json.loads(res.out) is not None  # stdout stays JSON
    assert "connected to amqp://" in res.err and "'warren client chatty'" in res.err
    assert "-> warren.manager.requests list.request" in res.err
    assert "<- warren.client.chatty" in res.err and "list.reply" in res.err


def test_upload_json_prints_one_object_per_file_as_it_is_confirmed(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a folder of three files
    folder = tmp_path / "jsondir"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.bin").write_bytes(os.urandom(1000 + i))
    # When it is uploaded with --json
    res = cluster.client("upload", str(folder), "--json", "--replicas", "2").ok()
    # Then stdout is one JSON object per line, one per file, and nothing else
    lines = [json.loads(line) for line in res.out.splitlines()]
    assert sorted(o["name"] for o in lines) == [
        "jsondir/f0.bin",
        "jsondir/f1.bin",
        "jsondir/f2.bin",
    ]
    for o in lines:
        path = folder / o["name"].split("/")[1]
        # (what it sent: its one sealed chunk, random bytes that zstd leaves as they are)
        assert o["size"] == path.stat().st_size == o["bytes_sent"] - SEAL_OVERHEAD
        assert o["sha256"] == file_sha256(path)
        assert len(o["replicas"]) == 2 and not o["deduplicated"]
    # And a file whose content is already stored sends nothing
    again = cluster.client("upload", str(folder / "f0.bin"), "--name", "copy.bin", "--json")
    [copy] = [json.loads(line) for line in again.ok().out.splitlines()]
    assert copy["name"] == "copy.bin" and copy["bytes_sent"] == 0 and copy["deduplicated"]


def test_status_shows_uploads_and_repairs_in_flight(cluster: Cluster, tmp_path: Path) -> None:
    # Given the module's cluster at rest: four live workers, a file stored (and any earlier
    # tests stored)
    (tmp_path / "status.txt").write_text("counted")
    cluster.client("upload", str(tmp_path / "status.txt")).ok()
    files = cluster.status()["files"]
    assert files >= 1
    # When status is asked for as a table
    res = cluster.client("status").ok()
    # Then each worker has its row, alive, and the line under the table counts the files
    # and says nothing is in flight or under repair
    rows = [line.split("│") for line in res.out.splitlines() if line.startswith("│")]
    states = {r[1].strip(): r[2].strip() for r in rows}
    assert states == {"w1": "alive", "w2": "alive", "w3": "alive", "w4": "alive"}, res.out
    summary = f"{files} files, 0 under-replicated, 0 uploads in flight, 0 repairs under way"
    assert res.out.splitlines()[-1] == summary, res.out


def test_download_json_prints_each_restored_file(cluster: Cluster, tmp_path: Path) -> None:
    f = tmp_path / "dl.txt"
    f.write_text("restore me as json")
    cluster.client("upload", str(f)).ok()
    res = cluster.client("download", "dl.txt", "-o", str(tmp_path / "back.txt"), "--json").ok()
    [obj] = [json.loads(line) for line in res.out.splitlines()]
    assert obj["name"] == "dl.txt" and obj["path"] == str(tmp_path / "back.txt")
    assert obj["sha256"] == file_sha256(f)


def test_an_upload_past_the_quota_is_refused_before_any_byte_reaches_a_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    def quota(size: str) -> None:
        env = cluster.env(WARREN_DATA_DIR=str(cluster.data_dir("manager")))
        done = subprocess.run(
            [sys.executable, "-m", "manager", "users", "quota", "guest", size],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    # Given a quota of 1 MiB, and a file that needs more
    big = tmp_path / "over-quota.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    quota("1MiB")
    try:
        # When it is uploaded twice over (4 MiB on the workers)
        res = cluster.client("upload", str(big), "--replicas", "2")
        # Then it is refused in one sentence naming the quota, and no worker has a byte of it
        assert res.code == errors.EXIT_REFUSED, res
        assert "past the quota of" in res.err and res.err.count("\n") == 1, res.err
        sha = file_sha256(big)
        for w in ("w1", "w2", "w3", "w4"):
            assert not list(cluster.data_dir(w).glob(f"blobs/*/{sha}*")), w
            assert not list(cluster.data_dir(w).glob("incoming/*.part")), w
        # And once the quota is lifted it goes through
        quota("none")
        cluster.client("upload", str(big), "--replicas", "2").ok()
    finally:
        quota("none")


def test_prune_dry_run_says_what_would_go_and_deletes_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given three versions of a file under a prefix no other test uses
    f = tmp_path / "log.txt"
    for i in range(3):
        f.write_text(f"version {i + 1}")
        cluster.client("upload", str(f), "--name", "prune-dry/log.txt").ok()

    def versions() -> list[int]:
        res = cluster.client("versions", "prune-dry/log.txt", "--json").ok()
        return sorted(v["version"] for v in json.loads(res.out))

    assert versions() == [1, 2, 3]
    # When the command line prunes it to the newest one with --dry-run
    res = cluster.client("prune", "--keep-last", "1", "prune-dry/", "--dry-run").ok()
    # Then it names the two older versions, and all three are still there
    lines = res.out.splitlines()
    assert lines[-1] == "would delete 2 versions"
    assert sorted(lines[:-1]) == [
        "would delete prune-dry/log.txt version 1 (9 B)",
        "would delete prune-dry/log.txt version 2 (9 B)",
    ]
    assert versions() == [1, 2, 3]
    # And without --dry-run those two go
    res = cluster.client("prune", "--keep-last", "1", "prune-dry/").ok()
    assert res.out.splitlines()[-1] == "deleted 2 versions"
    assert versions() == [3]


SIGNAL_MIB = 48


@pytest.fixture(scope="module")
def stored_big(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stored file of SIGNAL_MIB MiB, for the signal tests (uploaded once)."""
    big = tmp_path_factory.mktemp("signals") / "signalled.bin"
    big.write_bytes(os.urandom(SIGNAL_MIB * 1024 * 1024))
    cluster.client("upload", str(big), timeout=300).ok()
    return big


def part_size(folder: Path) -> int:
    """How far the client's partial file ``.NAME.*.part`` has been written (0 if none)."""
    sizes = [0]
    for p in folder.glob(".*.part"):
        with contextlib.suppress(FileNotFoundError):
            sizes.append(p.stat().st_size)
    return max(sizes)


def ended_by(proc: subprocess.Popen[bytes], sig: signal.Signals) -> tuple[str, str, float]:
    """Send ``sig`` and wait for the command to end: its stdout, stderr and how long it took
    (killed and failed after 20 s: a hang)."""
    sent = time.monotonic()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"the client still ran 20 s after {sig.name}") from None
    return out.decode(), err.decode(), time.monotonic() - sent


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_a_download_leaves_no_partial_file(
    cluster: Cluster, stored_big: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    # Given a download whose first chunks have arrived (the hidden .part file has bytes)
    out = tmp_path / "restore"
    out.mkdir()
    proc = cluster.client_process("download", stored_big.name, "-o", str(out / stored_big.name))
    while_running(proc, lambda: part_size(out) > 0, "the first chunks to arrive")
    # ... held mid-way: the workers serving it (its chunks come from several at once) frozen,
    # the client has written all that was sent and waits for the rest (a short freeze: a
    # worker silent for 4 s counts as dead)
    with frozen(cluster, ("w1", "w2", "w3", "w4")):
        written = -1
        while written != part_size(out):
            written = part_size(out)
            time.sleep(0.3)
        assert 0 < written < SIGNAL_MIB * 1024 * 1024, "the restore was not held mid-way"
        assert proc.poll() is None
        # When the signal comes
        _, err, took = ended_by(proc, sig)
    # Then it ends as Ctrl-C does, within seconds: exit 130, one sentence, nothing left behind
    assert proc.returncode == errors.EXIT_INTERRUPTED, err
    assert err.strip() == f"interrupted by {sig.name}"
    assert list(out.iterdir()) == []
    assert took < 5, f"the client took {took:.1f} s to end after {sig.name}"


def test_a_signal_as_a_download_ends_gives_the_whole_file_or_none(
    cluster: Cluster, stored_big: Path, tmp_path: Path
) -> None:
    # Given a download frozen (SIGSTOP) right as its last byte is written, before it ends
    out = tmp_path / "restore"
    out.mkdir()
    dest = out / stored_big.name
    size = stored_big.stat().st_size
    proc = cluster.client_process("download", stored_big.name, "-o", str(dest))
    while_running(
        proc, lambda: part_size(out) == size or dest.exists(), "the last byte", timeout=120
    )
    proc.send_signal(signal.SIGSTOP)
    try:
        assert proc.poll() is None, "the download ended before the signal could be sent"
        # When SIGTERM comes then, and the client carries on
        proc.send_signal(signal.SIGTERM)
    finally:
        proc.send_signal(signal.SIGCONT)
    stdout, err, took = ended_by(proc, signal.SIGCONT)
    # Then the command ends at once, one way or the other, never with a partial file: done
    # (exit 0, the file whole) or interrupted (exit 130, one sentence, and any file there
    # whole: one verified and moved into place before the signal stays, as it is complete)
    assert took < 5, f"the client took {took:.1f} s to end after SIGTERM"
    assert not list(out.glob(".*")), "a partial file was left behind"
    if proc.returncode == 0:
        assert filecmp.cmp(dest, stored_big, shallow=False)
        assert f"restored {stored_big.name} " in stdout, stdout
    else:
        assert proc.returncode == errors.EXIT_INTERRUPTED, err
        assert err.strip() == "interrupted by SIGTERM"
        assert not dest.exists() or filecmp.cmp(dest, stored_big, shallow=False)


def test_a_new_user_needs_no_export_with_the_url_in_the_config_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given the broker URL (password and all) in the user's config file, and no WARREN_*
    home = tmp_path / "config-home"
    (home / "warren").mkdir(parents=True)
    config = home / "warren" / "config.toml"
    config.write_text(
        f'amqp_url = "{cluster.url}"\nclient_name = "from-the-file"\n'
        f'password_file = "{cluster.password_file}"\n'
    )
    cluster.ensure_key()  # the user's key, as `make up` provisions it
    config.chmod(0o600)
    env = {k: v for k, v in cluster.env().items() if not k.startswith("WARREN_")}
    env["XDG_CONFIG_HOME"] = str(home)
    f = tmp_path / "no export.txt"
    f.write_text("configured once")

    def warren(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "warren"), *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    # When they run `warren upload` and `warren list`
    up = warren("upload", str(f))
    assert up.returncode == 0, up.stderr
    listed = warren("list", "--json")
    # Then both reach the cluster through the file's settings
    assert listed.returncode == 0, listed.stderr
    assert "no export.txt" in {o["name"] for o in json.loads(listed.stdout)}
    assert f" chunks ({15 + SEAL_OVERHEAD} bytes) from from-the-file" in cluster.logs()
    # And `warren config` says where the URL came from, without its password
    shown = json.loads(warren("config", "--json").stdout)
    assert shown["config_file"] == str(config)
    assert shown["settings"]["amqp_url"]["source"] == "config file"
    assert "guest:guest" not in json.dumps(shown)
