"""A snapshot's manifest and the local tree it describes: the walk, the patterns, the
change detection against a parent, and the diff of two manifests. No I/O beyond reading
the local tree, so every decision a backup or a restore makes is testable on its own.

A manifest is JSON (``encode``): the host, the backed-up paths as given (absolute), and
one entry per file, folder and symbolic link, sorted by path. Paths are ``/``-separated
and relative: each backed-up PATH appears under its last component, as ``upload`` names a
folder (``backup ~/photos`` stores ``photos/2024/a.jpg``). The encoding is canonical (sorted
keys, no time of its own), so an unchanged tree encodes to the same bytes, cuts and seals
to the same chunks, and a re-backup of it sends nothing at all.

The walk never follows a symbolic link (it stores the link), and skips what no restore
could make again (sockets, devices, FIFOs) with a warning, as restic does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from warren import messages as m
from warren.errors import IntegrityError, UsageError

VERSION = 1
FILE, DIR, SYMLINK = "file", "dir", "symlink"

Warn = Callable[[str], None]


@dataclass(frozen=True)
class Entry:
    """One node of a snapshot. ``chunks`` (files) is empty until the file is stored or
    reused from the parent; ``sha256`` is its plaintext's, checked on restore."""

    path: str
    type: str
    mode: int
    mtime_ns: int
    ctime_ns: int = 0
    inode: int = 0
    size: int = 0
    chunks: tuple[m.ChunkRef, ...] = ()
    target: str = ""
    sha256: str = ""

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def same_file(self, other: Entry) -> bool:
        """restic's change detection: path, size, mtime, ctime and inode all equal means
        the file is not read again."""
        return (
            self.type == other.type == FILE
            and self.path == other.path
            and self.size == other.size
            and self.mtime_ns == other.mtime_ns
            and self.ctime_ns == other.ctime_ns
            and self.inode == other.inode
            and bool(other.chunks)
        )


@dataclass
class Manifest:
    host: str
    paths: list[str]
    entries: list[Entry] = field(default_factory=list)

    def by_path(self) -> dict[str, Entry]:
        return {e.path: e for e in self.entries}


# -- patterns ----------------------------------------------------------------------------


