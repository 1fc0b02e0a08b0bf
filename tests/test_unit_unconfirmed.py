"""Exit 0 only when every replica is confirmed, on the in-memory broker: a backup that
never says "stored" makes the upload fail as unavailable (exit 4) within the client's
transfer timeout, naming the silent worker, for a file cut into many chunks and for
small files sharing a pack.

Without these, a client that counted one confirmation as enough, or that forgot a step
had timed out, reported success with one copy of two and every other test passed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from client.outcomes import Progress, UploadResult
from tests.stubcluster import StubCluster, silence_backups
from warren import messages as m
from warren.errors import EXIT_UNAVAILABLE, Unavailable, WarrenError

TRANSFER_TIMEOUT = 1.0
MARGIN = 3.0  # placement and the loop's own pace, on a busy machine


def test_a_backup_that_never_confirms_a_file_fails_the_upload(
    stub: StubCluster, tmp_path: Path
) -> None:
    (tmp_path / "big.bin").write_bytes(os.urandom(5 * 64 * 1024 + 17))  # many chunks
    silenced = silence_backups(stub)
    with stub.session(transfer_timeout=TRANSFER_TIMEOUT) as s:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            s.upload(tmp_path / "big.bin", "big.bin", 2)
        took = time.monotonic() - started
    assert silenced, "the backup's confirmation was never dropped"
    assert caught.value.exit_code == EXIT_UNAVAILABLE
    assert str(caught.value) in {f"{w} did not confirm 'big.bin' in time." for w in silenced}
    assert took < TRANSFER_TIMEOUT + MARGIN, f"reported after {took:.1f} s"


def test_a_backup_that_never_confirms_a_pack_fails_every_file_of_it(
    stub: StubCluster, tmp_path: Path
) -> None:
    items = []
    for i in range(5):
        (tmp_path / f"s{i}").write_bytes(os.urandom(1000 + i))
        items.append((tmp_path / f"s{i}", f"small/s{i}"))
    silenced = silence_backups(stub)
    outcomes: dict[str, UploadResult | WarrenError] = {}
    with stub.session(transfer_timeout=TRANSFER_TIMEOUT) as s:
        started = time.monotonic()
        s.upload_many(items, 2, lambda _n: Progress(), outcomes.__setitem__)
        took = time.monotonic() - started
    assert [p.type for p in stub.broker.published if p.type == m.PACK_TYPE], "no pack was sent"
    assert silenced, "the backup's confirmation was never dropped"
    assert set(outcomes) == {name for _, name in items}
    for name, outcome in outcomes.items():
        assert isinstance(outcome, Unavailable), f"{name}: {outcome!r}"
        assert outcome.exit_code == EXIT_UNAVAILABLE
        assert str(outcome) in {f"{w} did not confirm {name!r} in time." for w in silenced}
    assert took < TRANSFER_TIMEOUT + MARGIN, f"reported after {took:.1f} s"
