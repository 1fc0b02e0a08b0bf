"""warren.compression: what is sent compressed, what travels as it is, and what a receiver
refuses to decode."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest
import zstandard

from warren import compression as z
from warren import messages as m
from warren.errors import DecodeError
from warren.pipeline import pipelined

TEXT = b"".join(
    f'10.0.{i % 250}.{i % 7} - - [01/Jan/2026:00:00:{i % 60:02}] "GET /item/{i} HTTP/1.1" 200 '
    f"{i * 37 % 5000}\n".encode()
    for i in range(20_000)
)[: 1024 * 1024]


def test_text_is_sent_compressed_and_decodes_to_itself() -> None:
    body, encoding = z.encode(TEXT)
    assert encoding == m.ZSTD == "zstd"
    assert len(body) < len(TEXT) // 3
    assert z.decode(body, encoding, len(TEXT), exact=True) == TEXT


def test_random_bytes_travel_as_they_are() -> None:
    data = os.urandom(1024 * 1024)
    body, encoding = z.encode(data)
    assert (body, encoding) == (data, m.RAW)
    assert z.decode(body, encoding, len(data)) is data


def test_a_chunk_that_would_grow_travels_raw() -> None:
    # Too short for the probe: compressed whole, it grows by the frame's header.
    data = os.urandom(100_000)
    assert len(zstandard.ZstdCompressor(level=1).compress(data)) > len(data)
    assert z.encode(data) == (data, m.RAW)


def test_a_chunk_that_shrinks_by_too_little_travels_raw() -> None:
    # Random bytes with a little repetition: zstd saves under MIN_SAVING.
    data = os.urandom(60_000) + bytes(1500)
    packed = zstandard.ZstdCompressor(level=1).compress(data)
    assert len(packed) < len(data)
    assert not z.shrinks(len(data), len(packed))
    assert z.encode(data) == (data, m.RAW)


def test_tiny_and_empty_chunks_travel_raw() -> None:
    assert z.encode(b"") == (b"", m.RAW)
    assert z.encode(b"a" * (z.MIN_SIZE - 1)) == (b"a" * (z.MIN_SIZE - 1), m.RAW)
    body, encoding = z.encode(b"a" * z.MIN_SIZE)
    assert encoding == m.ZSTD and z.decode(body, encoding, z.MIN_SIZE) == b"a" * z.MIN_SIZE


def test_incompressible_start_is_found_from_the_probe_alone() -> None:
    """A chunk whose first PROBE bytes do not compress is sent raw without compressing the
    rest: that is what keeps the check cheap on photos, archives and video."""
    data = os.urandom(z.PROBE) + bytes(3 * z.PROBE)
    assert z.encode(data) == (data, m.RAW)


def test_finding_that_random_chunks_do_not_compress_is_cheap() -> None:
    data = os.urandom(1024 * 1024)
    started = time.process_time()
    for _ in range(20):
        z.encode(data)
    probe = (time.process_time() - started) / 20
    c = zstandard.ZstdCompressor(level=1)
    started = time.process_time()
    for _ in range(20):
        c.compress(data)
    whole = (time.process_time() - started) / 20
    assert probe < whole / 4


@pytest.mark.parametrize(
    "body, encoding, limit, why",
    [
        (b"not a frame at all", m.ZSTD, 100, "not a zstd frame"),
        (zstandard.ZstdCompressor().compress(b"x" * 1000), m.ZSTD, 999, "more than"),
        (
            zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 1000),
            m.ZSTD,
            1000,
            "without its content size",
        ),
        (zstandard.ZstdCompressor().compress(b"x" * 1000)[:-4], m.ZSTD, 1000, "cut short"),
        # zstd itself would read the first frame and ignore the rest; a worker keeps the
        # body as it came, so nothing may hide after the frame
        (zstandard.ZstdCompressor().compress(b"x" * 1000) + b"hidden", m.ZSTD, 2000, "after"),
        (zstandard.ZstdCompressor().compress(b"x" * 500) * 2, m.ZSTD, 1000, "after"),
        (b"x" * 10, "gzip", 10, "unknown encoding"),
        (b"x" * 11, m.RAW, 10, "at most 10"),
    ],
)
def test_what_does_not_decode_is_a_decode_error(
    body: bytes, encoding: str, limit: int, why: str
) -> None:
    with pytest.raises(DecodeError, match=why):
        z.decode(body, encoding, limit)


def test_a_frame_claiming_gigabytes_is_refused_before_anything_is_made() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(64 * 1024 * 1024))
    assert len(bomb) < 10_000
    with pytest.raises(DecodeError, match="more than"):
        z.decode(bomb, m.ZSTD, 1024 * 1024)


def test_exact_sizes_must_match() -> None:
    body, encoding = z.encode(TEXT)
    with pytest.raises(DecodeError, match="expected 1048577"):
        z.decode(body, encoding, len(TEXT) + 1, exact=True)


def test_pipelined_keeps_the_order_and_works_ahead_on_another_thread() -> None:
    threads: set[str] = set()

    def work(i: int) -> int:
        threads.add(threading.current_thread().name)
        return i * i

    assert list(pipelined(range(100), work)) == [i * i for i in range(100)]
    assert threads == {"warren-encode"}


def test_pipelined_raises_an_error_in_its_place() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("the file changed size")

    got: list[int] = []
    with pytest.raises(OSError, match="changed size"):
        for x in pipelined(items(), lambda i: i):
            got.append(x)
    assert got == [1, 2]


def test_pipelined_closed_early_stops_its_thread() -> None:
    taken: list[int] = []

    def work(i: int) -> int:
        taken.append(i)
        return i

    before = threading.active_count()
    gen = pipelined(range(10_000), work, ahead=2)
    assert next(gen) == 0
    gen.close()
    assert threading.active_count() == before
    assert len(taken) < 10
