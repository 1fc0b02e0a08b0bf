"""The client's command line: every command, its arguments and examples, its exit codes,
and the shell completion made from the same definitions (httpie keeps its
``cli/definition.py`` apart from what the commands do in the same way)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from warren import errors
from warren.config import CONFIG_ENV
from warren.service import version

EXIT_CODES = f"""\
exit codes:
  {errors.EXIT_OK}    success (for upload: every replica of every file confirmed)
  {errors.EXIT_FAILURE}    other failure
  {errors.EXIT_USAGE}    usage: bad arguments, a missing or unreadable local file
  {errors.EXIT_NOT_FOUND}    not found: no stored file has that name
  {errors.EXIT_UNAVAILABLE}    unavailable: RabbitMQ, the manager or the workers did not answer
  {errors.EXIT_INTEGRITY}    integrity: bytes failed their SHA-256 check
  {errors.EXIT_REFUSED}    refused: e.g. more replicas than live workers
  {errors.EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGTERM or SIGHUP; partial downloads are removed)
"""

SETTINGS_HELP = f"""\
settings come from flags, then WARREN_* variables, then a TOML config file: the one
{CONFIG_ENV} names, or config.toml in your config folder (`warren config` says where).
Its keys are the variables' names in lower case without WARREN_, e.g.
  amqp_url = "amqp://me:secret@backup.example:5672/%2F"
