"""cluster/etcd/tenant_usage.py's watch of the SBC hosts' calls keys, against the session's
real etcd: every change comes with the key's new value and revision, in order (a lease that
goes deletes the key: None); the cancel stops it; a closed client ends it (``on_end``)."""

from __future__ import annotations

import asyncio

from cluster.etcd.client import Keys, connect
from cluster.etcd.tenant_usage import EtcdTenantUsage

T = "alpha.example"


async def _until(pred, timeout: float = 5.0) -> None:
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


async def test_watch_calls_delivers_each_change_in_order_with_its_revision(etcd_server, etcd_prefix) -> None:
    watcher_client, writer_client = await connect(etcd_server.endpoint), await connect(etcd_server.endpoint)
    keys = Keys(etcd_prefix)
    me = EtcdTenantUsage(watcher_client, keys, "sbc-a", deadline=1.0)
    other = EtcdTenantUsage(writer_client, keys, "sbc-b", ttl=30, deadline=1.0)
    seen: list[tuple[str, dict | None, int]] = []
    ended: list[BaseException | None] = []
    try:
        rev, calls = await me.read_calls()
        assert calls == {}
        # a change before the watch starts, after the read: delivered from start_revision on
        done, rev1, _ = await other.publish_calls({T: [1, 1, 0]}, rev)
        assert done
        cancel = await me.watch_calls(rev + 1, lambda h, v, r: seen.append((h, v, r)), ended.append)
        done, rev2, _ = await other.publish_calls({T: [1, 0, 0]}, rev1)
        assert done
        await writer_client.put(me.calls_key("sbc-x"), b"not json")  # a bad value: an empty map, no crash
        await other.close()  # revokes its lease: its key goes
        await _until(lambda: len(seen) == 4)
        assert seen[:2] == [("sbc-b", {T: [1, 1, 0]}, rev1), ("sbc-b", {T: [1, 0, 0]}, rev2)]
        assert seen[2][:2] == ("sbc-x", {}) and seen[3][:2] == ("sbc-b", None)
        assert rev2 < seen[2][2] < seen[3][2]
        await cancel()
        await writer_client.put(me.calls_key("sbc-y"), b"{}")
        await asyncio.sleep(0.2)
        assert len(seen) == 4 and ended == []  # cancelled: nothing more, and no "ended"

        await me.watch_calls(seen[3][2] + 1, lambda h, v, r: seen.append((h, v, r)), ended.append)
        await _until(lambda: len(seen) == 5)  # from the given revision: sbc-y's put
        await watcher_client.close()
        await _until(lambda: len(ended) == 1)
    finally:
        await writer_client.delete_prefix(keys.root)
        await writer_client.close()
        await watcher_client.close()
