"""The interactive menu, driven key by key in a pseudo-terminal as a person would drive it.

The assertions read the screen the way a person does: colours and cursor movements are
stripped, what is left is the text they saw, in order.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import termios
import time
from pathlib import Path

import pexpect
import pytest

from client.demo import generate
from client.render import human_size
from devtools.localnode import free_port
from tests.cluster import ROOT, Cluster
from warren import errors

DEMO = ROOT / "client" / "demo"
TEXT = DEMO / "notes.txt"
TEXT_SIZE = human_size(TEXT.stat().st_size)  # as the client shows it, e.g. "292.6 KiB"
MAIN_MENU = "What would you like to do?"
DOWN, ENTER, CTRL_C, CTRL_D = "\x1b[B", "\r", "\x03", "\x04"
# CSI sequences (colours, cursor moves), OSC titles, and two-byte escapes.
CONTROL = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[@-Z\\-_])|\r")


class Screen:
    """A menu running in a pseudo-terminal, and everything it has shown so far."""

    def __init__(self, child: pexpect.spawn) -> None:
        self.child = child
        self.raw = ""
        self.pos = 0  # where the next expectation starts looking in the text seen

    @property
    def text(self) -> str:
        return CONTROL.sub("", self.raw)

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def expect(self, *texts: str, timeout: float = 60) -> None:
        """Wait until every one of ``texts`` has appeared since the last expectation."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.text
            found = [seen.find(t, self.pos) for t in texts]
            if all(i >= 0 for i in found):
                self.pos = max(i + len(t) for i, t in zip(found, texts, strict=True))
                return
            if time.monotonic() > deadline or not self.child.isalive():
                missing = [t for t, i in zip(texts, found, strict=True) if i < 0]
                raise AssertionError(f"never saw {missing}; the screen showed:\n{seen[-4000:]}")
            try:
                self.raw += self.child.read_nonblocking(65536, timeout=0.5)
            except pexpect.TIMEOUT:
                pass
            except pexpect.EOF:
                pass  # the loop reports what was missing

    def exit_status(self, timeout: float = 60) -> tuple[int, list[int]]:
        """Wait for the program to end: its exit status and the terminal's modes after it."""
        self.child.expect(pexpect.EOF, timeout=timeout)
        self.raw += self.child.before or ""
        modes = termios.tcgetattr(self.child.child_fd)
        self.child.close()
        status = self.child.exitstatus
        assert status is not None, f"ended by signal {self.child.signalstatus}:\n{self.text}"
        return status, modes


def open_menu(env: dict[str, str], cwd: Path) -> Screen:
    """``python -m client`` with no arguments in a 120×40 xterm, as a person starts it."""
    terminal = {"TERM": "xterm", "COLUMNS": "120", "LINES": "40"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "client"],
        env={**env, **terminal, "WARREN_CLIENT_NAME": "menu-test"},
        cwd=str(cwd),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    return Screen(child)


def line_editing_is_back(modes: list[int]) -> bool:
    """The terminal echoes and edits lines again: the menu's cbreak mode was undone."""
    lflag = modes[3]
    return bool(lflag & termios.ECHO and lflag & termios.ICANON)


def test_a_newcomer_backs_up_the_demo_text_and_gets_it_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given the menu, open in a terminal on a running cluster
    screen = open_menu(cluster.env(), tmp_path)
    screen.expect("4 of 4 workers alive", MAIN_MENU)

    # When they choose "upload a demo file" and then the text, by number ("1" waits for a
    # second digit among 11 entries, so Enter)
    screen.send("1" + ENTER)
    screen.expect("Which demo file?", "notes.txt", "picture.png", "chime.wav")
    screen.send("1")

    # Then both replicas are confirmed, one line each, and a summary names the workers
    screen.expect("primary ✓", "backup ✓")
    screen.expect(f"stored notes.txt ({TEXT_SIZE}) on ")

    # When they move down to "list stored files" with the arrow keys and press Enter
    screen.expect(MAIN_MENU)
    screen.send(DOWN * 3 + ENTER)

    # Then the table of stored files shows the demo text, its size and its hash
    screen.expect("› list stored files")
    screen.expect("notes.txt", TEXT_SIZE, hashlib.sha256(TEXT.read_bytes()).hexdigest()[:12])

    # When they download it and accept the suggested destination
    screen.expect(MAIN_MENU)
    screen.send("3")
    screen.expect("Which file?", "notes.txt")
    screen.send("1")
    screen.expect("save to [notes.txt]")
    screen.send(ENTER)

    # Then the restore is verified, and the bytes are the demo's
    screen.expect(f"restored notes.txt ({TEXT_SIZE})", "SHA-256 verified")
    assert (tmp_path / "notes.txt").read_bytes() == TEXT.read_bytes()

    # When they quit
    screen.expect(MAIN_MENU)
    screen.send("11")

    # Then the program ends with success and leaves the terminal as it found it
    status, modes = screen.exit_status()
    assert status == errors.EXIT_OK, screen.text
    assert line_editing_is_back(modes)
    assert "Traceback" not in screen.text


