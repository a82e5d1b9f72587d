"""etcd backend: configuration, registrations, membership and leader election shared by every
node of a cluster (aetcd client)."""

from __future__ import annotations

from dataclasses import dataclass

import aetcd

from cluster.etcd.client import DEFAULT_PREFIX, EtcdUnavailable, Keys, connect, parse_endpoints
from cluster.etcd.config_store import EtcdConfigStore
from cluster.etcd.location_store import EtcdLocationStore


@dataclass(slots=True)
class EtcdStores:
    """The config and location stores on one etcd connection."""

    client: aetcd.Client
    keys: Keys
    config: EtcdConfigStore
    locations: EtcdLocationStore

    async def aclose(self) -> None:
        await self.locations.close()
        await self.config.close()
        await self.client.close()


async def open_etcd(endpoints, prefix: str = DEFAULT_PREFIX, **location_opts) -> EtcdStores:
    """Connect and load both views; raises EtcdUnavailable / ValueError (bad endpoint).
    ``location_opts`` go to EtcdLocationStore (lease_bucket, lease_grace)."""
    client = await connect(endpoints)
    keys = Keys(prefix)
    config = EtcdConfigStore(client, keys)
    locations = EtcdLocationStore(client, keys, **location_opts)
    config.locations = locations
    try:
        await config.start()
        await locations.start()
    except BaseException:
        await config.close()
        await locations.close()
        await client.close()
        raise
    return EtcdStores(client, keys, config, locations)


__all__ = [
    "DEFAULT_PREFIX", "EtcdConfigStore", "EtcdLocationStore", "EtcdStores", "EtcdUnavailable", "Keys",
    "connect", "open_etcd", "parse_endpoints",
]
