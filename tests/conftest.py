"""Suite-wide rules and the shared ``peers`` fixture.

--strict-skips (on by default when CI=true; ``make test`` passes it): a test skipped for a
missing tool is a hole in the suite, so any skip becomes a failure, except one: a test marked
``cassandra`` skipped by the ``cassandra_session`` fixture with exactly ``CASSANDRA_SKIP``
(no CASSANDRA_CONTACT_POINTS: we cannot run a Cassandra server here).
Benchmarks (marker ``bench``) are deselected unless --run-bench is given.

Under pytest-xdist (``make test`` runs ``-n 4``), tests marked ``quiet`` (listed in ``_QUIET``:
they measure what the machine manages in real time, a flood's send rate, a call timeline) run
with no other test running on any worker: see ``_RunLock``.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
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
    config.addinivalue_line("markers", "quiet: under xdist, runs while no other test runs (see _QUIET)")
    workerinput = getattr(config, "workerinput", None)
    # a node or CLI started without --data-dir must not share ~/.local/share/hivepbx with the
    # developer, nor with another xdist worker: each test process gets its own default (the
    # workers' inside the controller's, which removes them all at the end)
    ours = os.environ.get("HIVEPBX_TEST_DATA_DIR")
    if "HIVEPBX_DATA_DIR" not in os.environ:
        root = tempfile.mkdtemp(prefix="hivepbx-data-")
        os.environ["HIVEPBX_DATA_DIR"] = os.environ["HIVEPBX_TEST_DATA_DIR"] = root
        config._hivepbx_data_dir = root
    elif workerinput is not None and ours and ours == os.environ["HIVEPBX_DATA_DIR"]:
        os.environ["HIVEPBX_DATA_DIR"] = tempfile.mkdtemp(prefix=f"{workerinput['workerid']}-", dir=ours)
    if workerinput is not None and workerinput.get("hivepbx_run_lock"):
        config.pluginmanager.register(_RunLock(workerinput["hivepbx_run_lock"]), "hivepbx-run-lock")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # type: ignore[no-untyped-def]
    """xdist controller: every worker of this run gets the same lock-file prefix (another run
    on the machine, another prefix)."""
    config = node.config
    if not hasattr(config, "_hivepbx_run_lock"):
        config._hivepbx_run_lock = tempfile.mkdtemp(prefix="hivepbx-xdist-")
    node.workerinput["hivepbx_run_lock"] = config._hivepbx_run_lock


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for attr in ("_hivepbx_run_lock", "_hivepbx_data_dir"):
        path = getattr(config, attr, None)
        if path:
            shutil.rmtree(path, ignore_errors=True)


#: tests whose outcome depends on the machine keeping up in real time: with four workers on
#: two cores their timing is not what they measure, so they run alone (node id prefixes)
_QUIET = (
    "tests/sbc/test_protection_flood.py::",  # the flood must really reach ~1,300 requests/s
    "tests/interop/pbx/test_conference_sipp.py::test_three_talkers_hear_each_other_listener_muted_fifth_refused",
)


class _RunLock:
    """A readers-writer lock over xdist workers, on flock(2): every test holds ``rw`` shared, a
    ``quiet`` test holds it exclusive. A writer first takes ``gate`` exclusive, which readers
    pass through (shared) on the way in, so a waiting quiet test is not starved by a stream
    of short ones. Nothing is held between tests: an idle worker never blocks the others."""

    def __init__(self, directory: str) -> None:
        self.gate = os.open(os.path.join(directory, "gate"), os.O_RDWR | os.O_CREAT, 0o600)
        self.rw = os.open(os.path.join(directory, "rw"), os.O_RDWR | os.O_CREAT, 0o600)

    # outermost (tryfirst), so waiting here is outside pytest-timeout's clock and --durations
    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Iterator[None]:
        quiet = item.get_closest_marker("quiet") is not None
        if quiet:
            fcntl.flock(self.gate, fcntl.LOCK_EX)
            fcntl.flock(self.rw, fcntl.LOCK_EX)
        else:
            fcntl.flock(self.gate, fcntl.LOCK_SH)
            fcntl.flock(self.rw, fcntl.LOCK_SH)
            fcntl.flock(self.gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self.rw, fcntl.LOCK_UN)
            if quiet:
                fcntl.flock(self.gate, fcntl.LOCK_UN)


def _strict(config: pytest.Config) -> bool:
    opt = config.getoption("--strict-skips")
    if opt is not None:
        return bool(opt)
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


#: under pytest-xdist (``make test`` runs ``-n``) the long waiting tests start first, so no
#: worker is left with a 50 s drill when the others are done; whole modules move, in order,
#: so module fixtures (a Kafka broker) still start once per worker
_FIRST = ("tests/chaos/", "tests/interop/", "tests/sbc/", "tests/cluster/", "tests/integration/")


def _start_rank(item: pytest.Item) -> int:
    if item.get_closest_marker("quiet"):
        return -1  # first and together, on one worker while the others start
    path = item.nodeid.split("::", 1)[0]
    return next((i for i, prefix in enumerate(_FIRST) if path.startswith(prefix)), len(_FIRST))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid.startswith(_QUIET):
            item.add_marker(pytest.mark.quiet)
    items.sort(key=_start_rank)  # stable: the order inside a module stays
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
