"""Scale-out: warren on a three-node RabbitMQ cluster with quorum queues."""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localnode import LocalNode, cluster_url, start_cluster, stop_all
from tests.cluster import Cluster, MakeCluster, wait_for
from tests.test_faults import (
    confirmed_across,
    finish,
    frozen,
    random_file,
    still_in_flight,
    upload_in_flight,
)


@pytest.fixture(scope="module")
def nodes(rabbit: LocalNode) -> Iterator[list[LocalNode]]:
    base = Path(tempfile.mkdtemp(prefix="warren-cluster-"))
    nodes = [LocalNode.with_free_ports(base / f"node{i}", name=f"wc{i}") for i in range(3)]
    try:
        start_cluster(nodes)
        yield nodes
    finally:
        stop_all(nodes)
        shutil.rmtree(base, ignore_errors=True)


def quorum_cluster(make_cluster: MakeCluster, nodes: list[LocalNode]) -> Cluster:
    c = make_cluster(node=nodes[0], WARREN_QUEUE_TYPE="quorum")
    c.env_extra["WARREN_AMQP_URL"] = cluster_url(nodes, urllib.parse.quote(c.vhost, safe=""))
    return c


# The bounds of the waits below add up to about 10 minutes, and the three nodes take up to 2
# to start: the test's own timeout covers both, so a slow step fails with its own message.
@pytest.mark.timeout(900)
def test_a_broker_node_dies_mid_upload_and_nothing_confirmed_is_lost(
    nodes: list[LocalNode], make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given warren on a three-node cluster, every queue a quorum queue, a file stored
    c = quorum_cluster(make_cluster, nodes)
    c.start_all(3)
    vhost = urllib.parse.quote(c.vhost, safe="")
    queue = nodes[0].api("GET", f"queues/{vhost}/warren.manager.requests")
    assert queue["type"] == "quorum"
    before = random_file(tmp_path, "before.bin", 3 * 1024 * 1024)
    c.client("upload", str(before), timeout=60).ok()

    # When the node everyone is connected to (the first in the URL list) is killed
    # while a large upload is in flight, held there (every worker frozen with its replicas
    # half-written, so it cannot be confirmed before the node dies), and another upload
    # starts right after
    workers = ("w1", "w2", "w3")
    big, client = upload_in_flight(c, tmp_path, "big.bin", 30, workers)
    with frozen(c, workers):
        still_in_flight(c, client, workers)
        nodes[0].kill()
    during = [random_file(tmp_path, "during.bin", 2 * 1024 * 1024)]
    during += [random_file(tmp_path, f"during {i:02}", 500 + i) for i in range(10)]
    late = c.client_process(
        "upload", *map(str, during), WARREN_CONNECT_TIMEOUT="60", WARREN_REQUEST_TIMEOUT="60"
    )

    # Then each upload finished or failed with one clear sentence; the held one ended only
    # after the node had died, and the late one confirmed files on the surviving nodes
    confirmed = [
        before,
        *finish(client, [big], timeout=120),
        *confirmed_across(late, during, timeout=120),
    ]
    # And the services moved to the surviving nodes by themselves
    c.wait_alive(["w1", "w2", "w3"], timeout=60)
    assert all(p.poll() is None for p in c.procs.values())
    # (Each quorum queue that had its leader on the dead node elects a new one; until then
    # RabbitMQ may refuse publishes to it, so an operator waits for that, and so does this.)
    survivors = {n.nodename for n in nodes[1:]}

    def leaders_elected() -> bool:
        quorum = [q for q in nodes[1].api("GET", f"queues/{vhost}") if q["type"] == "quorum"]
        return bool(quorum) and all(q.get("leader") in survivors for q in quorum)

    wait_for(leaders_elected, timeout=60, what="quorum queue leaders on the surviving nodes")
    # And nothing confirmed, before the node died or across its death, is lost: before
    # anything is uploaded again, each is listed, on its holders' disks, and restores
    c.verify_stored(confirmed)
    # And a retry of what failed completes
    retry = [p for p in (big, *during) if p not in confirmed]
    if retry:
        # A worker may find the next worker's queue refusing for a while after the API
        # shows its new leader (seen: "could not forward to w1" for 40 s; workers now try
        # again for 8 s, then on a new connection): as a user would, run the upload again
        # after a pause, a few times at most.
        for _attempt in range(3):
            res = c.client("upload", *map(str, retry), timeout=120)
            if res.code == 0 or "could not forward to" not in res.err:
                break
            time.sleep(5)
        res.ok()
        c.verify_stored(retry)