@pytest.mark.parametrize(
    ("keys", "waiting_for"),
    [("", "1–11 pick"), ("2", "file or folder to upload")],
    ids=["in the main menu", "at a path prompt"],
)
def test_ctrl_c_leaves_at_once_and_cleanly(
    cluster: Cluster, tmp_path: Path, keys: str, waiting_for: str
) -> None:
    # Given the menu, waiting for a key or for a line of text
    screen = open_menu(cluster.env(), tmp_path)
    screen.expect(MAIN_MENU)
    screen.send(keys)
    screen.expect(waiting_for)

    # When they press Ctrl-C
    screen.send(CTRL_C)

    # Then it says so and ends with 130, no traceback, the terminal back in line mode
    status, modes = screen.exit_status()
    assert status == errors.EXIT_INTERRUPTED, screen.text
    assert "interrupted" in screen.text
    assert "Traceback" not in screen.text
    assert line_editing_is_back(modes)
    assert screen.raw.rfind("\x1b[?25h") > screen.raw.rfind("\x1b[?25l"), "cursor left hidden"


def test_ctrl_d_in_the_main_menu_quits(cluster: Cluster, tmp_path: Path) -> None:
    # Given the menu, waiting for a choice
    screen = open_menu(cluster.env(), tmp_path)
    screen.expect(MAIN_MENU)

    # When they press Ctrl-D (end of input)
    screen.send(CTRL_D)

    # Then it ends as quit does: status 0, the terminal restored
    status, modes = screen.exit_status()
    assert status == errors.EXIT_OK, screen.text
    assert line_editing_is_back(modes)
    assert "Traceback" not in screen.text


