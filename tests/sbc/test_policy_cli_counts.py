"""`hivepbx edge-policy show TENANT --etcd` shows what the SBC hosts share in etcd (issue 5):
per host the tenant's live calls, reserved slots and usage of the tenant's day, the totals
against its limits, and which host's key is missing or stale. The keys are written by the
SBC's own writer (cluster/etcd/tenant_usage.py EtcdTenantUsage) to a real etcd; another
tenant's figures on the same hosts never show. Bad input: an unknown tenant and an
unreachable etcd are one error line and exit 2, never a traceback."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import aetcd

from cluster.etcd.client import Keys
from cluster.etcd.tenant_usage import EtcdTenantUsage
from node.cli import main
from tests.peers.net import free_port

ROOT = Path(__file__).resolve().parents[2]
ZONE = "Pacific/Kiritimati"  # UTC+14: its day is not UTC's for 14 hours of every day
T, OTHER = "acme.example", "other.example"


async def hp(ep: str, prefix: str, *argv: str) -> tuple[int, str, str]:
    """`hivepbx ...` in-process (its own event loop, in a thread)."""
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, [*argv, "--etcd", ep, "--etcd-prefix", prefix], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def _ok(ep: str, prefix: str, *argv: str) -> str:
    code, out, err = await hp(ep, prefix, *argv)
    assert code == 0, (argv, out, err)
    return out


async def test_show_prints_each_hosts_counts_and_the_totals_against_the_limits(etcd_server) -> None:
    ep, prefix = etcd_server.endpoint, f"/test-polcli-{uuid.uuid4().hex}/"
    await _ok(ep, prefix, "tenant", "add", "acme", T, "--timezone", ZONE)
    await _ok(ep, prefix, "tenant", "add", "other", OTHER)
    await _ok(ep, prefix, "edge-policy", "set", "acme", "--max-calls", "10", "--max-daily-usage", "7200")

    host, port = ep.rsplit(":", 1)
    client = aetcd.Client(host=host, port=int(port))
    keys = Keys(prefix)
    today = datetime.now(ZoneInfo(ZONE)).date()
    day, yesterday = today.isoformat(), (today - timedelta(days=1)).isoformat()
    a = EtcdTenantUsage(client, keys, "sbc-a", ttl=30)
    b = EtcdTenantUsage(client, keys, "sbc-b", ttl=30)
    c = EtcdTenantUsage(client, keys, "sbc-c", ttl=30)  # stopped: only its usage key is left
    d = EtcdTenantUsage(client, keys, "sbc-d", ttl=8)   # hung: its lease runs down
    e = EtcdTenantUsage(client, keys, "sbc-e", ttl=30)  # has not loaded acme's max_calls
    try:
        rev, _ = await a.read_calls()
        for store, value in ((a, {T: [3, 2, 0], OTHER: [5, 0, 0]}), (b, {T: [1, 1, 1]}),
                             (d, {T: [2, 0, 0]}), (e, {OTHER: [4, 4, 0]})):
            done, rev, _ = await store.publish_calls(value, rev)
            assert done
        await a.publish_usage(day, {T: 100.5, OTHER: 999.0})
        await a.publish_usage(yesterday, {T: 5000.0})  # another day of the tenant: not counted
        await b.publish_usage(day, {T: 20.0})
        await c.publish_usage(day, {T: 30.0})
        d._keepalive.cancel()
        hung_at = time.monotonic()

        # --json while sbc-d's lease is still fresh: every figure, the totals, the limits
        got = json.loads(await _ok(ep, prefix, "edge-policy", "show", "acme", "--json"))
        sbc = got["sbc"]
        assert (sbc["date"], sbc["timezone"]) == (day, ZONE)
        rows = {r["host"]: r for r in sbc["hosts"]}
        assert set(rows) == {"sbc-a", "sbc-b", "sbc-c", "sbc-d", "sbc-e"}
        fields = ("calls", "reserved", "want", "usage", "state")
        assert [rows["sbc-a"][k] for k in fields] == [3, 2, False, 100.5, "live"]
        assert [rows["sbc-b"][k] for k in fields] == [1, 1, True, 20.0, "live"]
        assert rows["sbc-c"]["calls"] is None and rows["sbc-c"]["usage"] == 30.0 and rows["sbc-c"]["state"] == "missing"
        assert rows["sbc-e"]["calls"] is None and rows["sbc-e"]["usage"] == 0.0 and rows["sbc-e"]["state"] == "missing"
        assert [rows["sbc-d"][k] for k in ("calls", "reserved", "state")] == [2, 0, "live"]  # not stale yet
        assert sbc["total"] == {"calls": 6, "reserved": 3, "usage": 150.5}
        assert sbc["limits"] == {"max_calls": 10, "max_daily_usage": 7200.0}

        # the table once sbc-d has gone over half its TTL without a keep-alive (before it expires)
        await asyncio.sleep(max(0.0, 4.4 - (time.monotonic() - hung_at)))
        out = await _ok(ep, prefix, "edge-policy", "show", "acme")
    finally:
        for s in (a, b, c, d, e):
            await s.close()
        await client.close()
    assert f"day {day} in {ZONE}" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  sbc-") or ln.startswith("  total")}
    assert lines["sbc-a"].split()[:6] == ["sbc-a", "3", "2", "no", "100.5", "live"]
    assert lines["sbc-b"].split()[:6] == ["sbc-b", "1", "1", "yes", "20.0", "live"]
    assert lines["sbc-c"].split()[:6] == ["sbc-c", "-", "-", "-", "30.0", "missing:"]
    assert "no calls key: host stopped or down" in lines["sbc-c"]
    assert lines["sbc-d"].split()[:6] == ["sbc-d", "2", "0", "no", "0.0", "stale:"]
    assert "lease not refreshed" in lines["sbc-d"]
    assert "tenant not in its calls key" in lines["sbc-e"]
    assert lines["total"].split() == ["total", "6", "3", "150.5"]
    assert "calls 6 of max 10 (3 reserved, 1 free); usage 150.5 s of max 7200 s today (2%)" in out
    assert "999" not in out and "5000" not in out  # another tenant's, another day's


async def test_show_without_sbc_hosts_and_of_a_tenant_without_policy(etcd_server) -> None:
    ep, prefix = etcd_server.endpoint, f"/test-polcli-{uuid.uuid4().hex}/"
    await _ok(ep, prefix, "tenant", "add", "acme", T)
    out = await _ok(ep, prefix, "edge-policy", "show", "acme")
    assert "no edge policy" in out and "no SBC host publishes counts" in out
    assert "calls 0 (no max_calls); usage 0.0 s today (no max_daily_usage)" in out
    got = json.loads(await _ok(ep, prefix, "edge-policy", "show", "acme", "--json"))
    assert got["sbc"]["hosts"] == [] and got["sbc"]["timezone"] == "UTC"


async def test_unknown_tenant_is_an_error_not_a_traceback(etcd_server) -> None:
    ep, prefix = etcd_server.endpoint, f"/test-polcli-{uuid.uuid4().hex}/"
    await _ok(ep, prefix, "tenant", "add", "acme", T)
    code, out, err = await hp(ep, prefix, "edge-policy", "show", "nosuch")
    assert code == 2 and out == ""  # EXIT_ERROR
    assert err.startswith("error: no tenant 'nosuch'") and "Traceback" not in err


async def test_unreachable_etcd_is_an_error_not_a_traceback(tmp_path) -> None:
    """As an operator runs it (its own process): nothing listens on the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEPBX_")} | {"PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli", "edge-policy", "show", "acme", "--etcd", f"127.0.0.1:{free_port()}",
        "--data-dir", str(tmp_path), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and out == b""  # EXIT_ERROR
    text = err.decode()
    assert text.startswith("error: ") and "etcd" in text and "Traceback" not in text, text
