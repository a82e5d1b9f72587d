"""The cluster backend as the runtime opens it: etcd stores and membership, and CDRs in
Cassandra only when contact points are configured."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from cluster.backend import open_cluster
from node.runtime.config import NodeConfig


def _cfg(tmp_path, etcd_server, prefix: str, **kw) -> NodeConfig:
    return replace(
        NodeConfig(data_dir=tmp_path), backend="cluster", etcd_endpoints=(etcd_server.endpoint,),
        etcd_prefix=prefix, node_id="backend-test", **kw,
    )


async def test_without_cassandra_the_runtime_supplies_cdrs(tmp_path, etcd_server, etcd_prefix):
    backend = await open_cluster(_cfg(tmp_path, etcd_server, etcd_prefix))
    try:
        assert backend.cdrs is None  # the runtime keeps them in the node's SQLite, spooled
        t = await backend.config.create_tenant("cb", "cb.example")
        assert (await backend.config.get_tenant(t.id)).domain == "cb.example"
    finally:
        await backend.aclose()


async def test_an_unreachable_cassandra_fails_the_start_and_releases_etcd(tmp_path, etcd_server, etcd_prefix):
    before = {t for t in asyncio.all_tasks() if not t.done()}
    cfg = _cfg(tmp_path, etcd_server, etcd_prefix, cassandra_contact_points=("127.0.0.1:1",))
    with pytest.raises(Exception) as err:
        await asyncio.wait_for(open_cluster(cfg), 60)
    assert "127.0.0.1" in str(err.value) or "NoHostAvailable" in type(err.value).__name__
    # nothing left running: the etcd watches of the stores and the membership were closed
    for _ in range(50):
        leaked = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
        if not leaked:
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail(f"a failed start left tasks running: {leaked}")
