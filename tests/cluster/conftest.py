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


@pytest.fixture
async def cluster_nodes(tmp_path, etcd_server, etcd_prefix):
    """``await cluster_nodes("node", **options)``: nodes '<id>-a' and '<id>-b' on the
    ``cluster`` backend in this test's event loop, each with its own ports and data dir, on the
    test's etcd prefix; ``options`` go to node_config (e.g. kafka_bootstrap). All are stopped
    and the prefix removed afterwards."""
    from node.runtime.app import Node
    from tests.interop.conftest import RunningNode, node_config
    from tests.peers.net import free_port

    nodes: list[RunningNode] = []

    async def _start(node_id: str, **options) -> list[RunningNode]:
        for name in ("a", "b"):
            port = free_port("127.0.0.1")
            cfg = node_config(
                tmp_path / name, port, ring_timeout=8, backend="cluster", node_id=f"{node_id}-{name}",
                etcd_endpoints=(etcd_server.endpoint,), etcd_prefix=etcd_prefix, membership_ttl=2, **options,
            )
            node = Node(cfg)
            try:
                await node.start()
            except BaseException:
                await node.stop(0)
                raise
            nodes.append(RunningNode(node, port))
        return list(nodes)

    try:
        yield _start
    finally:
        for n in nodes:
            await n.node.stop(1.0)
        from cluster.etcd import connect

        client = await connect(etcd_server.endpoint)
        await client.delete_prefix(etcd_prefix.encode())
        await client.close()
