"""Properties over generated values (hypothesis), with few examples each so the file stays
under a few seconds: the catalog's batch of replicas ends as one at a time would, and every
valid message decodes to what was encoded."""

from __future__ import annotations

import base64
import dataclasses
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from manager.catalog import Catalog, Upload
from manager.holdings import PENDING
from warren import messages as m
from warren.errors import DecodeError

WORKERS = ("w1", "w2", "w3")
CONTENTS = {"ab" * 32: 5, "cd" * 32: 7, "ef" * 32: 9}  # sha256 -> size
IDS = tuple(str(i) * 32 for i in range(1, 6))  # the last one is never placed


@st.composite
def uploads(draw: st.DrawFn) -> list[Upload]:
    """Up to four uploads of a few contents, on chains of one to three workers."""
    placed = []
    for i, uid in enumerate(IDS[: draw(st.integers(1, 4))]):
        sha = draw(st.sampled_from(sorted(CONTENTS)))
        chain = tuple(draw(st.permutations(WORKERS))[: draw(st.integers(1, 3))])
        name = draw(st.sampled_from(["a", "b"])) + str(i)
        placed.append(
            Upload(uid, name, CONTENTS[sha], sha, len(chain), chain, "c1", PENDING, version=1)
        )
    return placed


# A worker's word: (upload id, sha256, size), of uploads placed or not, contents right or not.
EVENTS = st.lists(
    st.tuples(st.sampled_from(IDS), st.sampled_from(sorted(CONTENTS))).map(
        lambda e: (e[0], e[1], CONTENTS[e[1]])
    ),
    max_size=8,
)


def placed_catalog(where: Path, ups: list[Upload]) -> Catalog:
    c = Catalog(where / "catalog.sqlite3", dead_after=10)
    c.open()
    for w in WORKERS:
        c.worker_seen(w, free=1000, used=0, files=0, now=1000)
    c.candidates()  # the usage figures are cached from here on, and kept up to date
    c.add_uploads(ups, now=1000)
    return c


def state(c: Catalog) -> object:
    tables = ("replicas", "upload_replicas", "versions", "garbage", "uploads")
    return [sorted(c.db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables] + [
        c.candidates()
    ]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(uploads(), st.lists(st.tuples(st.sampled_from(WORKERS), EVENTS), max_size=3))
def test_replicas_stored_in_a_batch_end_as_one_at_a_time_would(
    ups: list[Upload], reports: list[tuple[str, list[tuple[str, str, int]]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "one").mkdir()
        (Path(tmp) / "batch").mkdir()
        one = placed_catalog(Path(tmp) / "one", ups)
        batch = placed_catalog(Path(tmp) / "batch", ups)
        try:
            for n, (worker, events) in enumerate(reports):
                now = 1001 + n
                done_one = [
                    up.upload_id
                    for e in events
                    if (up := one.replica_stored(e[0], worker, e[1], e[2], now)) is not None
                ]
                done_batch = [u.upload_id for u in batch.replicas_stored(worker, events, now)]
                assert done_one == done_batch
            assert state(one) == state(batch)
            assert one.files(now=1010) == batch.files(now=1010)
        finally:
            one.close()
            batch.close()


# -- codec ---------------------------------------------------------------------------------

HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
HEX32 = st.text("0123456789abcdef", min_size=32, max_size=32)
HEX16 = st.text("0123456789abcdef", min_size=16, max_size=16)
WORKER = st.text("abcwxyz0123456789_.-", min_size=1, max_size=12)
# Names as they come out of the catalog: text (lone surrogates are refused at the door).
FILE_NAME = st.text(
    st.characters(exclude_characters="\x00", exclude_categories=["Cs"]),
    min_size=1,
    max_size=20,
)
# A host name or a tag: printable text, spaces allowed.
LABEL = st.text(
    st.characters(exclude_categories=["C", "Z"]) | st.just(" "),
    max_size=20,
)
BASE64 = st.binary(min_size=1, max_size=120).map(lambda b: base64.b64encode(b).decode())
# Lists that are never empty: a chain of workers, the snapshots to forget, a manifest.
NOT_EMPTY = ("chain", "ids", "manifest")


def strategy_for(field: str, hint: Any) -> st.SearchStrategy[Any]:
    """Values of a message field, valid as often as the name tells what it holds."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        size = (1, 3) if field in NOT_EMPTY else (0, 3)
        unique = field == "chain"
        return st.lists(
            strategy_for(field, item), min_size=size[0], max_size=size[1], unique=unique
        ).map(tuple)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return st.none() | strategy_for(field, inner[0])
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return commit_files() if hint is m.CommitFile else instances(hint)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(0, 2**53)
    if hint is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if field in ("sha256",) or field.endswith("sha256"):
        return HEX64
    if field.endswith("upload_id") or field.endswith("upload_ids"):
        return HEX32
    if field in ("worker", "chain", "exclude", "primary", "source", "target", "holders"):
        return WORKER
    if field in ("name", "names", "prefix", "after"):
        return FILE_NAME
    if field in ("id", "ids", "parent"):  # an owner key's id, or a snapshot's
        return HEX16
    if field == "chunks":  # the blobs a snapshot uses (a file's chunks are ChunkRefs)
        return HEX64
    if field in ("wrapped", "meta"):  # a wrapped owner key, a snapshot's sealed paths
        return BASE64
    if field in ("host", "tags"):
        return LABEL
    return st.text(max_size=20)


@st.composite
def commit_files(draw: st.DrawFn) -> m.CommitFile:
    """A committed file: at least one chunk, and its size what its chunks hold opened."""
    chunks = draw(st.lists(instances(m.ChunkRef), min_size=1, max_size=3).map(tuple))
    file: m.CommitFile = draw(instances(m.CommitFile))
    return dataclasses.replace(file, chunks=chunks, size=sum(c.plain for c in chunks))


def instances(cls: type[Any]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    return st.builds(
        cls, **{f.name: strategy_for(f.name, hints[f.name]) for f in dataclasses.fields(cls)}
    )


def valid(msg: m.Message) -> bool:
    try:
        msg.validate()
    except DecodeError:
        return False
    return True


@pytest.mark.parametrize("type_name", sorted(m.REGISTRY))
def test_every_valid_message_decodes_to_what_was_encoded(type_name: str) -> None:
    cls: type[Any] = m.REGISTRY[type_name]
    tried: list[m.Message] = []

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(instances(cls))
    def round_trip(msg: m.Message) -> None:
        assume(valid(msg))
        tried.append(msg)
        assert m.decode(type_name, msg.encode()) == msg

    round_trip()
    least = 5 if dataclasses.fields(cls) else 1  # a message of no fields has one value
    assert len(tried) >= least, f"only {len(tried)} valid {type_name} generated"


def test_a_name_with_a_lone_surrogate_is_invalid_not_a_crash() -> None:
    # JSON lets a sender escape half a character; such a name can be neither encoded again
    # nor stored in SQLite, so it is refused as invalid when the request is decoded.
    body = ('{"name":"a\\ud800","size":1,"sha256":"' + "ab" * 32 + '","replicas":1}').encode()
    with pytest.raises(DecodeError, match="valid Unicode"):
        m.decode(m.UploadRequest.TYPE, body)
