"""Fixtures: one private RabbitMQ node for the whole session, a fresh cluster per test module.

Broker tests never depend on a broker someone left running: the suite starts its own
node from the ``rabbitmq-server`` binary on free ports in a temporary folder. In CI a
missing binary fails those tests; on a laptop it skips them with the reason.

In CI (the environment variable ``CI`` set) no test may skip at all: a skip there hides a
test that should have run, so it is reported as a failure with the skip's reason. Outside
CI a skip is allowed, and ``-rs`` (in pyproject.toml) prints why.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.localnode import SERVER_CANDIDATES, LocalNode, find_binary
from tests.cluster import Cluster, MakeCluster
from tests.stubcluster import StubCluster
from warren.errors import UsageError


def pytest_configure(config: pytest.Config) -> None:
    # A suite started in the background by a script (`make test &`) inherits SIGINT
    # ignored, one started under nohup SIGHUP ignored, and so would every client it
    # starts; a client keeps an ignored signal ignored (as a user under nohup wants), so
    # the tests that send those signals would fail. They test the signals: give this
    # process, and so its children, SIGINT, SIGHUP and SIGTERM back.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(sig) is signal.SIG_IGN:
            signal.signal(sig, signal.SIG_DFL)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "rabbit" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def _fail_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (os.environ.get("CI") and report.skipped) or hasattr(report, "wasxfail"):
        return  # an expected failure is reported as skipped too: it is not a skip
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped in CI, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_skip_in_ci(outcome.get_result())


@pytest.fixture(scope="session")
def rabbitmq_server() -> str:
    """The ``rabbitmq-server`` binary: a test that needs one fails without it in CI and
    is skipped with the reason elsewhere."""
    try:
        return find_binary(SERVER_CANDIDATES)
    except UsageError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


STATS_EVERY_HALF_SECOND = "collect_statistics_interval = 500\n"


@pytest.fixture(scope="session")
def rabbit(rabbitmq_server: str) -> Iterator[LocalNode]:
    base = Path(tempfile.mkdtemp(prefix="warren-rabbit-"))
    # Queue figures in the management API every 0.5 s, not 5: tests that wait on them (a
    # delivery in a worker's hands) see the moment. rabbitmqctl takes 2 to 20 s here.
    node = LocalNode.with_free_ports(base, name="wt", extra_config=STATS_EVERY_HALF_SECOND)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_cluster(rabbit: LocalNode, tmp_path: Path) -> Iterator[MakeCluster]:
    """Build clusters inside this test; all are stopped at its end."""
    made: list[Cluster] = []

    def factory(node: LocalNode | None = None, **env: str) -> Cluster:
        c = Cluster(node or rabbit, tmp_path / f"c{len(made)}", env_extra=env)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.stop_all()


@pytest.fixture(scope="module")
def cluster(rabbit: LocalNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A running manager and four workers shared by the tests of one module, and the
    default client's key (``init``), as ``make up`` provisions: clients a test starts
    itself (in a terminal) need it too."""
    c = Cluster(rabbit, tmp_path_factory.mktemp("cluster"))
    c.start_all(4)
    c.ensure_key()
    yield c
    c.stop_all()


# -- the in-memory broker ---------------------------------------------------------------------


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubCluster]:
    """A manager and four workers on the in-memory broker, all sharing one login."""
    c = StubCluster(tmp_path)
    try:
        yield c.start(4)
    finally:
        c.stop_all()


@pytest.fixture
def users(tmp_path: Path) -> Iterator[StubCluster]:
    """The same, each service its own broker user (the manager ``manager``, a worker its
    name), as ``manager users add`` makes them; a client names its own in its session."""
    c = StubCluster(tmp_path, users=True)
    try:
        yield c.start(4)
    finally:
        c.stop_all()
