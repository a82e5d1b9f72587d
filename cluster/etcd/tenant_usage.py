"""The SBC hosts' per-tenant counts in etcd, so a tenant's edge limits hold across hosts.

Layout under the cluster's prefix::

    sbc/calls/<host>               {"tenant domain": [calls, reserved, want], ...} on the host's lease
    sbc/usage/<YYYY-MM-DD>/<host>  {"tenant domain": usage that day, ...}, no lease

Why this shape:

* **Live calls ride the host's lease**: a host killed -9 stops refreshing it and its calls
  drop out of every other host's sum within the lease TTL. The key also says the host is
  alive (it is written even with no calls), so the hosts can split what is left of a limit.
* **Usage is money, so it is not on a lease**: a dead host's usage for the day stays
  counted. The date is the tenant's own (its time zone), so one host writes at most two or
  three date keys at once; a day's key is rewritten whole by the one host that owns it
  (no read-modify-write across hosts, no conflicts). Old dates go in one range delete.
* **One key per host, not per tenant**: a publish is one transaction, a compare-and-swap
  over the whole calls prefix (no host's key changed since the publisher's last read), so
  two hosts never reserve the same free slots; every host's key is read back in it.

* **Watched, so slots move in milliseconds**: a host that is short publishes ``want``; the
  others see it (and the wanting host sees their release) through a watch on the calls
  prefix, each event the key's new value and revision, instead of at their next poll.

Every etcd call here has a ``deadline`` (default 1 s, the SBC's ``[etcd] limits_timeout``):
a stalled etcd (overloaded, paused, a network that drops without a reset) then fails like a
down one, within the deadline, so the caller falls back to the last known counts as fast as
it does when etcd is down, instead of waiting the client's timeout for every call.

This module only moves dicts; what the counts mean is sbc/protection/cluster_counts.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aetcd

from cluster.etcd.client import Keys, prefix_end, within

log = logging.getLogger("hivepbx.cluster")


def _json(value: bytes) -> dict:
    try:
        got = json.loads(value)
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def _decode(value: bytes) -> dict[str, float]:
    try:
        got = json.loads(value)
    except ValueError:
        return {}
    if not isinstance(got, dict):
        return {}
    return {str(k): float(v) for k, v in got.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _roots(keys: Keys) -> tuple[bytes, bytes]:
    root = keys.root + b"sbc/"
    return root + b"calls/", root + b"usage/"


class EtcdTenantUsage:
    """One SBC host's side of the shared counts: its calls key on its own lease, its usage
    keys, and reads of everybody's. Each call raises EtcdTimeout past ``deadline`` seconds."""

    def __init__(self, client: aetcd.Client, keys: Keys, host_id: str, *, ttl: int = 10,
                 deadline: float = 1.0) -> None:
        if not host_id or "/" in host_id:
            raise ValueError(f"SBC host id {host_id!r}: give a non-empty name without '/'")
        if not deadline > 0:
            raise ValueError(f"etcd deadline {deadline!r}: give a number of seconds > 0")
        self._c = client
        self.host_id = host_id
        self.ttl = max(1, int(ttl))
        self.deadline = float(deadline)
        self.calls_root, self.usage_root = _roots(keys)
        self._lease_id: int | None = None
        self._keepalive: asyncio.Task | None = None

    def calls_key(self, host: str) -> bytes:
        return self.calls_root + host.encode()

    def usage_key(self, date: str, host: str) -> bytes:
        return self.usage_root + date.encode() + b"/" + host.encode()

    # ------------------------------------------------------------------ lease
    async def _lease(self) -> int:
        if self._lease_id is None:
            lease = await within(self._c.lease(self.ttl), self.deadline)
            self._lease_id = lease.id
            if self._keepalive is None or self._keepalive.done():
                self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive(), name="sbc-usage-lease")
        return self._lease_id

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            lease_id = self._lease_id
            if lease_id is None:
                continue
            try:
                reply = await within(self._c.refresh_lease(lease_id), min(self.deadline, self.ttl))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("etcd keep-alive of SBC host %s failed: %s", self.host_id, e)
                continue
            if reply is None or reply.TTL <= 0:
                log.warning("etcd lease of SBC host %s ran out: its calls key goes on a new one", self.host_id)
                if self._lease_id == lease_id:
                    self._lease_id = None

    # ------------------------------------------------------------------ writes
    async def publish_calls(self, counts: dict, expect: int) -> tuple[bool, int, dict[str, dict]]:
        """Put this host's calls (on its lease) if no host's calls key changed after revision
        ``expect`` (the caller's last read). (done, revision, {host: {tenant: value}}): every
        host's keys as of that revision, to retry from when not done."""
        lease_id = await self._lease()
        key = self.calls_key(self.host_id)
        value = json.dumps(counts, separators=(",", ":"), sort_keys=True).encode()
        t = self._c.transactions
        end = prefix_end(self.calls_root)
        try:
            ok, responses = await within(self._c.transaction(
                compare=[t.mod(self.calls_root, range_end=end) < expect + 1],
                success=[t.put(key, value, lease=lease_id), t.get(self.calls_root, range_end=end)],
                failure=[],
            ), self.deadline)
        except Exception as e:
            if "lease not found" in str(e).lower():
                self._lease_id = None  # expired while etcd was away: the next publish takes a new one
            raise
        if not ok:
            revision, calls = await self.read_calls()
            return False, revision, calls
        n = len(self.calls_root)
        return True, responses[0].response_put.header.revision, {kv.key[n:].decode(): _json(v) for v, kv in responses[1]}

    async def read_calls(self) -> tuple[int, dict[str, dict]]:
        """(revision, {host: {tenant: value}}) of every host's calls key."""
        got = await within(self._c.get_prefix(self.calls_root), self.deadline)
        n = len(self.calls_root)
        return got.header.revision, {kv.key[n:].decode(): _json(kv.value) for kv in got}

    async def publish_usage(self, date: str, usage: dict[str, float]) -> None:
        """This host's usage per tenant for ``date`` (the whole day's map: it only grows)."""
        value = json.dumps(usage, separators=(",", ":"), sort_keys=True).encode()
        await within(self._c.put(self.usage_key(date, self.host_id), value), self.deadline)

    async def forget_before(self, date: str) -> int:
        """Delete every host's usage keys of days before ``date`` (ISO, sorts as text)."""
        end = self.usage_root + date.encode()
        reply = await within(self._c.delete_range(self.usage_root, end), self.deadline)
        return int(getattr(reply, "deleted", 0) or 0)

    # ------------------------------------------------------------------ reads
    async def read_usage(self) -> dict[str, dict[str, dict[str, float]]]:
        """{date: {host: {tenant: usage}}} of every host."""
        usage: dict[str, dict[str, dict[str, float]]] = {}
        for kv in await within(self._c.get_prefix(self.usage_root), self.deadline):
            date, _, host = kv.key[len(self.usage_root):].decode().partition("/")
            usage.setdefault(date, {})[host] = _decode(kv.value)
        return usage

    async def watch_calls(self, start_revision: int,
                          on_change: Callable[[str, dict | None, int], None],
                          on_end: Callable[[BaseException | None], None]) -> Callable[[], Awaitable[None]]:
        """Every host's calls key from ``start_revision`` on: ``on_change(host, value or None
        when deleted, revision)`` per change, in revision order; ``on_end(error)`` once the
        watch ended (broken stream, compaction; None: the client closed): the caller watches
        again. Returns the cancel. Raises past ``deadline`` (or RevisionCompactedError)."""
        n = len(self.calls_root)
        ended = False

        async def on_event(event) -> None:
            nonlocal ended
            if ended:
                return
            if event is None or isinstance(event, BaseException):
                ended = True
                on_end(event)
                return
            kv = event.kv
            on_change(kv.key[n:].decode(errors="replace"), _json(kv.value) if event.kind == "PUT" else None,
                      kv.mod_revision)

        if self._c._watcher is None:
            await within(self._c.connect(), self.deadline)
        watcher = self._c._watcher
        # (aetcd's callback API, as cluster/etcd/watched.py: its async iterator does not always stop when cancelled)
        callback = await within(watcher.add_callback(self.calls_root, on_event, range_end=prefix_end(self.calls_root),
                                                     start_revision=start_revision), self.deadline)

        async def cancel() -> None:
            nonlocal ended
            ended = True
            with contextlib.suppress(Exception):
                await within(watcher.cancel(callback.watch_id), self.deadline)

        return cancel

    async def close(self) -> None:
        """Stop refreshing and revoke the lease: this host's live calls leave the sums now."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        if self._lease_id is not None:
            with contextlib.suppress(Exception):
                await within(self._c.revoke_lease(self._lease_id), self.deadline)
            self._lease_id = None


# ---------------------------------------------------------------------- operator's view


@dataclass(slots=True)
class HostKeys:
    """One SBC host's keys as an operator reads them (``hivepbx edge-policy show --etcd``)."""

    #: its calls key ({tenant: [calls, reserved, want]}); None: no key (stopped, or its lease ran out)
    calls: dict | None = None
    #: seconds left on the calls key's lease and the lease's TTL: a live host keeps the first
    #: near the second (it refreshes every TTL/3), a dead or cut-off one lets it run down
    lease_left: int | None = None
    lease_ttl: int | None = None
    #: its usage key of the asked date ({tenant: seconds}); None: none that day
    usage: dict[str, float] | None = None


async def read_hosts(client: aetcd.Client, keys: Keys, date: str) -> dict[str, HostKeys]:
    """Every SBC host's calls key (with its lease's time left) and usage key of ``date``,
    read-only: no lease, no host id, so a CLI can look without joining."""
    calls_root, usage_root = _roots(keys)
    hosts: dict[str, HostKeys] = {}
    for kv in await client.get_prefix(calls_root):
        h = hosts.setdefault(kv.key[len(calls_root):].decode(errors="replace"), HostKeys())
        h.calls = _json(kv.value)
        if kv.lease:
            info = await client.get_lease_info(kv.lease, keys=False)
            if info.TTL < 0:  # expired between the two reads: the key is going
                h.calls = None
                continue
            h.lease_left, h.lease_ttl = int(info.TTL), int(info.grantedTTL)
    day_root = usage_root + date.encode() + b"/"
    for kv in await client.get_prefix(day_root):
        hosts.setdefault(kv.key[len(day_root):].decode(errors="replace"), HostKeys()).usage = _decode(kv.value)
    return {h: v for h, v in hosts.items() if v.calls is not None or v.usage is not None}
