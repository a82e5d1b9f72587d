"""--strict-skips lets exactly one skip through: a ``cassandra``-marked test skipped for the
missing server with CASSANDRA_SKIP. Run on a copy of tests/conftest.py with pytester."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = Path(__file__).resolve().parents[2] / "conftest.py"


def test_only_the_cassandra_server_skip_is_allowed(pytester, monkeypatch):
    monkeypatch.delenv("CASSANDRA_CONTACT_POINTS", raising=False)
    monkeypatch.delenv("CI", raising=False)  # strict by default under CI: the loose run must not be
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makeconftest(CONFTEST.read_text())
    pytester.makepyfile(test_skips='''
        import pytest
        from conftest import CASSANDRA_SKIP

        @pytest.mark.cassandra
        def test_marked_exact_reason():
            pytest.skip(CASSANDRA_SKIP)

        @pytest.mark.cassandra
        def test_marked_server_fixture(cassandra_session):
            pass

        @pytest.mark.cassandra
        def test_marked_other_reason():
            pytest.skip("cassandra-driver missing")

        def test_unmarked_exact_reason():
            pytest.skip(CASSANDRA_SKIP)

        def test_tool_missing():
            pytest.skip("sipp not installed")
    ''')
    result = pytester.runpytest("--strict-skips", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=2, failed=3)
    out = result.stdout.str()
    for name in ("test_marked_other_reason", "test_unmarked_exact_reason", "test_tool_missing"):
        assert f"FAILED test_skips.py::{name}" in out
    loose = pytester.runpytest("-p", "no:cacheprovider")
    loose.assert_outcomes(skipped=5)
