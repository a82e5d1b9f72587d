"""LocationStore on etcd: a phone registered through any node is reachable from every node.

Each binding is a key on a lease that ends shortly after the binding expires, so it vanishes
even when no node is left to expire it. Leases are shared: one per ``LEASE_BUCKET`` seconds
of expiry (a binding goes on the first bucket ending at least ``LEASE_GRACE`` seconds after
it expires). Leases are granted with their full TTL and never kept alive, so 10k phones
cost at most ``max_expires / LEASE_BUCKET`` leases (360 for an hour) and no keep-alive
traffic at all; a refresh moves the key to a later bucket. Lookups read an in-memory index
that a watch keeps fresh, and also check ``expires_at``: a binding is dead at its expiry,
whatever its lease still says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import aetcd

from cluster.etcd import metrics as M
from cluster.etcd.client import Keys
from cluster.etcd.watched import WatchedPrefix
from node.model import Binding

log = logging.getLogger("hivepbx.cluster.etcd")

#: seconds of expiry that share one lease
LEASE_BUCKET = 10
#: a lease outlives the bindings on it by at least this much (clock skew between nodes)
LEASE_GRACE = 5


def _dump(b: Binding) -> bytes:
    return json.dumps({s: getattr(b, s) for s in Binding.__slots__}, separators=(",", ":")).encode()


class EtcdLocationStore:
    """node.ports.LocationStore on etcd; ``node_id`` of the registering node is in each binding."""

    def __init__(
        self, client: aetcd.Client, keys: Keys, *, clock=time.time,
        lease_bucket: int = LEASE_BUCKET, lease_grace: int = LEASE_GRACE,
    ) -> None:
        self._c = client
        self._bucket = max(1, int(lease_bucket))
        self._grace = max(0, int(lease_grace))
        self._k = keys
        self._t = client.transactions
        self._clock = clock
        #: (tenant_id, extension) -> contact -> binding
        self._index: dict[tuple[int, str], dict[str, Binding]] = {}
        #: etcd key -> (binding, stored value), so a DELETE event finds what to unindex
        self._by_key: dict[bytes, tuple[Binding, bytes]] = {}
        #: wall-clock end of a bucket -> its lease (being) granted
        self._leases: dict[int, asyncio.Future] = {}
        self.leases_granted = 0
        self._watched = WatchedPrefix(client, keys.loc_root, self._reset, self._apply, name="locations")
        M.REGISTRATION_LEASES.set_function(lambda: len(self._leases))

    async def start(self) -> None:
        await self._watched.start()

    async def close(self) -> None:
        await self._watched.close()

    async def caught_up(self, revision: int) -> None:
        """Return once the index reflects every change up to ``revision``."""
        await self._watched.caught_up(revision)

    # --- the index, fed by the watch

    def _reset(self, kvs: list[tuple[bytes, bytes]]) -> None:
        self._index = {}
        self._by_key = {}
        for key, value in kvs:
            self._put(key, value)

    def _apply(self, kind: str, key: bytes, value: bytes) -> None:
        if kind == "PUT":
            self._put(key, value)
        else:
            self._drop(key)

    def _put(self, key: bytes, value: bytes) -> None:
        try:
            b = Binding(**json.loads(value))
        except (ValueError, TypeError) as e:
            log.error("ignoring undecodable registration %r: %s", key, e)
            return
        old = self._by_key.get(key)
        if old is not None and old[0].contact != b.contact:
            self._drop(key)
        self._by_key[key] = (b, value)
        self._index.setdefault((b.tenant_id, b.extension), {})[b.contact] = b

    def _drop(self, key: bytes) -> None:
        found = self._by_key.pop(key, None)
        if found is None:
            return
        b = found[0]
        contacts = self._index.get((b.tenant_id, b.extension))
        if contacts is not None:
            contacts.pop(b.contact, None)
            if not contacts:
                del self._index[(b.tenant_id, b.extension)]

    # --- leases

    async def _lease(self, expires_at: float) -> int:
        now = self._clock()
        end = int(math.ceil((max(expires_at, now) + self._grace) / self._bucket) * self._bucket)
        grant = self._leases.get(end)
        if grant is None:
            # a bucket that has ended is gone from etcd too: forget it
            for old in [e for e in self._leases if e <= now]:
                del self._leases[old]
            # concurrent REGISTERs of one bucket share one grant, not one each
            grant = self._leases[end] = asyncio.ensure_future(self._c.lease(max(1, int(math.ceil(end - now)))))
            self.leases_granted += 1
        try:
            lease = await asyncio.shield(grant)
        except Exception:
            if self._leases.get(end) is grant:
                del self._leases[end]
            raise
        return lease.id

    def _forget_lease(self, lease_id: int) -> None:
        for end, grant in list(self._leases.items()):
            if grant.done() and not grant.exception() and grant.result().id == lease_id:
                del self._leases[end]

    # --- node.ports.LocationStore

    async def save(self, binding: Binding) -> None:
        """Insert or refresh the binding keyed by (tenant_id, extension, contact)."""
        b = binding
        key = self._k.loc(b.tenant_id, b.extension, b.contact)
        for attempt in range(2):
            lease_id = await self._lease(b.expires_at)
            try:
                put = await self._c.put(key, _dump(b), lease=lease_id)
                break
            except aetcd.exceptions.ClientError as e:
                if attempt or "lease not found" not in str(e):
                    raise
                # the lease ended early (etcd restored, clocks apart): take a fresh one
                self._forget_lease(lease_id)
        await self._watched.caught_up(put.header.revision)

    async def remove(self, tenant_id: int, extension: str, contact: str) -> None:
        d = await self._c.delete(self._k.loc(tenant_id, extension, contact))
        if d is not None:
            await self._watched.caught_up(d.header.revision)

    async def remove_all(self, tenant_id: int, extension: str) -> None:
        d = await self._c.delete_prefix(self._k.loc_ext(tenant_id, extension))
        if d.deleted:  # a no-op answers with the store's revision, which may hold no event of ours
            await self._watched.caught_up(d.header.revision)

    async def lookup(self, tenant_id: int, extension: str, now: float) -> list[Binding]:
        """Unexpired bindings, highest q first."""
        contacts = self._index.get((tenant_id, extension))
        if not contacts:
            return []
        live = [b for b in contacts.values() if b.expires_at > now]
        if len(live) > 1:
            live.sort(key=lambda b: -b.q)
        return live

    async def list(self, tenant_id: int | None, now: float) -> list[Binding]:
        """Unexpired bindings of one tenant, or of all tenants when ``tenant_id`` is None."""
        out = [
            b
            for (tid, _), contacts in self._index.items()
            if tenant_id is None or tid == tenant_id
            for b in contacts.values()
            if b.expires_at > now
        ]
        out.sort(key=lambda b: (b.tenant_id, len(b.extension), b.extension, -b.q, b.contact))
        return out

    async def expire(self, now: float) -> int:
        """Drop bindings expired at ``now`` before their lease does; returns how many this
        node removed (a key refreshed meanwhile, or removed by another node, is left alone)."""
        expired = [(key, raw) for key, (b, raw) in self._by_key.items() if b.expires_at <= now]
        if not expired:
            return 0
        t = self._t
        n, rev = 0, 0
        for key, raw in expired:
            ok, responses = await self._c.transaction(
                compare=[t.value(key) == raw], success=[t.delete(key)], failure=[],
            )
            if ok:
                n += 1
                rev = max(rev, responses[0].response_delete_range.header.revision)
        if rev:
            await self._watched.caught_up(rev)
        return n

    @property
    def lease_count(self) -> int:
        """Leases this node holds for registrations now (a bound, whatever the phone count)."""
        return len(self._leases)
