"""A tenant's limits hold across two SBC hosts sharing one etcd (issue 5): each host is a
real `hivepbx sbc` process with its own state dir (host b runs 2 workers), SIPp callers
reach both, SIPp answers as the node (a member in etcd). max_calls = 2 admits exactly 2
calls across both hosts; a host killed -9 gives its slots back after its lease TTL (2 s
here); usage counted through host a blocks host b, and stays counted once a is dead."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import aetcd
import pytest

from tests.peers.sbc_process import SbcProcess
from tests.peers.sipp import Sipp
from tests.sbc._tenant_calls import DOMAIN, EXTERNAL, external_caller, node_uas

pytestmark = pytest.mark.interop

TTL = 2


def SbcHost(tmp_path: Path, name: str, etcd: str, prefix: str, policy: str, workers: int = 1) -> SbcProcess:
    """One SBC host on the shared etcd, its own state dir and ``host_id``."""
    return SbcProcess(tmp_path, name, tmp_path / (name + "-state"), f"""
[etcd]
endpoints = ["{etcd}"]
prefix = "{prefix}"
host_id = "{name}"
limits_ttl = {TTL}

[protection.tenants."{DOMAIN}"]
{policy}
""", workers=workers)


class Cluster:
    """The etcd side the test checks and the node's membership entry."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.rsplit(":", 1)
        self.client = aetcd.Client(host=host, port=int(port))
        self.prefix = f"/test-cl-{uuid.uuid4().hex}/"

    async def add_node(self, port: int) -> None:
        await self.client.put(f"{self.prefix}members/uas".encode(),
                              json.dumps({"node_id": "uas", "sip": [f"udp:127.0.0.1:{port}"]}).encode())

    async def calls(self) -> dict[str, dict]:
        root = f"{self.prefix}sbc/calls/".encode()
        return {kv.key[len(root):].decode(): json.loads(kv.value) for kv in await self.client.get_prefix(root)}

    async def usage(self) -> dict[str, dict]:
        root = f"{self.prefix}sbc/usage/".encode()
        return {kv.key[len(root):].decode(): json.loads(kv.value) for kv in await self.client.get_prefix(root)}


