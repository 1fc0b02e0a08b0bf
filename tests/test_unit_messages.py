"""Messages are values: they round-trip, and garbage raises warren's own DecodeError."""

from __future__ import annotations

import dataclasses
import json

import pytest

from warren import messages as m
from warren.errors import DecodeError

SHA = "ab" * 32
UID = "cd" * 16

SAMPLES: list[m.Message] = [
    m.UploadRequest(name="a file ü.txt", size=10, sha256=SHA, replicas=2, client="c1"),
    m.UploadAccepted(upload_id=UID, chain=("w1", "w2"), chunk_size=1 << 20),
    m.UploadRecorded(upload_id=UID, name="a file ü.txt"),
    m.CopyRequest(sha256=SHA, size=4, target="w2", upload_id=UID),
    m.DownloadRequest(name="x", exclude=("w3",)),
    m.DownloadAccepted(name="x", size=1, sha256=SHA, worker="w1"),
    m.ListRequest(),
    m.ListReply(files=(m.FileEntry("x", 1, SHA, ("w1", "w2"), 2, 1.5),)),
    m.StatusRequest(),
    m.StatusReply(workers=(m.WorkerEntry("w1", True, 10, 5, 1, 2.0),), under_replicated=0, files=1),
    m.ReplicaStored(upload_id=UID, worker="w1", sha256=SHA, size=3, hop=0),
    m.ReplicaFailed(upload_id=UID, worker="w1", reason="disk full"),
    m.Heartbeat(worker="w1", free_bytes=1, used_bytes=2, files=3),
    m.Inventory(worker="w2", blobs=(m.BlobEntry(SHA, 4),)),
    m.ServeRequest(sha256=SHA, size=4, reply_to="q", correlation_id="c"),
    m.RestoreEnd(worker="w1", sha256=SHA, size=4),
    m.RestoreFailed(worker="w1", reason="gone"),
    m.ErrorReply(code="refused", message="no"),
    m.PackRequest(files=(m.PackFile("a", 1, SHA), m.PackFile("b ü", 0, SHA)), replicas=2),
    m.PackAccepted(upload_ids=(UID, UID), chain=("w1", "w2")),
    m.PackStored(worker="w2", hop=1, files=(m.PackEntry(UID, SHA, 3),)),
    m.PackRecorded(upload_ids=(UID,)),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda x: x.TYPE)
def test_every_message_round_trips(msg: m.Message) -> None:
    assert m.decode(msg.TYPE, msg.encode()) == msg
    # Compact JSON of its fields, UTF-8 as it is (encode skips dataclasses.asdict, for speed)
    fields = dataclasses.asdict(msg)  # type: ignore[call-overload]
    assert msg.encode() == json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "type_name, body",
    [
        ("upload.request", b"\xff\xfe not json"),
        ("upload.request", b"[]"),
        ("upload.request", b'{"name": "x"}'),
        (
            "upload.request",
            b'{"name": "x", "size": "10", "sha256": "' + SHA.encode() + b'", "replicas": 2}',
        ),
        (
            "upload.request",
            b'{"name": "", "size": 1, "sha256": "' + SHA.encode() + b'", "replicas": 2}',
        ),
        (
            "upload.request",
            b'{"name": "x", "size": -1, "sha256": "' + SHA.encode() + b'", "replicas": 2}',
        ),
        ("upload.request", b'{"name": "x", "size": 1, "sha256": "nothex", "replicas": 2}'),
        ("upload.accepted", b'{"upload_id": "../../etc", "chain": ["w1"], "chunk_size": 1}'),
        ("worker.heartbeat", b'{"worker": "../x", "free_bytes": 1, "used_bytes": 1, "files": 1}'),
        ("pack.request", b'{"files": [], "replicas": 2}'),
        ("pack.request", b'{"files": [{"name": "", "size": 1, "sha256": "x"}], "replicas": 2}'),
        (
            "pack.stored",
            b'{"worker": "w1", "hop": 0, "files": [{"upload_id": "../x", '
            b'"sha256": "' + SHA.encode() + b'", "size": 1}]}',
        ),
        ("no.such.type", b"{}"),
        (None, b"{}"),
    ],
)
def test_garbage_raises_decode_error(type_name: str | None, body: bytes) -> None:
    with pytest.raises(DecodeError):
        m.decode(type_name, body)


