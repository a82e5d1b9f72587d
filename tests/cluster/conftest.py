"""Fixtures of the etcd backend tests: each test gets its own key prefix on the session's etcd
(tests/conftest.py ``etcd_server``), and every store it opens is closed and its keys removed."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def etcd_prefix() -> str:
    return f"/test-{uuid.uuid4().hex}/"


@pytest.fixture
async def open_stores(etcd_server, etcd_prefix):
    """``await open_stores()``: one more node's EtcdStores on the test's prefix (own client)."""
    from cluster.etcd import open_etcd

    opened = []

    async def _open(**kw):
        stores = await open_etcd(etcd_server.endpoint, etcd_prefix, **kw)
        opened.append(stores)
        return stores

    yield _open
    for stores in opened:
        try:
            await stores.client.delete_prefix(stores.keys.root)
        except Exception:
            pass
        await stores.aclose()