def test_a_long_pause_at_a_prompt_does_not_lose_the_session(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given the menu on a connection whose heartbeats the broker expects every 2 s
    screen = open_menu(cluster.env(WARREN_AMQP_HEARTBEAT="2"), tmp_path)
    screen.expect(MAIN_MENU)

    # When they sit at the path prompt long enough for the broker to drop a silent client
    screen.send("2")
    screen.expect("file or folder to upload")
    time.sleep(8)
    sound = DEMO / "chime.wav"
    screen.send(f"{sound}{ENTER}")

    # Then the upload still goes through, on a new connection, with no error shown
    size = human_size(sound.stat().st_size)
    screen.expect("primary ✓", "backup ✓", f"stored chime.wav ({size}) on ")
    assert "error:" not in screen.text
    screen.expect(MAIN_MENU)
    screen.send("q")
    assert screen.exit_status()[0] == errors.EXIT_OK


def test_a_broker_out_of_reach_at_start_ends_the_menu_with_one_sentence(tmp_path: Path) -> None:
    # Given a broker address where nothing listens
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    env = dict(os.environ, PYTHONPATH=str(ROOT), WARREN_AMQP_URL=url, WARREN_CONNECT_TIMEOUT="2")

    # When the menu is started in a terminal
    screen = open_menu(env, tmp_path)

    # Then it says what it could not reach and ends with "unavailable", before any menu
    status, modes = screen.exit_status()
    assert status == errors.EXIT_UNAVAILABLE, screen.text
    assert "error: cannot reach RabbitMQ at amqp://guest@127.0.0.1:" in screen.text
    assert MAIN_MENU not in screen.text
    assert "Traceback" not in screen.text
    assert line_editing_is_back(modes)


def test_without_a_terminal_it_prints_usage_instead_of_a_menu() -> None:
    # Given stdin that is not a terminal (a script, a pipe, cron)
    # When the client starts with no command
    res = subprocess.run(
        [sys.executable, "-m", "client"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then it exits 2 with the usage on stderr, and nothing on stdout
    assert res.returncode == errors.EXIT_USAGE
    assert res.stderr.startswith("usage: python -m client")
    assert "interactive menu" in res.stderr
    assert res.stdout == ""


def test_the_shipped_demo_files_are_what_the_generator_makes() -> None:
    # Given the demo files in the package
    # When the generator makes them again, in memory
    # Then they are byte for byte the same, and each a few hundred KiB
    assert generate.main(["--check"]) == 0
    for name in generate.DEMOS:
        assert 150 * 1024 <= (DEMO / name).stat().st_size <= 700 * 1024, name


def run_in_terminal(args: list[str], env: dict[str, str], cwd: Path) -> str:
    """Run a client command in a pseudo-terminal and return everything it drew."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "client", *args],
        env=env,
        cwd=str(cwd),
        timeout=60,
        dimensions=(40, 120),
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    drawn: str = child.before.decode()
    return drawn


def test_an_upload_in_a_terminal_shows_its_transfer_from_the_start(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a file of a few chunks, uploaded from a terminal (it is hashed as it is cut and
    # sealed, so there is no hashing pass before the transfer any more)
    big = tmp_path / "barred.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    env = cluster.env(TERM="xterm", COLUMNS="120", LINES="40")
    drawn = run_in_terminal(["upload", str(big)], env, cluster.base)
    # Then its bar is drawn at once, counts the whole file, and then the upload succeeds
    assert "barred.bin" in drawn and "0.0/3.0 MiB" in drawn
    assert drawn.index("0.0/3.0 MiB") < drawn.index("3.0/3.0 MiB")
    assert drawn.index("3.0/3.0 MiB") < drawn.index("stored barred.bin (3.0 MiB)")


def test_colour_in_a_terminal_and_none_with_no_color(cluster: Cluster) -> None:
    # Given a terminal, `status` marks the live workers in colour
    env = cluster.env(TERM="xterm", COLUMNS="120", LINES="40")
    coloured = run_in_terminal(["status"], env, cluster.base)
    assert "alive" in coloured and re.search(r"\x1b\[[0-9;]*3[0-9]m", coloured)
    # When NO_COLOR is set, the same table comes without any colour
    plain = run_in_terminal(["status"], {**env, "NO_COLOR": "1"}, cluster.base)
    assert "alive" in plain and not re.search(r"\x1b\[[0-9;]*3[0-9]m", plain)
    # And piped output never has colour or bars, NO_COLOR or not
    piped = cluster.client("status")
    assert "alive" in piped.out and "\x1b[" not in piped.out


def files_stored(screen: Screen) -> int:
    """The count in the header above the main menu, as last drawn."""
    counts = re.findall(r"workers alive · (\d+) files stored", screen.text)
    assert counts, screen.text[-2000:]
    return int(counts[-1])


def pick(screen: Screen, label: str) -> None:
    """Choose the entry ``label`` of the menu on screen by its number, as a person would."""
    screen.expect(label, " pick · q")
    number = re.findall(rf"(\d+) {re.escape(label)}", screen.text)[-1]
    count = int(re.findall(r"1–(\d+) pick", screen.text)[-1])
    screen.send(number if int(number) * 10 > count else number + ENTER)


def test_the_header_stays_current_and_a_folder_uploads(cluster: Cluster, tmp_path: Path) -> None:
    # Given a folder of two files no other test stores, and the menu
    folder = tmp_path / "album"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(os.urandom(5000))
    (folder / "sub" / "b.txt").write_bytes(os.urandom(7000))
    screen = open_menu(cluster.env(), tmp_path)
    screen.expect("4 of 4 workers alive", MAIN_MENU)
    before = files_stored(screen)

    # When they upload the folder by its path
    screen.send("2")
    screen.expect("file or folder to upload")
    screen.send(f"{folder}{ENTER}")

    # Then each file is stored under the folder's name, and the header counts them at once
    screen.expect("stored album/a.txt", "stored album/sub/b.txt", "2 of 2 files of album stored")
    screen.expect(MAIN_MENU)
    assert files_stored(screen) == before + 2
    screen.send("q")
    assert screen.exit_status()[0] == errors.EXIT_OK


def test_a_wrong_key_says_so_and_yes_no_takes_a_line(cluster: Cluster, tmp_path: Path) -> None:
    # Given a stored file, and a file of that name already where it would be restored
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.txt").write_text("stored copy")
    cluster.client("upload", str(src / "kept.txt")).ok()
    (tmp_path / "kept.txt").write_text("precious")
    screen = open_menu(cluster.env(), tmp_path)
    screen.expect(MAIN_MENU)

    # When they press a key the menu has no use for
    screen.send("z")
    # Then it says which keys there are, and nothing is chosen
    screen.expect("'z' is not a choice here", "1–11")
    screen.send("0")
    screen.expect("there is no entry 0")

    # When they download onto the existing file and answer the question with a stray key
    screen.send("3")
    pick(screen, "kept.txt")
    screen.expect("save to [kept.txt]")
    screen.send(ENTER)
    screen.expect("already exists. Overwrite it? (y/N)")
    screen.send("x" + ENTER)
    # Then it asks again; and a bare Enter is no, and picks no menu entry
    screen.expect("Please answer y or n.", "Overwrite it? (y/N)")
    screen.send(ENTER)
    screen.expect("Kept kept.txt; nothing was downloaded.", MAIN_MENU)
    assert (tmp_path / "kept.txt").read_text() == "precious"
    assert "› upload a demo file" not in screen.text[screen.pos - 200 :]
    screen.send("q")
    assert screen.exit_status()[0] == errors.EXIT_OK


def test_versions_restore_an_older_one_and_delete_removes_the_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a file stored twice, with different content
    src = tmp_path / "src"
    src.mkdir()
    doc = src / "twice.txt"
    doc.write_text("first words")
    cluster.client("upload", str(doc)).ok()
    doc.write_text("second words, longer")
    cluster.client("upload", str(doc)).ok()
    screen = open_menu(cluster.env(), tmp_path)
    screen.expect(MAIN_MENU)

    # When they look at its versions and pick the first
    screen.send("5")
    pick(screen, "twice.txt")
    screen.expect("twice.txt: 2 versions", "Restore which version?", "version 1", "version 2")
    screen.send("1")
    screen.expect("save to [twice.txt]")
    screen.send(f"older.txt{ENTER}")
    # Then the first version comes back, verified
    screen.expect("restored twice.txt (11 B)", "SHA-256 verified")
    assert (tmp_path / "older.txt").read_text() == "first words"

    # When they delete every version of it, and say yes
    screen.expect(MAIN_MENU)
    screen.send("6")
    pick(screen, "twice.txt")
    screen.expect("Delete which version?", "every version")
    screen.send("1")
    screen.expect("Delete twice.txt? (y/N)")
    screen.send("y" + ENTER)
    # Then it is gone from the catalog
    screen.expect("deleted twice.txt (every version)", MAIN_MENU)
    assert "twice.txt" not in cluster.files()
    screen.send("q")
    assert screen.exit_status()[0] == errors.EXIT_OK


def test_warren_opens_the_menu_with_the_url_from_the_config_file(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given the broker URL in the user's config file, no WARREN_* variable at all
    home = tmp_path / "config-home"
    (home / "warren").mkdir(parents=True)
    config = home / "warren" / "config.toml"
    config.write_text(f'amqp_url = "{cluster.url}"\n')
    config.chmod(0o600)
    env = {k: v for k, v in cluster.env().items() if not k.startswith("WARREN_")}
    env.update(XDG_CONFIG_HOME=str(home), TERM="xterm", COLUMNS="120", LINES="40")
    # When they type `warren` in a terminal
    child = pexpect.spawn(
        str(Path(sys.executable).parent / "warren"),
        env=env,
        cwd=str(tmp_path),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    screen = Screen(child)
    # Then the menu opens on the cluster, and q leaves it
    screen.expect("4 of 4 workers alive", MAIN_MENU)
    screen.send("q")
    assert screen.exit_status()[0] == errors.EXIT_OK
