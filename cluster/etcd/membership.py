"""Cluster membership and leader election on one etcd lease per node.

A node puts ``members/<node id>`` on a short lease it keeps alive; when the node dies the
lease runs out and the key goes within ``ttl`` seconds, which every node sees through its
watch. The leader of a singleton job (publishing "node left", sweeping CDR spools) is the node
whose key ``leader/<job>`` sits on its lease: created only if absent (a transaction), so two
nodes never lead at once, and gone with the lease, so a dead leader is replaced within ``ttl``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import aetcd

from cluster.etcd import metrics as M
from cluster.etcd.client import Keys
from cluster.etcd.watched import WatchedPrefix, wait_deleted
from node.ports import Leadership

log = logging.getLogger("hivepbx.cluster.etcd")

#: seconds a dead node stays listed at most
DEFAULT_TTL = 3


class EtcdMembership:
    """node.ports.Membership and node.ports.LeaderElection for one node."""

    def __init__(self, client: aetcd.Client, keys: Keys, node_id: str, *, ttl: int = DEFAULT_TTL) -> None:
        if not node_id or "/" in node_id:
            raise ValueError(f"invalid node id {node_id!r}: non-empty, no '/'")
        self.node_id = node_id
        self.ttl = max(2, int(ttl))
        self._c = client
        self._k = keys
        self._t = client.transactions
        self._lease_id: int | None = None
        self._info: dict = {}
        self._members: dict[str, dict] = {}
        self._callbacks: list[Callable[[str, str, dict | None], None]] = []
        self._leaderships: dict[str, Leadership] = {}
        self._keepalive: asyncio.Task | None = None
        self._watched = WatchedPrefix(client, keys.members_root, self._reset, self._apply, name="members")
        self._started = False
        M.CLUSTER_MEMBERS.set_function(lambda: len(self._members))

    # --- the members view

    def _node(self, key: bytes) -> str:
        return key[len(self._k.members_root):].decode(errors="replace")

    def _reset(self, kvs: list[tuple[bytes, bytes]]) -> None:
        old = self._members
        self._members = {}
        for key, value in kvs:
            self._members[self._node(key)] = _info(value)
        for node in old.keys() - self._members.keys():
            self._notify("left", node, None)
        for node in self._members.keys() - old.keys():
            self._notify("joined", node, self._members[node])

    def _apply(self, kind: str, key: bytes, value: bytes) -> None:
        node = self._node(key)
        if kind == "PUT":
            fresh = node not in self._members
            self._members[node] = _info(value)
            if fresh:
                self._notify("joined", node, self._members[node])
        elif self._members.pop(node, None) is not None:
            self._notify("left", node, None)

    def _notify(self, event: str, node: str, info: dict | None) -> None:
        for cb in list(self._callbacks):
            try:
                cb(event, node, info)
            except Exception:
                log.exception("membership callback failed")

    # --- node.ports.Membership

    async def start(self) -> None:
        if not self._started:
            await self._watched.start()
            self._started = True

    async def join(self, info: dict | None = None) -> None:
        """Appear in every node's ``members()`` until ``leave`` or death."""
        await self.start()
        self._info = {"node_id": self.node_id, "joined_at": time.time(), **(info or {})}
        await self._register()
        if self._keepalive is None:
            self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(), name="etcd-keepalive")

    async def _register(self) -> None:
        """Put our member key on a fresh lease, only where no live node holds this id: two
        nodes started with one id would share leaderships and registrations' node_id. A
        previous run of this node that died holds it at most ``ttl`` seconds more: wait that."""
        key, t = self._k.member(self.node_id), self._t
        deadline = time.monotonic() + self.ttl + 1
        while True:
            lease = await self._c.lease(self.ttl)
            try:
                ok, responses = await self._c.transaction(
                    compare=[t.version(key) == 0],
                    success=[t.put(key, json.dumps(self._info).encode(), lease=lease.id)],
                    failure=[],
                )
            except BaseException:
                with contextlib.suppress(Exception):
                    await self._c.revoke_lease(lease.id)
                raise
            if ok:
                break
            with contextlib.suppress(Exception):
                await self._c.revoke_lease(lease.id)
            if time.monotonic() > deadline:
                raise MemberIdInUse(f"node id {self.node_id!r} is in use by a live node: give each node its own")
            cur = await self._c.get(key)
            if cur is not None:
                await wait_deleted(self._c, key, cur.mod_revision, max(0.1, deadline - time.monotonic()))
        self._lease_id = lease.id
        await self._watched.caught_up(responses[0].response_put.header.revision)

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                reply = await asyncio.wait_for(self._c.refresh_lease(self._lease_id), self.ttl)
                if reply is not None and reply.TTL > 0:
                    continue
                log.warning("etcd lease of node %s ran out: rejoining", self.node_id)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("etcd keep-alive of node %s failed: %s", self.node_id, e)
                continue  # the lease may still be alive: try again; a dead one is seen next round
            self._lose_all()
            try:
                await self._register()
            except Exception as e:
                log.warning("etcd rejoin of node %s failed: %s", self.node_id, e)

    def _lose_all(self) -> None:
        for lead in self._leaderships.values():
            lead.lost.set()

    async def leave(self) -> None:
        """Disappear now (the lease is revoked: members and leader keys go with it)."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        self._lose_all()
        if self._lease_id is not None:
            with contextlib.suppress(Exception):
                await self._c.revoke_lease(self._lease_id)
            self._lease_id = None

    async def close(self) -> None:
        await self.leave()
        await self._watched.close()

    def members(self) -> dict[str, dict]:
        """node id -> what it joined with, for every live node (this one included once joined)."""
        return {k: dict(v) for k, v in sorted(self._members.items())}

    def watch(self, callback: Callable[[str, str, dict | None], None]) -> Callable[[], None]:
        """``callback(event, node_id, info)`` with event 'joined' or 'left'; returns unsubscribe."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    # --- node.ports.LeaderElection

    def is_leader(self, job: str) -> bool:
        lead = self._leaderships.get(job)
        return lead is not None and not lead.lost.is_set()

    @contextlib.asynccontextmanager
    async def campaign(self, job: str) -> AsyncIterator[Leadership]:
        """Wait until this node leads ``job``; ``lost`` is set if the lease runs out meanwhile.
        Leaving the block resigns."""
        if self._lease_id is None:
            raise RuntimeError("join the cluster before campaigning")
        key = self._k.leader(job)
        value = self.node_id.encode()
        t = self._t
        while True:
            lease_id = self._lease_id
            ok, _ = await self._c.transaction(
                compare=[t.version(key) == 0], success=[t.put(key, value, lease=lease_id)], failure=[],
            )
            if ok:
                break
            await self._wait_deleted(key)
        lead = Leadership(job)
        self._leaderships[job] = lead
        try:
            yield lead
        finally:
            self._leaderships.pop(job, None)
            with contextlib.suppress(Exception):
                await self._c.transaction(compare=[t.value(key) == value], success=[t.delete(key)], failure=[])

    async def _wait_deleted(self, key: bytes) -> None:
        """Until ``key`` is deleted, or ``ttl`` seconds (then the caller simply tries again)."""
        cur = await self._c.get(key)
        if cur is not None:
            await wait_deleted(self._c, key, cur.mod_revision, self.ttl)


class MemberIdInUse(RuntimeError):
    """Another live node joined with this node id."""


def _info(value: bytes) -> dict:
    try:
        got = json.loads(value)
        return got if isinstance(got, dict) else {}
    except ValueError:
        return {}
