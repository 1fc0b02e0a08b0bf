"""Golden tests of the wire format: the exact bytes and headers of every message type.

A change to any of these is a protocol change: workers, managers and clients of different
versions would stop understanding each other. So each expected value here is written out by
hand, and the field names are checked against docs/protocol.md, the contract for anyone
who talks to warren without its code.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest

from warren import messages as m
from warren.errors import DecodeError

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()

SHA = "ab" * 32
UID = "cd" * 16
KEY = "0123456789abcdef"  # an owner key's id, or a snapshot's


def wire(text: str) -> bytes:
    """A golden body, with <SHA>, <UID> and <KEY> standing for the long hex strings."""
    text = text.replace("<SHA>", SHA).replace("<UID>", UID).replace("<KEY>", KEY)
    return text.encode("utf-8")


# (message, its exact bytes on the wire): compact JSON, fields in this order, UTF-8 as is.
GOLDEN: list[tuple[m.Message, bytes]] = [
    (
        m.UploadRequest(
            name="holiday ü.jpg", size=10, sha256=SHA, replicas=2, client="c1", mode=420, mtime=1.5
        ),
        wire(
            '{"name":"holiday ü.jpg","size":10,"sha256":"<SHA>","replicas":2,"client":"c1",'
            '"mode":420,"mtime":1.5}'
        ),
    ),
    (
        m.PackRequest(files=(m.PackFile("a", 1, SHA, 384, 2.0),), replicas=2, client="c1"),
        wire(
            '{"files":[{"name":"a","size":1,"sha256":"<SHA>","mode":384,"mtime":2.0}],'
            '"replicas":2,"client":"c1","chunks":false}'
        ),
    ),
    (
        # Sealed chunks: anonymous files of a pack (names empty), committed later.
        m.PackRequest(files=(m.PackFile("", 7, SHA),), replicas=2, client="c1", chunks=True),
        wire(
            '{"files":[{"name":"","size":7,"sha256":"<SHA>","mode":0,"mtime":0.0}],'
            '"replicas":2,"client":"c1","chunks":true}'
        ),
    ),
    (
        m.CommitRequest(
            files=(
                m.CommitFile(
                    "x", 5, SHA, (m.ChunkRef(SHA, 40, 3), m.ChunkRef(SHA, 39, 2)), 420, 1.5
                ),
            ),
            replicas=2,
            client="c1",
        ),
        wire(
            '{"files":[{"name":"x","size":5,"sha256":"<SHA>","chunks":['
            '{"sha256":"<SHA>","size":40,"plain":3},{"sha256":"<SHA>","size":39,"plain":2}],'
            '"mode":420,"mtime":1.5}],"replicas":2,"client":"c1"}'
        ),
    ),
    (m.CommitReply(versions=(1, 4)), wire('{"versions":[1,4]}')),
    (
        m.DownloadRequest(name="x", exclude=("w3",), client="c1", version=2),
        wire('{"name":"x","exclude":["w3"],"client":"c1","version":2,"blob":""}'),
    ),
    (
        m.DownloadRequest(name="", exclude=("w3",), client="c1", blob=SHA),
        wire('{"name":"","exclude":["w3"],"client":"c1","version":0,"blob":"<SHA>"}'),
    ),
    (
        m.ListRequest(prefix="photos/", after="photos/a.jpg"),
        wire('{"prefix":"photos/","after":"photos/a.jpg"}'),
    ),
    (m.VersionsRequest(name="x"), wire('{"name":"x"}')),
    (m.DeleteRequest(name="x", version=3), wire('{"name":"x","version":3}')),
    (
        m.PruneRequest(keep_last=2, prefix="logs/", dry_run=True),
        wire('{"keep_last":2,"prefix":"logs/","dry_run":true}'),
    ),
    (m.StatusRequest(), wire("{}")),
    (
        m.KeyAdd(wrapped="AQ==", host="laptop", first=True),
        wire('{"wrapped":"AQ==","host":"laptop","first":true}'),
    ),
    (m.KeyList(), wire("{}")),
    (m.KeyGet(), wire("{}")),
    (m.KeyRemove(id="0123456789abcdef"), wire('{"id":"0123456789abcdef"}')),
    (m.KeyAdded(id="0123456789abcdef"), wire('{"id":"0123456789abcdef","existed":false}')),
    (
        m.KeyListReply(keys=(m.KeyEntry("0123456789abcdef", 1.5, "laptop", "AQ=="),)),
        wire('{"keys":[{"id":"0123456789abcdef","created":1.5,"host":"laptop","wrapped":"AQ=="}]}'),
    ),
    (m.KeyRemoved(id="0123456789abcdef"), wire('{"id":"0123456789abcdef"}')),
    (
        m.UploadAccepted(upload_id=UID, chain=("w3", "w1"), chunk_size=1048576),
        wire(
            '{"upload_id":"<UID>","chain":["w3","w1"],"chunk_size":1048576,"stored":false,'
            '"resumed":false,"copies":0}'
        ),
    ),
    (
        m.PackAccepted(upload_ids=(UID,), chain=("w3", "w1"), stored=(m.StoredFile(UID, ("w2",)),)),
        wire(
            '{"upload_ids":["<UID>"],"chain":["w3","w1"],"stored":[{"upload_id":"<UID>","chain":["w2"]}]}'
        ),
    ),
    (m.UploadRecorded(upload_id=UID, name="x"), wire('{"upload_id":"<UID>","name":"x"}')),
    (m.PackRecorded(upload_ids=(UID,)), wire('{"upload_ids":["<UID>"]}')),
    (
        m.DownloadAccepted(name="x", size=1, sha256=SHA, worker="w1", version=2, mode=420),
        wire(
            '{"name":"x","size":1,"sha256":"<SHA>","worker":"w1","version":2,"mode":420,'
            '"mtime":0.0,"chunks":[]}'
        ),
    ),
    (
        # A file: no worker streams it; the client fetches its sealed chunks one by one.
        m.DownloadAccepted(
            name="x", size=3, sha256=SHA, worker="", version=1, chunks=(m.ChunkRef(SHA, 40, 3),)
        ),
        wire(
            '{"name":"x","size":3,"sha256":"<SHA>","worker":"","version":1,"mode":0,'
            '"mtime":0.0,"chunks":[{"sha256":"<SHA>","size":40,"plain":3}]}'
        ),
    ),
    (
        m.ErrorReply(code="not_found", message="no file named 'x'."),
        wire('{"code":"not_found","message":"no file named \'x\'."}'),
    ),
    (
        m.ListReply(
            files=(m.FileEntry("x", 1, SHA, ("w1", "w2"), 2, 1.5, 3, 3, 420, 1.0),), more=True
        ),
        wire(
            '{"files":[{"name":"x","size":1,"sha256":"<SHA>","replicas":["w1","w2"],'
            '"wanted":2,"created":1.5,"version":3,"versions":3,"mode":420,"mtime":1.0}],'
            '"more":true}'
        ),
    ),
    (
        m.VersionsReply(versions=(m.FileEntry("x", 1, SHA, (), 2, 1.5),)),
        wire(
            '{"versions":[{"name":"x","size":1,"sha256":"<SHA>","replicas":[],'
            '"wanted":2,"created":1.5,"version":1,"versions":1,"mode":0,"mtime":0.0}]}'
        ),
    ),
    (m.DeleteReply(name="x", versions=(1, 3)), wire('{"name":"x","versions":[1,3]}')),
    (
        m.PruneReply(removed=(), dry_run=True),
        wire('{"removed":[],"dry_run":true}'),
    ),
    (
        m.StatusReply(
            workers=(m.WorkerEntry("w1", True, 10, 5, 1, 2.5, 7.5, 1, 2),),
            under_replicated=0,
            files=1,
            uploads_in_flight=3,
            repairs_in_flight=4,
        ),
        wire(
            '{"workers":[{"name":"w1","alive":true,"free_bytes":10,"used_bytes":5,"files":1,'
            '"last_seen":2.5,"scrubbed_at":7.5,"damaged":1,"refused":2}],"under_replicated":0,'
            '"files":1,'
            '"uploads_in_flight":3,"repairs_in_flight":4}'
        ),
    ),
    (
        m.ReplicaStored(upload_id=UID, worker="w1", sha256=SHA, size=3, hop=0),
        wire('{"upload_id":"<UID>","worker":"w1","sha256":"<SHA>","size":3,"hop":0}'),
    ),
    (
        m.PackStored(worker="w2", hop=1, files=(m.PackEntry(UID, SHA, 3),)),
        wire('{"worker":"w2","hop":1,"files":[{"upload_id":"<UID>","sha256":"<SHA>","size":3}]}'),
    ),
    (
        m.ReplicaFailed(upload_id=UID, worker="w1", reason="disk full", code="unavailable"),
        wire('{"upload_id":"<UID>","worker":"w1","reason":"disk full","code":"unavailable"}'),
    ),
    (
        m.Heartbeat(
            worker="w1", free_bytes=1, used_bytes=2, files=3, scrubbed_at=4.5, damaged=1, refused=2
        ),
        wire(
            '{"worker":"w1","free_bytes":1,"used_bytes":2,"files":3,"scrubbed_at":4.5,"damaged":1,'
            '"refused":2}'
        ),
    ),
    (
        m.Inventory(
            worker="w2",
            blobs=(m.BlobEntry(SHA, 4),),
            records=(m.SealedRecord(SHA, "AbC="),),
            forgotten=("DeF=",),
            report=UID,
            page=1,
            last=False,
        ),
        wire(
            '{"worker":"w2","blobs":[{"sha256":"<SHA>","size":4}],'
            '"records":[{"sha256":"<SHA>","sealed":"AbC="}],"forgotten":["DeF="],'
            '"report":"<UID>","page":1,"last":false}'
        ),
    ),
    (
        m.ServeRequest(sha256=SHA, size=4, reply_to="q", correlation_id="c"),
        wire('{"sha256":"<SHA>","size":4,"reply_to":"q","correlation_id":"c"}'),
    ),
    (
        m.CopyRequest(sha256=SHA, size=4, target="w2", upload_id=UID),
        wire('{"sha256":"<SHA>","size":4,"target":"w2","upload_id":"<UID>"}'),
    ),
    (
        m.RestoreEnd(worker="w1", sha256=SHA, size=4),
        wire('{"worker":"w1","sha256":"<SHA>","size":4}'),
    ),
    (m.RestoreFailed(worker="w1", reason="gone"), wire('{"worker":"w1","reason":"gone"}')),
    (m.DeleteBlob(sha256=SHA), wire('{"sha256":"<SHA>"}')),
    (
        m.HaveRequest(upload_id=UID, reply_to="q", correlation_id="c"),
        wire('{"upload_id":"<UID>","reply_to":"q","correlation_id":"c"}'),
    ),
    (
        m.UploadHave(upload_id=UID, seqs=(0, 1, 3), complete=False),
        wire('{"upload_id":"<UID>","seqs":[0,1,3],"complete":false}'),
    ),
    (m.DiscardUpload(upload_id=UID), wire('{"upload_id":"<UID>"}')),
    (
        m.RecordVersions(
            records=(m.SealedRecord(SHA, "AbC="),),
            expect=(m.Expect(UID, "alice", ("w1", "w2")),),
        ),
        wire(
            '{"records":[{"sha256":"<SHA>","sealed":"AbC="}],'
            '"expect":[{"upload_id":"<UID>","sender":"alice","chain":["w1","w2"]}]}'
        ),
    ),
    (
        m.ForgetVersions(keys=("DeF=",)),
        wire('{"keys":["DeF="]}'),
    ),
    (m.ReportRequest(), wire("{}")),
    (
        m.ReplicaDamaged(worker="w1", sha256=SHA, reason="SHA-256 mismatch"),
        wire('{"worker":"w1","sha256":"<SHA>","reason":"SHA-256 mismatch"}'),
    ),
    (m.VerifyRequest(names=("a",)), wire('{"names":["a"]}')),
    (
        m.VerifyAccepted(copies=(m.VerifyCopy("a", 2, "w1", SHA),), missing=("b",)),
        wire(
            '{"copies":[{"name":"a","version":2,"worker":"w1","sha256":"<SHA>"}],"missing":["b"]}'
        ),
    ),
    (
        m.VerifyBlob(sha256=SHA, size=3, reply_to="q", correlation_id="c"),
        wire('{"sha256":"<SHA>","size":3,"reply_to":"q","correlation_id":"c"}'),
    ),
    (
        m.VerifyResult(worker="w1", sha256=SHA, ok=False, reason="gone"),
        wire('{"worker":"w1","sha256":"<SHA>","ok":false,"reason":"gone"}'),
    ),
    (
        m.BlobDeleted(worker="w1", sha256=SHA, size=5),
        wire('{"worker":"w1","sha256":"<SHA>","size":5}'),
    ),
    (
        m.KeyAdd(wrapped="AbC=", host="laptop", first=True),
        wire('{"wrapped":"AbC=","host":"laptop","first":true}'),
    ),
    (m.KeyAdded(id=KEY, existed=False), wire('{"id":"<KEY>","existed":false}')),
    (m.KeyList(), wire("{}")),
    (m.KeyGet(), wire("{}")),
    (
        m.KeyListReply(keys=(m.KeyEntry(KEY, 1.5, "laptop", "AbC="),)),
        wire('{"keys":[{"id":"<KEY>","created":1.5,"host":"laptop","wrapped":"AbC="}]}'),
    ),
    (m.KeyRemove(id=KEY), wire('{"id":"<KEY>"}')),
    (m.KeyRemoved(id=KEY), wire('{"id":"<KEY>"}')),
    (
        m.SnapshotCommit(
            time=1.5,
            host="laptop",
            tags=("daily",),
            meta="AbC=",
            manifest=(m.ChunkRef(SHA, 40, 3),),
            chunks=(SHA,),
            replicas=2,
            client="c1",
            parent=KEY,
        ),
        wire(
            '{"time":1.5,"host":"laptop","tags":["daily"],"meta":"AbC=",'
            '"manifest":[{"sha256":"<SHA>","size":40,"plain":3}],"chunks":["<SHA>"],'
            '"replicas":2,"client":"c1","parent":"<KEY>"}'
        ),
    ),
    (m.SnapshotCommitted(id=KEY), wire('{"id":"<KEY>"}')),
    (m.SnapshotsRequest(), wire("{}")),
    (
        # A listing leaves each manifest out: only snapshot.got carries it.
        m.SnapshotsReply(snapshots=(m.SnapshotEntry(KEY, 1.5, "laptop", ("daily",), "AbC="),)),
        wire(
            '{"snapshots":[{"id":"<KEY>","time":1.5,"host":"laptop","tags":["daily"],'
            '"meta":"AbC=","manifest":[]}]}'
        ),
    ),
    (m.SnapshotGet(id=KEY, pin=True), wire('{"id":"<KEY>","pin":true}')),
    (
        m.SnapshotGot(
            snapshot=m.SnapshotEntry(KEY, 1.5, "laptop", (), "AbC=", (m.ChunkRef(SHA, 40, 3),))
        ),
        wire(
            '{"snapshot":{"id":"<KEY>","time":1.5,"host":"laptop","tags":[],"meta":"AbC=",'
            '"manifest":[{"sha256":"<SHA>","size":40,"plain":3}]}}'
        ),
    ),
    (m.ForgetRequest(ids=(KEY,)), wire('{"ids":["<KEY>"]}')),
    (m.Forgotten(ids=(KEY,)), wire('{"ids":["<KEY>"]}')),
]


def test_every_message_type_has_a_golden_body() -> None:
    assert sorted({msg.TYPE for msg, _ in GOLDEN}) == sorted(m.REGISTRY)


@pytest.mark.parametrize("msg, body", GOLDEN, ids=[msg.TYPE for msg, _ in GOLDEN])
def test_message_encodes_to_its_golden_bytes(msg: m.Message, body: bytes) -> None:
    assert msg.encode() == body


@pytest.mark.parametrize("msg, body", GOLDEN, ids=[msg.TYPE for msg, _ in GOLDEN])
def test_golden_bytes_decode_to_the_message(msg: m.Message, body: bytes) -> None:
    assert m.decode(msg.TYPE, body) == msg


@pytest.mark.parametrize("msg, body", GOLDEN, ids=[msg.TYPE for msg, _ in GOLDEN])
def test_golden_bytes_decode_from_pretty_json_in_any_key_order(msg: m.Message, body: bytes) -> None:
    # Another implementation may space its JSON and order its keys as it likes.
    data = json.loads(body)
    pretty = json.dumps(dict(reversed(list(data.items()))), indent=2, ensure_ascii=True)
    assert m.decode(msg.TYPE, pretty.encode()) == msg


def test_defaults_a_client_may_leave_out() -> None:
    # What docs/protocol.md lets a sender omit, and what the receiver reads then.
    assert m.decode("download.request", b'{"name":"x"}') == m.DownloadRequest("x", (), "", 0)
    assert m.decode("list.request", b"{}") == m.ListRequest("", "")
    # A field this version no longer has (an older client's "client") is ignored.
    assert m.decode("status.request", b'{"client":"c1"}') == m.StatusRequest()
    old = m.decode(
        "upload.request", f'{{"name":"x","size":1,"sha256":"{SHA}","replicas":2}}'.encode()
    )
    assert (old.mode, old.mtime) == (0, 0.0)  # type: ignore[attr-defined]
    assert m.decode("delete.request", b'{"name":"x"}') == m.DeleteRequest("x", 0)
    assert m.decode("status.request", b"{}") == m.StatusRequest()
    reply = m.decode("status.reply", b'{"workers":[],"under_replicated":2,"files":5}')
    assert reply == m.StatusReply((), 2, 5, 0, 0)


# -- chunks and packs: raw bodies, metadata in AMQP headers ------------------------------------


def test_chunk_type_names() -> None:
    assert (m.CHUNK_TYPE, m.PACK_TYPE, m.RESTORE_CHUNK_TYPE) == (
        "upload.chunk",
        "upload.pack",
        "restore.chunk",
    )


CHUNK = m.ChunkHeaders(
    upload_id=UID,
    seq=1,
    offset=1048576,
    total_size=1048577,
    chunk_count=2,
    sha256=SHA,
    chain=("w3", "w1"),
    hop=1,
)
CHUNK_HEADERS = {
    "upload_id": UID,
    "seq": 1,
    "offset": 1048576,
    "total_size": 1048577,
    "chunk_count": 2,
    "sha256": SHA,
    "chain": ["w3", "w1"],
    "hop": 1,
}


def test_upload_chunk_headers_are_golden() -> None:
    assert CHUNK.to_headers() == CHUNK_HEADERS
    assert m.ChunkHeaders.from_headers(CHUNK_HEADERS, body_len=1) == CHUNK


def test_upload_chunk_headers_as_pika_may_deliver_them() -> None:
    # AMQP long strings can come back as bytes, and every message carries sent_at_ms.
    raw: dict[str, Any] = {
        **CHUNK_HEADERS,
        "upload_id": UID.encode(),
        "sha256": SHA.encode(),
        "chain": [b"w3", b"w1"],
        "sent_at_ms": 1_700_000_000_000,
    }
    assert m.ChunkHeaders.from_headers(raw, body_len=1) == CHUNK


def test_upload_pack_headers_are_golden() -> None:
    other = "ef" * 32
    pack = m.PackHeaders(
        files=(m.PackEntry(UID, SHA, 3), m.PackEntry("12" * 16, other, 0)),
        chain=("w2", "w4"),
        hop=0,
    )
    manifest = f'[["{UID}","{SHA}",3],["{"12" * 16}","{other}",0]]'
    headers: dict[str, Any] = {
        # the manifest is one JSON string, [[upload_id, sha256, size], ...] in body order
        "files": manifest,
        "chain": ["w2", "w4"],
        "hop": 0,
    }
    assert pack.to_headers() == headers
    assert m.PackHeaders.from_headers(headers, body_len=3) == pack
    as_bytes = {**headers, "files": manifest.encode(), "chain": [b"w2", b"w4"]}
    assert m.PackHeaders.from_headers(as_bytes, body_len=3) == pack
    assert pack.slices() == [(pack.files[0], 0, 3), (pack.files[1], 3, 3)]


def test_restore_chunk_headers_are_golden() -> None:
    assert m.RestoreChunk(seq=2, offset=2097152).to_headers() == {"seq": 2, "offset": 2097152}
    got = m.RestoreChunk.from_headers({"seq": 2, "offset": 2097152, "sent_at_ms": 1})
    assert got == m.RestoreChunk(2, 2097152)


# -- the same names as docs/protocol.md ---------------------------------------------------------


def backticked(text: str) -> list[str]:
    """The names in backticks, leaving out what is in parentheses (nested too), in [...]
    lists, and after a ";" (a remark)."""
    while True:
        stripped = re.sub(r"\([^()]*\)", "", text)
        if stripped == text:
            break
        text = stripped
    text = re.sub(r"\[[^\]]*\]", "", text).split(";")[0]
    return re.findall(r"`([a-z_][a-z0-9_]*)`", text)


def nested(text: str) -> dict[str, list[str]]:
    """For ``name`: `[{a, b}]`` in the docs: {"name": ["a", "b"]}."""
    return {
        k: [f.strip() for f in v.split(",")]
        for k, v in re.findall(r"`([a-z_][a-z0-9_]*)`: `\[\{([^}]*)\}\]`", text)
    }


def documented_fields(type_name: str) -> str:
    """The text in docs/protocol.md that lists a message's fields: its row in a table of
    messages, `type` (fields) in a sentence, or "`type` ... The/Its fields are ..."."""
    quoted = re.escape(f"`{type_name}`")
    row = re.search(rf"^\| {quoted} \| (.*?) \|", PROTOCOL, re.M)
    if row:
        return row.group(1)
    text = " ".join(PROTOCOL.split())  # a sentence may wrap
    inline = re.search(rf"{quoted} \(((?:[^()]|\([^()]*\))*)\)", text)
    if inline and "`" in inline.group(1):
        return inline.group(1)
    sentence = re.search(
        rf"{quoted}[^.]*\. (?:The|Its) fields are ((?:[^.()]|\([^()]*\))*)\.", text
    )
    if sentence:
        return sentence.group(1)
    raise AssertionError(f"docs/protocol.md lists no fields for {type_name}")


def field_names(cls: type[Any]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# The documentation lags the code here; each entry says how. Fix the docs, then remove it.
_SEALED = "issue 24 (sealed chunks): the docs do not describe it yet"
_KEYS = "owner keys: docs/protocol.md does not describe the key.* messages yet"
DOC_GAPS: dict[str, str] = {}


@pytest.mark.parametrize(
    "type_name",
    [
        pytest.param(t, marks=pytest.mark.xfail(reason=DOC_GAPS[t], strict=True))
        if t in DOC_GAPS
        else t
        for t in sorted(m.REGISTRY)
    ],
)
def test_docs_list_the_fields_each_message_has(type_name: str) -> None:
    cls = m.REGISTRY[type_name]
    text = documented_fields(type_name)
    assert backticked(text) == field_names(cls), f"{type_name}: docs say {text!r}"
    hints = typing.get_type_hints(cls)
    for name, inner in nested(text).items():
        (item,) = typing.get_args(hints[name])[:1]
        assert inner == field_names(item), f"{type_name}.{name}: docs say {inner}"


def test_docs_name_every_message_type_and_no_other() -> None:
    known = set(m.REGISTRY) | {m.CHUNK_TYPE, m.PACK_TYPE, m.RESTORE_CHUNK_TYPE}
    for type_name in known - set(DOC_GAPS):
        assert f"`{type_name}`" in PROTOCOL, f"docs/protocol.md never names {type_name}"
    queues = PROTOCOL.split("## Queues", 1)[1].split("\n## ", 1)[0]
    carried = set(re.findall(r"`([a-z]+\.[a-z]+)`", queues)) - {"warren.dlx"}
    assert carried and carried <= known, carried - known


def test_docs_headers_tables_match_the_header_dicts() -> None:
    chunk = PROTOCOL.split("`upload.chunk`: the body", 1)[1].split("Properties:", 1)[0]
    names = [n for cell in re.findall(r"^\| (`[^|]*`) \|", chunk, re.M) for n in backticked(cell)]
    assert sorted(names) == sorted(CHUNK_HEADERS) and "header" not in names
    pack = " ".join(PROTOCOL.split("### Upload: sealed chunks in packs")[1].split())
    assert "its headers are `chain`, `hop` and `files`" in pack
    restore = " ".join(PROTOCOL.split("### Restore: by chunk")[1].split())
    assert "with its raw bytes in the body and `seq` and `offset` in the headers" in restore
    assert "Every message carries the header `sent_at_ms`" in " ".join(PROTOCOL.split())


# -- compression on the wire: the `encoding` header ---------------------------------------------


def test_encoding_names() -> None:
    assert (m.RAW, m.ZSTD, m.ENCODINGS) == ("", "zstd", ("", "zstd"))


def test_a_compressed_upload_chunk_carries_encoding_zstd() -> None:
    compressed = {**CHUNK_HEADERS, "encoding": "zstd"}
    chunk = dataclasses.replace(CHUNK, encoding="zstd")
    assert chunk.to_headers() == compressed
    # The body's length is of the compressed bytes: checked against the file once decoded.
    assert m.ChunkHeaders.from_headers(compressed, body_len=10**9) == chunk
    assert m.ChunkHeaders.from_headers({**compressed, "encoding": b"zstd"}, body_len=1) == chunk


def test_raw_chunks_carry_no_encoding_header_as_before_compression() -> None:
    assert "encoding" not in CHUNK.to_headers()
    assert m.ChunkHeaders.from_headers({**CHUNK_HEADERS, "encoding": ""}, body_len=1) == CHUNK


@pytest.mark.parametrize("value", ["gzip", "ZSTD", 1])
def test_an_unknown_encoding_is_refused(value: object) -> None:
    with pytest.raises(DecodeError, match="encoding"):
        m.ChunkHeaders.from_headers({**CHUNK_HEADERS, "encoding": value}, body_len=1)
    pack = m.PackHeaders(files=(m.PackEntry(UID, SHA, 3),), chain=("w2",), hop=0)
    with pytest.raises(DecodeError, match="encoding"):
        m.PackHeaders.from_headers({**pack.to_headers(), "encoding": value}, body_len=3)
    with pytest.raises(DecodeError, match="encoding"):
        m.RestoreChunk.from_headers({"seq": 0, "offset": 0, "encoding": value})


def test_a_compressed_pack_carries_encoding_zstd_for_the_whole_body() -> None:
    pack = m.PackHeaders(
        files=(m.PackEntry(UID, SHA, 3), m.PackEntry("12" * 16, SHA, 5)),
        chain=("w2", "w4"),
        hop=1,
        encoding="zstd",
    )
    headers = {
        "files": f'[["{UID}","{SHA}",3],["{"12" * 16}","{SHA}",5]]',
        "chain": ["w2", "w4"],
        "hop": 1,
        "encoding": "zstd",
    }
    assert pack.to_headers() == headers
    assert m.PackHeaders.from_headers(headers, body_len=2) == pack  # compressed: 8 bytes decoded
    assert pack.total == 8
    raw = m.PackHeaders(pack.files, pack.chain, pack.hop)
    assert "encoding" not in raw.to_headers()
    with pytest.raises(DecodeError, match="add up"):
        m.PackHeaders.from_headers(raw.to_headers(), body_len=2)


def test_a_compressed_restore_chunk_carries_encoding_zstd() -> None:
    chunk = m.RestoreChunk(seq=2, offset=2097152, encoding="zstd")
    assert chunk.to_headers() == {"seq": 2, "offset": 2097152, "encoding": "zstd"}
    assert m.RestoreChunk.from_headers({**chunk.to_headers(), "encoding": b"zstd"}) == chunk
    assert "encoding" not in m.RestoreChunk(seq=2, offset=0).to_headers()


def test_docs_describe_the_encoding_header() -> None:
    text = " ".join(PROTOCOL.split())
    for needed in (
        "the header `encoding`",
        "`zstd`",
        "which a sealed chunk never does",
        "is copied as its frames",
    ):
        assert needed in text, needed
