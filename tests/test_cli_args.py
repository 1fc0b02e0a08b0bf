"""The client's command line without a cluster: flags anywhere, usage errors, versions,
completion, the config command, units, and what a refused connection says."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from client.__main__ import Ended, ending_signals_interrupt
from client.args import build_parser
from client.outcomes import UploadResult
from client.render import (
    TABLE_MAX,
    SizeColumn,
    SpeedColumn,
    files_lines,
    human_size,
    size_pair,
    speed_text,
    status_json,
    status_summary,
    upload_json,
    workers_table,
)
from devtools.localnode import free_port
from tests.cluster import ROOT
from warren import errors
from warren.messages import FileEntry, StatusReply, WorkerEntry

BIN = Path(sys.executable).parent


def warren(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """The `warren` console script, as a user runs it, with no user config file around."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    environ.setdefault("XDG_CONFIG_HOME", "/nonexistent-warren-test")
    return subprocess.run(
        [str(BIN / "warren"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=environ,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["-q", "-v", "--client-name", "X", "upload", "a.txt"],
        ["upload", "a.txt", "-q", "-v", "--client-name", "X"],
        ["-q", "upload", "-v", "a.txt", "--client-name", "X"],
    ],
)
def test_global_options_mean_the_same_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose, args.client_name) == (True, True, "X")
    assert args.command == "upload" and args.paths == [Path("a.txt")]


