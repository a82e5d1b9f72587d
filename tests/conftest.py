"""Suite-wide rules and the shared ``peers`` fixture.

--strict-skips (on by default when CI=true; ``make test`` passes it): a test skipped for a
missing tool is a hole in the suite, so any skip becomes a failure, except one: a test marked
``cassandra`` skipped by the ``cassandra_session`` fixture with exactly ``CASSANDRA_SKIP``
(no CASSANDRA_CONTACT_POINTS: we cannot run a Cassandra server here).
Benchmarks (marker ``bench``) are deselected unless --run-bench is given.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.peers.group import PeerGroup


#: the one skip --strict-skips allows (and only on tests marked ``cassandra``)
CASSANDRA_SKIP = "Cassandra tests need a server: set CASSANDRA_CONTACT_POINTS=host[,host...] to run them"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--strict-skips", action="store_true", default=None,
                     help="fail skipped tests (except the Cassandra suite); default on when CI=true")
    parser.addoption("--run-bench", action="store_true", default=False,
                     help="also run tests marked bench")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cassandra: needs a Cassandra server; may be skipped")


def _strict(config: pytest.Config) -> bool:
    opt = config.getoption("--strict-skips")
    if opt is not None:
        return bool(opt)
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-bench"):
        return
    bench = [item for item in items if item.get_closest_marker("bench")]
    if bench:
        config.hook.pytest_deselected(items=bench)
        items[:] = [item for item in items if not item.get_closest_marker("bench")]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not _strict(item.config):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if item.get_closest_marker("cassandra") and reason.removeprefix("Skipped: ") == CASSANDRA_SKIP:
        return
    report.outcome = "failed"
    report.longrepr = f"skipped test not allowed with --strict-skips (CI): {reason}"


@pytest.fixture
async def peers(tmp_path) -> AsyncIterator["PeerGroup"]:  # type: ignore[no-untyped-def]
    """Real SIP peers for one test (baresip, SIPp), all stopped at teardown even on failure."""
    from tests.peers.group import PeerGroup

    group = PeerGroup(tmp_path)
    try:
        yield group
    finally:
        await group.close()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One real etcd for the session (tests/peers/etcd.py); tests keep apart by key prefix."""
    from tests.peers.etcd import EtcdServer

    server = EtcdServer(str(tmp_path_factory.mktemp("etcd"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cassandra_session():  # type: ignore[no-untyped-def]
    """(session, keyspace) on the Cassandra at CASSANDRA_CONTACT_POINTS (CASSANDRA_PORT,
    CASSANDRA_LOCAL_DC, CASSANDRA_REPLICATION='simple:1' optional): a throwaway keyspace with
    the CDR schema, dropped at the end. Skips with CASSANDRA_SKIP when the variable is unset."""
    points = [p.strip() for p in os.environ.get("CASSANDRA_CONTACT_POINTS", "").split(",") if p.strip()]
    if not points:
        pytest.skip(CASSANDRA_SKIP)
    import uuid

    from cassandra.cluster import Cluster
    from cassandra.policies import DCAwareRoundRobinPolicy

    from cluster.cassandra.schema import Replication, schema_statements

    cluster = Cluster(points, port=int(os.environ.get("CASSANDRA_PORT", "9042")),
                      load_balancing_policy=DCAwareRoundRobinPolicy(os.environ.get("CASSANDRA_LOCAL_DC")))
    session = cluster.connect()
    keyspace = f"hivepbx_test_{uuid.uuid4().hex[:12]}"
    try:
        replication = Replication.parse(os.environ.get("CASSANDRA_REPLICATION", "simple:1"))
        for stmt in schema_statements(keyspace, replication, 86_400):
            session.execute(stmt, timeout=60)
        yield session, keyspace
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
        cluster.shutdown()