async def _until(pred, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if await pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _refused(target: str, workdir: Path, code: int) -> Sipp:
    return Sipp("uac_call_expect_error.xml", target, workdir=workdir, service=EXTERNAL, user="1001",
                domain=DOMAIN, variables={"expected": code}, timeout=20)


@pytest.fixture
async def cluster(etcd_server):
    c = Cluster(etcd_server.endpoint)
    await c.client.connect()
    try:
        yield c
    finally:
        await c.client.delete_prefix(c.prefix.encode())
        await c.client.close()


async def test_max_calls_across_two_hosts_and_a_dead_hosts_calls_expire(tmp_path, etcd_server, cluster) -> None:
    uas, node_port = await node_uas(tmp_path, 40)
    await cluster.add_node(node_port)
    ep = etcd_server.endpoint
    try:
        async with SbcHost(tmp_path, "sbc-a", ep, cluster.prefix, "max_calls = 2") as a, \
                SbcHost(tmp_path, "sbc-b", ep, cluster.prefix, "max_calls = 2", workers=2) as b:
            # each host reserves its fair share (1 of 2) once it sees the other
            await _until(lambda: _settled(cluster), 15, "both hosts' reservations in etcd")
            # three callers at once on each host, every admitted call held 6 s: 2 in total
            callers = [external_caller(h.target, tmp_path / f"c-{h.name}-{i}", 6000) for h in (a, b) for i in range(3)]
            results = await asyncio.gather(*(c.run() for c in callers))
            answered = [r for r in results if r.successful]
            assert len(answered) == 2, [r.describe() for r in results][:2]
            assert all(r.received(503) for r in results if not r.successful)
            assert sum(r.successful for r in results[:3]) == 1 == sum(r.successful for r in results[3:])  # 1 each

            # host a holds a long call; b takes one too: the tenant is at its limit
            long_a = external_caller(a.target, tmp_path / "long-a", 60000)
            await long_a.start()
            await _until(lambda: _calls_of(cluster, "sbc-a", 1), 10, "host a's call in etcd")
            long_b = external_caller(b.target, tmp_path / "long-b", 60000)
            await long_b.start()
            await _until(lambda: _calls_of(cluster, "sbc-b", 1), 10, "host b's call in etcd")
            (await _refused(b.target, tmp_path / "full-b", 503).run()).assert_ok()

            a.kill()  # its calls key stays until the lease runs out
            killed = time.monotonic()
            (await _refused(b.target, tmp_path / "dead-a-counted", 503).run()).assert_ok()
            await _until(lambda: _gone(cluster, "sbc-a"), TTL + 8, "host a's lease to expire")
            # the lease outlived the kill (not revoked): its last keep-alive came up to TTL/3
            # before the kill, and etcd checks expiries about every 0.5 s
            assert time.monotonic() - killed >= TTL * 2 / 3 - 0.25
            # its slot is free again: host b reserves it (the first try may be refused meanwhile)
            ok = False
            for i in range(10):
                r = await external_caller(b.target, tmp_path / f"after-{i}", 200).run()
                if r.successful:
                    ok = True
                    break
                await asyncio.sleep(0.3)
            assert ok, "host b never got the dead host's slot back"
            await long_a.stop(grace=0.5)
            await long_b.stop(grace=0.5)
    finally:
        await uas.stop()


async def _settled(cluster: Cluster) -> bool:
    calls = await cluster.calls()
    return all(calls.get(h, {}).get(DOMAIN) == [0, 1, 0] for h in ("sbc-a", "sbc-b"))


async def _calls_of(cluster: Cluster, host: str, n: int) -> bool:
    v = (await cluster.calls()).get(host, {}).get(DOMAIN)
    return bool(v) and v[0] == n


async def _gone(cluster: Cluster, host: str) -> bool:
    return host not in await cluster.calls()


async def test_daily_usage_through_one_host_blocks_the_other_and_survives_its_death(
        tmp_path, etcd_server, cluster) -> None:
    uas, node_port = await node_uas(tmp_path, 10, "uas_answer_hangup.xml", variables={"hangup_ms": 2500})
    await cluster.add_node(node_port)
    ep = etcd_server.endpoint
    policy = "max_daily_usage = 2  # seconds of answered external outgoing calls"
    try:
        async with SbcHost(tmp_path, "sbc-a", ep, cluster.prefix, policy) as a, \
                SbcHost(tmp_path, "sbc-b", ep, cluster.prefix, policy) as b:
            (await Sipp("uac_call_remote_bye.xml", a.target, workdir=tmp_path / "long", service=EXTERNAL,
                        user="1001", domain=DOMAIN, calls=1, timeout=30).run()).assert_ok()  # 2.5 s through a

            async def a_usage_published() -> bool:
                return any(d.endswith("/sbc-a") and v.get(DOMAIN, 0) >= 2 for d, v in (await cluster.usage()).items())

            await _until(a_usage_published, 10, "host a's usage in etcd")
            await asyncio.sleep(2.5)  # host b reads it (every 1 s; slack for a loaded box)
            (await _refused(b.target, tmp_path / "over-b", 403).run()).assert_ok()
            a.kill()
            await _until(lambda: _gone(cluster, "sbc-a"), TTL + 8, "host a's lease to expire")
            assert await a_usage_published(), "a dead host's usage must stay counted"
            await asyncio.sleep(0.6)
            (await _refused(b.target, tmp_path / "still-over-b", 403).run()).assert_ok()
    finally:
        await uas.stop()


async def test_the_etcd_side_compare_and_swap_lease_and_old_days(etcd_server, cluster) -> None:
    """cluster/etcd/tenant_usage.py against the real etcd: a publish from a stale read is
    refused (so two hosts never reserve the same free slots), the calls key goes with the
    lease, usage keys do not, and old days go in one range delete."""
    from cluster.etcd.client import Keys
    from cluster.etcd.tenant_usage import EtcdTenantUsage

    keys = Keys(cluster.prefix)
    a = EtcdTenantUsage(cluster.client, keys, "sbc-a", ttl=1)
    b = EtcdTenantUsage(cluster.client, keys, "sbc-b", ttl=1)
    rev, seen = await a.read_calls()
    assert seen == {}
    done, rev_b, got = await b.publish_calls({DOMAIN: [1, 1, 0]}, rev)
    assert done and got == {"sbc-b": {DOMAIN: [1, 1, 0]}}
    done, rev2, got = await a.publish_calls({DOMAIN: [0, 2, 0]}, rev)  # a had not seen b's
    assert not done and got == {"sbc-b": {DOMAIN: [1, 1, 0]}} and rev2 >= rev_b
    done, _rev, got = await a.publish_calls({DOMAIN: [0, 1, 0]}, rev2)
    assert done and set(got) == {"sbc-a", "sbc-b"}

    await b.publish_usage("2026-01-01", {DOMAIN: 30.0})
    await b.publish_usage("2026-01-05", {DOMAIN: 12.5})
    b._keepalive.cancel()  # b "dies": no more keep-alives
    await _until(lambda: _gone(cluster, "sbc-b"), 10, "b's lease to expire")
    usage = await a.read_usage()
    assert usage == {"2026-01-01": {"sbc-b": {DOMAIN: 30.0}}, "2026-01-05": {"sbc-b": {DOMAIN: 12.5}}}
    assert await a.forget_before("2026-01-03") == 1
    assert await a.read_usage() == {"2026-01-05": {"sbc-b": {DOMAIN: 12.5}}}
    await a.close()
    assert await cluster.calls() == {}  # a's revoked lease took its calls key at once