def test_without_options_the_defaults_hold() -> None:
    args = build_parser().parse_args(["list"])
    assert (args.quiet, args.verbose, args.client_name) == (False, False, None)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["upload", "a.txt", "--replicas", "0"], "--replicas must be at least 1, not 0."),
        (["prune", "--keep-last", "0"], "--keep-last must be at least 1, not 0."),
        (["download", "a.txt", "--version", "-1"], "--version must be at least 0, not -1."),
    ],
)
def test_impossible_numbers_are_usage_errors_in_one_sentence(argv: list[str], words: str) -> None:
    # Nothing listens at this address: the check comes before any connection
    res = warren(*argv, WARREN_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")
    assert res.returncode == errors.EXIT_USAGE, res
    assert res.stderr == f"error: {words}\n"


@pytest.mark.parametrize("script", ["warren", "warren-manager", "warren-worker"])
def test_every_console_script_says_its_version(script: str) -> None:
    res = subprocess.run(
        [str(BIN / script), "--version"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res
    assert res.stdout.startswith(f"{script} ") and res.stdout.strip().split()[-1][0].isdigit()


def test_the_short_name_is_in_the_usage() -> None:
    res = warren("--help")
    assert res.returncode == 0 and res.stdout.startswith("usage: warren ")
    assert "config.toml" in res.stdout and "WARREN_CONFIG" in res.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_shell_completion_comes_from_the_argument_definitions(shell: str) -> None:
    res = warren("completion", shell)
    assert res.returncode == 0, res
    for word in ("upload", "download", "versions", "prune", "--replicas", "--keep-last"):
        assert word in res.stdout, word
    if shell == "bash":  # and it is a script bash accepts
        check = subprocess.run(["bash", "-n"], input=res.stdout, text=True, capture_output=True)
        assert check.returncode == 0, check.stderr


def test_config_shows_each_setting_its_source_and_no_password(tmp_path: Path) -> None:
    # Given a config file with the broker URL and a password, and one setting in the env
    path = tmp_path / "config.toml"
    path.write_text('amqp_url = "amqp://me:s3cret@backup.example:5672/%2F"\nwindow = 8\n')
    path.chmod(0o600)
    res = warren(
        "config", "--json", "--client-name", "desk", WARREN_CONFIG=str(path), WARREN_WINDOW="4"
    )
    # Then `warren config` says where each came from, and the password is masked
    assert res.returncode == 0, res
    shown = json.loads(res.stdout)
    assert shown["config_file"] == str(path) and shown["config_file_exists"]
    settings = shown["settings"]
    assert settings["amqp_url"] == {
        "value": "amqp://me:****@backup.example:5672/%2F",
        "source": "config file",
    }
    assert settings["window"] == {"value": "4", "source": "env WARREN_WINDOW"}
    assert settings["client_name"] == {"value": "desk", "source": "flag"}
    assert settings["chunk_size"]["source"] == "default"
    assert "s3cret" not in res.stdout + res.stderr
    # And the table form says the same for a person
    table = warren("config", WARREN_CONFIG=str(path), COLUMNS="200")
    assert table.returncode == 0 and "s3cret" not in table.stdout
    assert f"config file: {path} (read)" in table.stdout
    assert "amqp://me:****@backup.example:5672/%2F" in table.stdout


def test_a_config_file_others_can_read_stops_every_command(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('amqp_url = "amqp://me:s3cret@backup.example:5672/%2F"\n')
    path.chmod(0o644)
    res = warren("list", WARREN_CONFIG=str(path))
    assert res.returncode == errors.EXIT_USAGE
    assert len(res.stderr.splitlines()) == 1 and "can be read by others" in res.stderr
    assert "s3cret" not in res.stderr


def test_a_refused_connection_says_try_make_up_in_one_sentence() -> None:
    # Given nothing listening where the broker should be
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    started = time.monotonic()
    res = warren("list", WARREN_AMQP_URL=url, WARREN_CONNECT_TIMEOUT="1")
    # Then (off a terminal) one sentence, with the hint, exit 4
    assert res.returncode == errors.EXIT_UNAVAILABLE, res
    assert res.stderr.startswith("error: cannot reach RabbitMQ at amqp://guest@127.0.0.1:")
    assert res.stderr.rstrip().endswith("is warren running? try `make up`.")
    assert len(res.stderr.splitlines()) == 1 and res.stdout == ""
    assert time.monotonic() - started < 30


def test_sizes_and_speeds_are_iec_everywhere() -> None:
    assert human_size(800 * 1024 * 1024) == "800.0 MiB"
    assert human_size(1024 * 1024 - 1) == "1.0 MiB"  # not "1024.0 KiB"
    assert size_pair(12.5 * 1024 * 1024, 838.9 * 1024 * 1024) == "12.5/838.9 MiB"
    assert size_pair(10, 300) == "10/300 B"
    assert speed_text(2.0, 175.7e9) == "163.6 GiB/s"
    assert speed_text(0.01, 175.7e9) == ""  # the first instant says nothing rather than nonsense
    assert speed_text(None, None) == ""


def test_a_transfer_bar_shows_iec_units_and_no_first_instant_speed() -> None:
    # Given a bar whose clock we drive, and a first burst of 16 MiB in a millisecond
    now = [100.0]
    bars = Progress(SizeColumn(), SpeedColumn(), get_time=lambda: now[0])
    task = bars.add_task("x", total=800 * 1024 * 1024)
    for _ in range(16):
        now[0] += 0.0001
        bars.advance(task, 1024 * 1024)
    first = _render(bars)
    # Then the size is in MiB and no speed is shown yet
    assert "16.0/800.0 MiB" in first and "/s" not in first
    # When the transfer has gone on for two seconds at 10 MiB/s
    for _ in range(20):
        now[0] += 0.1
        bars.advance(task, 1024 * 1024)
    later = _render(bars)
    # Then the speed is shown, in MiB/s, and it is not absurd
    assert "36.0/800.0 MiB" in later and "MiB/s" in later


def _render(bars: Progress) -> str:
    console = Console(width=120, record=True)
    console.print(bars.make_tasks_table(bars.tasks))
    return console.export_text()


def test_status_says_what_is_in_flight() -> None:
    st = StatusReply(
        workers=(), under_replicated=1, files=3, uploads_in_flight=2, repairs_in_flight=1
    )
    line = status_summary(st)
    assert "3 files" in line and "2 uploads in flight" in line and "1 repair under way" in line


def test_upload_json_counts_nothing_sent_for_deduplicated_content() -> None:
    r = UploadResult("a.txt", 10, "ab" * 32, ("w1", "w2"), {"w2": 1, "w1": 0}, sent=10)
    assert upload_json(r) == {
        "name": "a.txt",
        "size": 10,
        "sha256": "ab" * 32,
        "replicas": ["w1", "w2"],
        "bytes_sent": 10,
        "deduplicated": False,
        "recorded": True,
    }
    # Content the cluster already held: nothing sent, said so
    held = {"w1": 0, "w2": 1}
    deduplicated = UploadResult("a.txt", 10, "ab" * 32, ("w1", "w2"), held, deduplicated=True)
    assert upload_json(deduplicated) == {
        "name": "a.txt",
        "size": 10,
        "sha256": "ab" * 32,
        "replicas": ["w1", "w2"],
        "bytes_sent": 0,
        "deduplicated": True,
        "recorded": True,
    }
    # A resumed upload, stored but not yet in the catalog: only the bytes this command sent
    resumed = UploadResult("a.txt", 10, "ab" * 32, ("w1", "w2"), held, recorded=False, sent=4)
    assert upload_json(resumed) == {
        "name": "a.txt",
        "size": 10,
        "sha256": "ab" * 32,
        "replicas": ["w1", "w2"],
        "bytes_sent": 4,
        "deduplicated": False,
        "recorded": False,
    }


def test_sigterm_raises_like_ctrl_c_and_an_ignored_sighup_stays_ignored() -> None:
    saved = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with ending_signals_interrupt():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            with pytest.raises(KeyboardInterrupt) as caught:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
            assert isinstance(caught.value, Ended) and str(caught.value) == "SIGTERM"
            # a second signal during the clean-up is ignored, so the clean-up finishes
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, saved)


def test_a_suite_started_with_signals_ignored_gives_them_back_to_its_clients(
    pytestconfig: pytest.Config,
) -> None:
    # Given the suite's process with SIGINT, SIGHUP and SIGTERM ignored (`nohup make test &`)
    from tests.conftest import pytest_configure

    sigs = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in sigs}
    try:
        # When the suite configures itself, then a client it starts has them all back
        pytest_configure(pytestconfig)
        script = (
            "import signal\n"
            "sigs = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)\n"
            "print([signal.getsignal(s) is signal.SIG_IGN for s in sigs])\n"
        )
        res = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
        )
        assert res.stdout.strip() == "[False, False, False]"
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_another_failure_is_one_sentence_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a manager that answers with an error code this client does not know (a newer
    # manager's), which is a plain failure: neither not found, unavailable, nor refused
    import client.__main__ as cm
    from client.cli import App

    def run(_self: object) -> int:
        raise errors.from_wire("disk_on_fire", "the manager's disk is on fire.")

    monkeypatch.setattr(App, "run", run)
    # When a command gets it, then it is exit 1 and the manager's sentence
    assert cm.main(["list"]) == errors.EXIT_FAILURE == 1
    captured = capsys.readouterr()
    assert captured.err == "error: the manager's disk is on fire.\n" and captured.out == ""


def test_status_shows_the_commands_a_worker_refused_in_the_managers_name() -> None:
    # A column only when some worker refused any; the count in --json always.
    def table(st: StatusReply) -> str:
        console = Console(width=160, record=True)
        console.print(workers_table(st))
        return console.export_text()

    quiet = WorkerEntry("w1", True, 10, 5, 1, 2.0)
    st = StatusReply(workers=(quiet,), under_replicated=0, files=1)
    assert "refused" not in table(st)
    assert status_json(st)["workers"][0]["refused"] == 0
    forged = dataclasses.replace(quiet, name="w2", refused=3)
    st = StatusReply(workers=(quiet, forged), under_replicated=0, files=1)
    [header] = [ln for ln in table(st).splitlines() if "┃" in ln]
    rows = [ln for ln in table(st).splitlines() if "│" in ln]
    assert header.split("┃")[-2].strip() == "refused"
    assert [r.split("│")[-2].strip() for r in rows] == ["0", "3"]
    assert [w["refused"] for w in status_json(st)["workers"]] == [0, 3]


def test_a_long_listing_is_lines_not_a_table() -> None:
    # A big backup's list prints a line per file at once; rich would lay out a table whole
    files = [
        FileEntry(f"photos/{i:05}.jpg", 1024 * i, "ab" * 32, ("w1", "w2"), 2, 1.0, 1, 1 + i % 3)
        for i in range(20_000)
    ]
    lines = list(files_lines(files))
    assert len(lines) == 20_000 and TABLE_MAX < 20_000
    assert lines[7] == "photos/00007.jpg\t7.0 KiB\t2 versions\tw1,w2\tabababababab\n"
    short = FileEntry("x", 1, "ab" * 32, ("w3",), 2, 1.0)
    assert next(files_lines([short])).split("\t")[3] == "w3 (1/2)"


def test_a_clean_up_that_hangs_after_sigterm_still_ends_the_command() -> None:
    # Given a command whose clean-up after SIGTERM never finishes (as pika's close once did)
    script = (
        "import os, signal, time\n"
        "import client.__main__ as cm\n"
        "cm.CLEAN_UP_SECONDS = 1.0\n"
        "with cm.ending_signals_interrupt():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(30)\n"
        "    finally:\n"
        "        time.sleep(60)  # the clean-up hangs\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # When it runs, then it ends within seconds anyway: exit 130, one sentence
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, timeout=30, check=False
    )
    assert res.returncode == 130
    assert res.stderr.decode().strip() == "interrupted by SIGTERM"


def test_a_refused_login_says_what_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.connecting import login_hint
    from warren.config import Settings

    monkeypatch.chdir(tmp_path)
    guest = Settings(amqp_url="amqp://guest:guest@localhost:5672/%2F")
    alice = Settings(amqp_url="amqp://alice:wrong@localhost:5672/%2F")
    assert "'guest'" in login_hint(guest) and "'alice'" in login_hint(alice)
    # After make up, whose broker has no guest: where the client's login is
    (tmp_path / ".warren" / "secrets").mkdir(parents=True)
    (tmp_path / ".warren" / "secrets" / "client1.toml").write_text("")
    assert "export WARREN_CONFIG=$PWD/.warren/secrets/client1.toml" in login_hint(guest)
    assert "'alice'" in login_hint(alice)