def headers(**over: object) -> dict[str, object]:
    h = m.ChunkHeaders(
        upload_id=UID,
        seq=1,
        offset=10,
        total_size=25,
        chunk_count=3,
        sha256=SHA,
        chain=("w1", "w2"),
        hop=0,
    ).to_headers()
    h.update(over)
    return h


def test_chunk_headers_round_trip_and_name_the_next_worker() -> None:
    h = m.ChunkHeaders.from_headers(headers(), body_len=10)
    assert h.next_worker == "w2"
    assert m.ChunkHeaders.from_headers(headers(hop=1), body_len=10).next_worker is None


@pytest.mark.parametrize(
    "over, body_len",
    [
        ({"upload_id": "../../../etc/passwd"}, 10),  # would become a path on the worker
        ({"seq": 3}, 10),  # past the last chunk
        ({"offset": 20}, 10),  # bytes past the end of the file
        ({"hop": 2}, 10),  # outside the chain
        ({"chain": ["w1", "bad/name"]}, 10),
        ({"seq": "1"}, 10),
    ],
)
def test_bad_chunk_headers_are_rejected(over: dict[str, object], body_len: int) -> None:
    with pytest.raises(DecodeError):
        m.ChunkHeaders.from_headers(headers(**over), body_len)


def test_missing_chunk_headers_are_rejected() -> None:
    with pytest.raises(DecodeError):
        m.ChunkHeaders.from_headers(None, 0)


def pack(**over: object) -> dict[str, object]:
    files = (m.PackEntry(UID, SHA, 3), m.PackEntry("ef" * 16, SHA, 0), m.PackEntry(UID, SHA, 4))
    h = m.PackHeaders(files=files, chain=("w1", "w2"), hop=0).to_headers()
    h.update(over)
    return h


def test_pack_headers_round_trip_and_cut_the_body_in_order() -> None:
    p = m.PackHeaders.from_headers(pack(), body_len=7)
    assert p.next_worker == "w2"
    assert [(f.size, a, b) for f, a, b in p.slices()] == [(3, 0, 3), (0, 3, 3), (4, 3, 7)]
    assert m.PackHeaders.from_headers(pack(hop=1), body_len=7).next_worker is None


@pytest.mark.parametrize(
    "over, body_len",
    [
        ({}, 8),  # the sizes do not add up to the body
        ({"files": "[]"}, 0),  # an empty pack
        ({"files": "not json"}, 7),
        ({"files": '[["../../etc/passwd", "' + SHA + '", 7]]'}, 7),  # would become a path
        ({"files": '[["' + UID + '", "' + SHA + '", -1]]'}, 0),
        ({"files": '[["' + UID + '", "' + SHA + '"]]'}, 0),  # a row too short
        ({"hop": 2}, 7),
        ({"hop": "0"}, 7),
        ({"chain": ["w1", "bad/name"]}, 7),
        ({"chain": "w1"}, 7),
    ],
)
def test_bad_pack_headers_are_rejected(over: dict[str, object], body_len: int) -> None:
    with pytest.raises(DecodeError):
        m.PackHeaders.from_headers(pack(**over), body_len)


def test_every_error_crosses_the_wire_as_itself() -> None:
    from warren import errors

    for code, cls in errors.WIRE_CODES.items():
        assert errors.to_wire(cls("x")) == code
        back = errors.from_wire(code, "one sentence.")
        assert type(back) is cls and str(back) == "one sentence."
    # Subclasses travel as their nearest listed class; unknown codes are plain failures.
    assert errors.to_wire(errors.BrokerRefused("no")) == "refused"
    assert errors.to_wire(errors.DecodeError("bad")) == "invalid"
    assert errors.from_wire("something-new", "?").exit_code == errors.EXIT_FAILURE
