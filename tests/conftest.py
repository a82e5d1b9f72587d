"""Suite-wide rules and the shared ``peers`` fixture.

--strict-skips (on by default when CI=true; ``make test`` passes it): a test skipped for a
missing tool is a hole in the suite, so any skip becomes a failure, except the Cassandra suite
(marker ``cassandra``, or a skip reason naming Cassandra), which needs a server we do not run.
Benchmarks (marker ``bench``) are deselected unless --run-bench is given.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.peers.group import PeerGroup


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
    if item.get_closest_marker("cassandra") or "cassandra" in reason.lower():
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
