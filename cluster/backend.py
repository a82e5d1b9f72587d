"""The ``cluster`` backend (entry point ``hivepbx.backends``): config, registrations,
membership and leader election in etcd.

CDRs go to Cassandra when contact points are configured (always behind the node's CDR
spool); without them the runtime keeps them in the node's SQLite. Kafka settings are carried
for the event bus.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cluster.etcd import EtcdStores, open_etcd
from cluster.etcd.membership import EtcdMembership


@dataclass(slots=True)
class ClusterBackend:
    """node.ports.Backend on etcd; ``cdrs`` None = the runtime supplies a local CdrStore."""

    stores: EtcdStores
    membership: EtcdMembership
    cdrs: object = None
    #: the Kafka event bus (ACD queues, busy lamps) when bootstrap servers are configured
    bus: object = None

    @property
    def config(self):
        return self.stores.config

    @property
    def locations(self):
        return self.stores.locations

    @property
    def election(self) -> EtcdMembership:
        return self.membership

    async def aclose(self) -> None:
        try:
            await self.membership.close()
        finally:
            try:
                await self.stores.aclose()
            finally:
                try:
                    if self.cdrs is not None:
                        await self.cdrs.close()
                finally:
                    if self.bus is not None:
                        await self.bus.close()


def _endpoints(cfg) -> tuple[str, ...]:
    eps = tuple(getattr(cfg, "etcd_endpoints", ()) or ())
    if not eps and os.environ.get("HIVEPBX_ETCD"):
        eps = tuple(os.environ["HIVEPBX_ETCD"].split(","))
    if not eps:
        raise ValueError("the cluster backend needs etcd endpoints (--etcd HOST:PORT or HIVEPBX_ETCD)")
    return eps


async def open_cluster(cfg) -> ClusterBackend:
    """Connect to etcd and load the views; the node joins the membership when it is serving."""
    stores = await open_etcd(_endpoints(cfg), getattr(cfg, "etcd_prefix", "/hivepbx/"))
    try:
        membership = EtcdMembership(
            stores.client, stores.keys, getattr(cfg, "node_id", "local"), ttl=getattr(cfg, "membership_ttl", 3)
        )
        await membership.start()
    except BaseException:
        await stores.aclose()
        raise
    try:
        from cluster.cassandra.cdr_store import open_cdr_store

        cdrs = await open_cdr_store(cfg)
    except BaseException:
        await membership.close()
        await stores.aclose()
        raise
    from cluster.kafka.bus import open_bus

    return ClusterBackend(stores, membership, cdrs, open_bus(cfg))
