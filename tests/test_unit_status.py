"""``status`` and ``list`` on the in-memory broker: they read the same catalog, so they never
disagree about a file's copies."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.stubcluster import StubCluster


def test_status_counts_a_repaired_file_as_replicated_as_soon_as_list_shows_it(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given a file on two workers, and one of them lost
    (tmp_path / "x.bin").write_bytes(os.urandom(5000))
    with stub.session() as s:
        chain = s.upload(tmp_path / "x.bin", "x.bin", 2).chain
    stub.kill(chain[0])
    # When the repair lands: the file is listed with two live replicas again, not on the
    # lost worker (the listing is read about every 20 ms)
    deadline = time.monotonic() + 20
    with stub.session() as s:
        while True:
            (entry,) = s.files()
            if len(entry.replicas) == 2 and chain[0] not in entry.replicas:
                break
            assert time.monotonic() < deadline, "the file was not repaired"
            time.sleep(0.02)
        # Then the first status after that listing counts nothing under-replicated
        status = s.status()
    assert status.under_replicated == 0