Only you may be able to read it (chmod 600): it may hold a password.
"""


# shtab's marker for "complete a file name" (shtab.FILE): shtab itself is imported only
# when a completion script is asked for, not on every command's start.
FILE_COMPLETION = {
    "bash": "_shtab_compgen_files",
    "zsh": "_files",
    "tcsh": "f",
    "fish": "(__fish_complete_path (commandline -ct))",
    "powershell": "_shtab_powershell_compgen_files",
}


class VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any, **_kw: Any) -> None:
        print(f"warren {version()}")  # on stdout, as argparse's own version action
        parser.exit()


def default_prog() -> str:
    """``warren`` when started by that name, else ``python -m client``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("warren") else "python -m client"


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The flags every command takes. The top-level parser holds their defaults; a
    command's copies default to SUPPRESS, so a flag given before the command name is not
    overwritten by the command's default: ``-q upload x`` means ``upload x -q``."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--client-name",
        default=default(None),
        help="name shown in the management UI and manager logs (env WARREN_CLIENT_NAME)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="print only errors"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log protocol events (each message sent and received) on stderr",
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Every command takes the common flags too, so they work before or after its name."""
    prog = prog or default_prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="warren's console client: back up files to the cluster and restore them.",
        epilog=EXIT_CODES
        + "\n"
        + SETTINGS_HELP
        + "\nWith no command in a terminal, an interactive menu opens.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, suppress=False)
    parser.add_argument("--version", action=VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(cmd, suppress=True)
        return cmd

    up = command(
        "upload",
        "store files and folders on the cluster, each file on N distinct workers; storing a "
        "name again adds a version, and content the cluster already holds is not sent again",
        "warren upload ~/photos notes.txt --replicas 2   # stores photos/..., notes.txt",
    )
    paths = up.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    paths.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    up.add_argument(
        "--replicas", type=int, default=2, metavar="N", help="copies to keep (default 2)"
    )
    up.add_argument("--name", help="name to store a single file under (default: its file name)")
    up.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object per file as it is confirmed (name, size, sha256, replicas, "
        "bytes_sent), and no bars",
    )

    down = command(
        "download",
        "restore a stored file (or, for a NAME ending in /, every file under it), verified by "
        "SHA-256, with its mode and modification time",
        "warren download photos/ -o restored/   # or: download b.jpg --version 2",
    )
    down.add_argument("name", metavar="NAME")
    output = down.add_argument(
        "-o", "--output", type=Path, help="where to write it (default: ./NAME, or . for a tree)"
    )
    output.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    down.add_argument(
        "--version", type=int, default=0, metavar="N", help="a version (default: the latest)"
    )
    down.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing files (a symbolic link there is replaced, not followed)",
    )
    down.add_argument(
        "--keep-setid",
        action="store_true",
        help="give back setuid, setgid and sticky bits (only when run as root; otherwise "
        "they are dropped, with a note)",
    )
    down.add_argument(
        "--json", action="store_true", help="print a JSON object per file restored, and no bars"
    )

    ls = command(
        "list",
        "list your stored files (the latest version of each) and the workers holding them",
        "warren list photos/ --json",
    )
    ls.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="names starting so")
    ls.add_argument("--json", action="store_true", help="print a JSON array")

    vs = command(
        "versions",
        "list every kept version of a file, oldest first",
        "warren versions notes.txt --json",
    )
    vs.add_argument("name", metavar="NAME")
    vs.add_argument("--json", action="store_true", help="print a JSON array")

    rm = command(
        "delete",
        "delete a file (every version, or the one named); the space comes back once no "
        "version uses its content (after WARREN_GC_DELAY seconds)",
        "warren delete notes.txt --version 1",
    )
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--version", type=int, default=0, metavar="N", help="only this version")

    pr = command(
        "prune",
        "keep only the newest N versions of each file (under PREFIX) and delete the rest",
        "warren prune --keep-last 3 logs/ --dry-run",
    )
    pr.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="names starting so")
    pr.add_argument("--keep-last", type=int, required=True, metavar="N", help="versions to keep")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    pr.add_argument("--json", action="store_true", help="print a JSON array of the versions")

    vf = command(
        "verify",
        "have every worker holding your files (or the ones named) re-read and re-hash its "
        "copy now; a damaged copy is quarantined and a good one made elsewhere",
        "warren verify notes.txt --json   # exit 5 when a damaged copy was found",
    )
    vf.add_argument("names", nargs="*", metavar="NAME", help="files to check (default: all)")
    vf.add_argument("--json", action="store_true", help="print a JSON array, a copy each")
    vf.add_argument(
        "--read-data",
        action="store_true",
        help="also read every chunk back and open it with your key (only you can check this)",
    )
    vf.add_argument(
        "--read-data-subset",
        metavar="N%",
        type=_percent,
        help="read back only N%% of the chunks, picked at random (implies --read-data)",
    )

    st = command(
        "status",
        "show the workers, how many files need repair, and the uploads and repairs in flight",
        "warren status --json",
    )
    st.add_argument("--json", action="store_true", help="print a JSON object")
    st.add_argument(
        "--watch",
        action="store_true",
        help="refresh until Ctrl-C: a live dashboard (with --json: a line per refresh)",
    )
    st.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")

    from client import keys_cmd  # here: it needs default_prog from this module

    keys_cmd.define(command, _common)  # init, key add|list|remove|passwd

    from client import snap_cmd

    snap_cmd.define(command)  # backup, snapshots, ls, diff, restore, forget

    cf = command(
        "config",
        "show the settings in effect, where each came from (default, config file, env or "
        "flag), and where the config file is; passwords are masked",
        "warren config --json",
    )
    cf.add_argument("--json", action="store_true", help="print a JSON object")

    cp = command(
        "completion",
        "print a shell completion script for bash or zsh",
        "warren completion bash > ~/.local/share/bash-completion/completions/warren",
    )
    cp.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    return parser


def _percent(text: str) -> float:
    """``N%`` (or N) for --read-data-subset: more than 0, at most 100."""
    try:
        value = float(text.strip().removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage like 10%") from None
    if not 0 < value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r}: a percentage above 0 and at most 100")
    return value


def completion_script(shell: str) -> str:
    """bash or zsh completion, generated from the same argparse definitions (shtab)."""
    import shtab

    return str(shtab.complete(build_parser("warren"), shell=shell))


# -- reaching the broker ---------------------------------------------------------------------


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives (the flags' names are the settings')."""
    return {"client_name": args.client_name}