def matches(path: str, patterns: Iterable[str]) -> bool:
    """restic's simple patterns: fnmatch on the relative path or on the base name."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def ancestors(path: str) -> list[str]:
    """``a/b/c`` -> ``["a", "a/b", "a/b/c"]``."""
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def excluded(path: str, patterns: Iterable[str]) -> bool:
    """Excluded itself, or under a folder that is."""
    pats = list(patterns)
    return bool(pats) and any(matches(p, pats) for p in ancestors(path))


# -- the walk ----------------------------------------------------------------------------


def root_names(paths: list[Path]) -> list[tuple[Path, str]]:
    """Each PATH with the name it is stored under (its last component); two with the same
    last component would mix their trees, so that is refused."""
    seen: dict[str, Path] = {}
    out = []
    for p in paths:
        absolute = Path(os.path.abspath(p))
        name = absolute.name
        if not name:
            raise UsageError(f"{p} has no last component to store it under; name a folder in it.")
        if name in seen:
            raise UsageError(
                f"{seen[name]} and {p} would both be stored as {name!r}; back them up apart."
            )
        seen[name] = p
        out.append((absolute, name))
    return out


def entry_of(path: str, st: os.stat_result, target: str = "") -> Entry | None:
    """The entry a stat result makes; None for what a snapshot does not keep."""
    mode, perm, mtime = st.st_mode, stat.S_IMODE(st.st_mode), st.st_mtime_ns
    if stat.S_ISREG(mode):
        return Entry(path, FILE, perm, mtime, st.st_ctime_ns, st.st_ino, st.st_size)
    if stat.S_ISDIR(mode):
        return Entry(path, DIR, perm, mtime)
    if stat.S_ISLNK(mode):
        return Entry(path, SYMLINK, perm, mtime, target=target)
    return None


def walk(paths: list[Path], excludes: list[str], warn: Warn) -> tuple[list[Entry], dict[str, Path]]:
    """Every entry under the paths (not followed through links), sorted by path, and where
    each file is on disk. A path that cannot be read is a warning and is left out."""
    entries: list[Entry] = []
    local: dict[str, Path] = {}

    def visit(abspath: Path, rel: str, st: os.stat_result) -> None:
        if excluded(rel, excludes):
            return
        target = ""
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(abspath)
            except OSError as exc:
                warn(f"{abspath}: cannot read the link ({exc.strerror or exc}); left out")
                return
        entry = entry_of(rel, st, target)
        if entry is None:
            warn(f"{abspath}: not a file, folder or symbolic link; left out")
            return
        entries.append(entry)
        if entry.type == FILE:
            local[rel] = abspath
        elif entry.type == DIR:
            try:
                with os.scandir(abspath) as it:
                    children = sorted(it, key=lambda d: d.name)
            except OSError as exc:
                warn(f"{abspath}: cannot list it ({exc.strerror or exc}); its contents left out")
                return
            for child in children:
                try:
                    cst = child.stat(follow_symlinks=False)
                except OSError as exc:
                    warn(f"{child.path}: {exc.strerror or exc}; left out")
                    continue
                visit(Path(child.path), f"{rel}/{child.name}", cst)

    for absolute, name in root_names(paths):
        try:
            st = os.lstat(absolute)
        except OSError as exc:
            raise UsageError(f"{absolute}: {exc.strerror or exc}.") from None
        visit(absolute, name, st)
    entries.sort(key=lambda e: e.path)
    return entries, local


# -- change detection --------------------------------------------------------------------


def reuse(entries: list[Entry], parent: Manifest | None) -> tuple[list[Entry], list[str], set[str]]:
    """The entries with every unmodified file's chunks (and sha256) taken from the parent,
    the paths of the files to read and store, and those of them that are new (not a file
    in the parent: the rest changed)."""
    old = parent.by_path() if parent is not None else {}
    out: list[Entry] = []
    todo: list[str] = []
    new: set[str] = set()
    for e in entries:
        before = old.get(e.path)
        if e.type == FILE and before is not None and e.same_file(before):
            out.append(replace(e, chunks=before.chunks, sha256=before.sha256))
            continue
        if e.type == FILE:
            todo.append(e.path)
            if before is None or before.type != FILE:
                new.add(e.path)
        out.append(e)
    return out, todo, new


# -- the encoding ------------------------------------------------------------------------


def _entry_json(e: Entry) -> dict[str, object]:
    d: dict[str, object] = {
        "path": e.path,
        "type": e.type,
        "mode": e.mode,
        "mtime": e.mtime,
        "mtime_ns": e.mtime_ns,
        "ctime_ns": e.ctime_ns,
        "inode": e.inode,
        "size": e.size,
    }
    if e.type == FILE:
        d["chunks"] = [[c.sha256, c.size, c.plain] for c in e.chunks]
        d["sha256"] = e.sha256
    if e.type == SYMLINK:
        d["target"] = e.target
    return d


def encode(manifest: Manifest) -> bytes:
    """Canonical JSON: the same tree always gives the same bytes."""
    body = {
        "version": VERSION,
        "host": manifest.host,
        "paths": manifest.paths,
        "entries": [_entry_json(e) for e in sorted(manifest.entries, key=lambda e: e.path)],
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _safe_path(path: object) -> str:
    """A path a restore may join under its folder: relative, no empty, . or .. part."""
    if not isinstance(path, str) or "\x00" in path:
        raise ValueError("a path that is not text")
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError(f"the path {path!r} could climb out of its folder")
    return path


def decode(data: bytes) -> Manifest:
    """A manifest from its bytes; anything malformed is an IntegrityError (it opened with
    the owner's key, so only a bug or a forgery makes one)."""
    try:
        body = json.loads(data)
        if body.get("version") != VERSION:
            raise ValueError(f"manifest version {body.get('version')!r}")
        entries = []
        for d in body["entries"]:
            kind = d["type"]
            if kind not in (FILE, DIR, SYMLINK):
                raise ValueError(f"an entry of type {kind!r}")
            entries.append(
                Entry(
                    path=_safe_path(d["path"]),
                    type=kind,
                    mode=int(d["mode"]),
                    mtime_ns=int(d["mtime_ns"]),
                    ctime_ns=int(d.get("ctime_ns", 0)),
                    inode=int(d.get("inode", 0)),
                    size=int(d.get("size", 0)),
                    chunks=tuple(
                        m.ChunkRef(str(s), int(z), int(p)) for s, z, p in d.get("chunks", ())
                    ),
                    target=str(d.get("target", "")),
                    sha256=str(d.get("sha256", "")),
                )
            )
        return Manifest(str(body["host"]), [str(p) for p in body["paths"]], entries)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"a snapshot's manifest does not decode ({exc}).") from None


