"""The ``store`` fixture the feature tests of node/pbx share: a real embedded backend
(SQLite) in the test's tmp_path, closed afterwards."""

from __future__ import annotations

import pytest

from node.embedded import open_embedded


@pytest.fixture
def store(tmp_path):
    b = open_embedded(tmp_path)
    yield b
    b.close()