# -- diff --------------------------------------------------------------------------------


def diff(a: Manifest, b: Manifest) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """restic's ``diff``: ``+`` added, ``-`` removed, ``M`` content changed, ``T`` type
    changed, ``U`` metadata only (mode, mtime, target), in path order; and the counts."""
    old, new = a.by_path(), b.by_path()
    lines: list[tuple[str, str]] = []
    counts = dict.fromkeys(
        ("files_new", "files_removed", "files_changed", "dirs_new", "dirs_removed"), 0
    )
    counts |= {"others_new": 0, "others_removed": 0}

    def kind(e: Entry) -> str:
        return {FILE: "files", DIR: "dirs"}.get(e.type, "others")

    for path in sorted(old.keys() | new.keys()):
        x, y = old.get(path), new.get(path)
        either = y or x
        shown = "/" + path + ("/" if either is not None and either.type == DIR else "")
        if x is None and y is not None:
            lines.append(("+", shown))
            counts[f"{kind(y)}_new"] += 1
        elif y is None and x is not None:
            lines.append(("-", shown))
            counts[f"{kind(x)}_removed"] += 1
        elif x is not None and y is not None:
            if x.type != y.type:
                lines.append(("T", shown))
            elif x.type == FILE and (x.chunks != y.chunks or x.size != y.size):
                lines.append(("M", shown))
                counts["files_changed"] += 1
            elif (x.mode, x.mtime_ns, x.target) != (y.mode, y.mtime_ns, y.target):
                lines.append(("U", shown))
    return lines, counts


# -- restore's choice --------------------------------------------------------------------


def select(
    manifest: Manifest, sub: str, includes: list[str], excludes: list[str]
) -> list[tuple[Entry, str]]:
    """The entries a restore of ``SNAPSHOT[:sub]`` writes, each with its path under the
    target folder. ``sub`` is a stored path (``photos/2024``) or a backed-up one
    (``/home/me/photos/2024``); the entries under it come back under its last component's
    place, as restic restores a subfolder's contents into the target. Includes keep what
    matches (and the folders above it), excludes drop what matches (and what is under it)."""
    sub = _stored(manifest, sub)
    picked: list[tuple[Entry, str]] = []
    for e in manifest.entries:
        if sub:
            if e.path == sub:
                if e.type == DIR:
                    continue  # the target folder itself
                rel = e.name
            elif e.path.startswith(sub + "/"):
                rel = e.path[len(sub) + 1 :]
            else:
                continue
        else:
            rel = e.path
        if excluded(rel, excludes):
            continue
        picked.append((e, rel))
    if includes:
        wanted = {rel for e, rel in picked if any(matches(a, includes) for a in ancestors(rel))}
        above = {a for rel in wanted for a in ancestors(rel)[:-1]}
        picked = [(e, rel) for e, rel in picked if rel in wanted or rel in above]
    if sub and not picked and sub not in manifest.by_path():
        raise UsageError(f"the snapshot holds nothing at {sub!r}.")
    return picked


def _stored(manifest: Manifest, sub: str) -> str:
    """A path as the manifest stores it."""
    if not sub or sub == "/":
        return ""
    for given in manifest.paths:
        base = given.rstrip("/")
        if sub == base or sub.startswith(base + "/"):
            return (Path(base).name + sub[len(base) :]).rstrip("/")
    return sub.strip("/")
