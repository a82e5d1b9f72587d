"""kill -9 a node while its CDR store is down: after a restart every CDR of the calls made
before the crash is in the store exactly once (the durable spool replays it)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from node.embedded import open_embedded
from tests.peers.net import free_port
from tests.peers.sipp import Sipp

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = Path(__file__).with_name("cdr_spool_node.py")
DOMAIN = "alpha.example"
CALLS = 20


async def _start_node(tmp_path: Path, data_dir: Path, sip_port: int, rtp_port: int, flag: Path, n: int):
    out = open(tmp_path / f"node-{n}.out", "wb")
    err = open(tmp_path / f"node-{n}.err", "wb")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(LAUNCHER), str(data_dir), str(sip_port), str(rtp_port), str(flag),
        stdout=out, stderr=err, cwd=ROOT, env=env,
    )
    out.close()
    err.close()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while b"hivepbx node running" not in (tmp_path / f"node-{n}.out").read_bytes():
        if proc.returncode is not None or loop.time() > deadline:
            proc.kill()
            await proc.wait()
            pytest.fail("node did not start: " + (tmp_path / f"node-{n}.err").read_text()[-2000:])
        await asyncio.sleep(0.05)
    return proc


def _spooled(data_dir: Path) -> int:
    path = data_dir / "cdr-spool.db"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT count(*) FROM spool").fetchone()[0]


async def _until(pred, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


async def test_kill_9_with_store_down_then_restart_keeps_every_cdr_once(tmp_path):
    data_dir = tmp_path / "node"
    with open_embedded(data_dir) as backend:
        t = await backend.config.create_tenant("alpha", DOMAIN)
        await backend.config.create_extension(t.id, "1001", "pw-1001-secret")
        await backend.config.create_extension(t.id, "1002", "pw-1002-secret")  # never registered: 480
    flag = tmp_path / "store-down"
    flag.touch()
    sip_port, rtp_port = free_port("127.0.0.1"), free_port("127.0.0.1", span=16)
    proc = await _start_node(tmp_path, data_dir, sip_port, rtp_port, flag, 1)
    try:
        calls = await Sipp(
            "uac_call_expect_error.xml", f"127.0.0.1:{sip_port}", workdir=tmp_path / "calls", service="1002",
            user="1001", domain=DOMAIN, auth_user="1001", auth_password="pw-1001-secret",
            calls=CALLS, rate=20, variables={"expected": 480}, timeout=30,
        ).run()
        calls.assert_ok()
        call_ids = {m.header("Call-ID") for m in calls.sent("INVITE")}
        assert len(call_ids) == CALLS
        # durable in the spool (committed = fsync'd), and the store has none of them
        await _until(lambda: _spooled(data_dir) == CALLS, 10, "CDRs did not reach the spool")
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with open_embedded(data_dir) as backend:
        assert await backend.cdrs.list(t.id) == []

    flag.unlink()  # the store is back
    proc = await _start_node(tmp_path, data_dir, sip_port, rtp_port, flag, 2)
    try:
        await _until(lambda: _spooled(data_dir) == 0, 20, "spool was not replayed")
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    with open_embedded(data_dir) as backend:
        cdrs = await backend.cdrs.list(t.id, limit=1000)
        (rows,) = backend.db.conn.execute("SELECT count(*) FROM cdrs").fetchone()
    assert rows == len(cdrs) == CALLS
    assert len({c.id for c in cdrs}) == CALLS
    assert {c.call_id for c in cdrs} == call_ids  # one per call made before the crash
    assert all(c.sip_code == 480 and c.caller == "1001" and c.callee == "1002" for c in cdrs)
    log = (tmp_path / "node-2.err").read_text() + (tmp_path / "node-2.out").read_text()
    assert "left in the spool" in log


async def test_runtime_puts_the_spool_in_front_of_the_store_when_configured(tmp_path):
    from prometheus_client import generate_latest

    from node.pbx.cdr_spool import SpooledCdrStore
    from node.runtime.app import Node
    from tests.interop.conftest import node_config

    async with Node(node_config(tmp_path, free_port("127.0.0.1"))) as node:
        # embedded: SQLite is local and durable already, a spool would only write twice
        assert node.cdr_spool is None and node.service.cdrs is node.backend.cdrs
        assert not (tmp_path / "node" / "cdr-spool.db").exists()
    async with Node(node_config(tmp_path, free_port("127.0.0.1"), cdr_spool=True)) as node:
        assert isinstance(node.service.cdrs, SpooledCdrStore) and node.service.cdrs.store is node.backend.cdrs
        assert (await node.health())["cdr_spool"] == {"pending": 0, "held": 0, "store_errors": 0, "last_error": ""}
        metrics = generate_latest().decode()
        assert "hivepbx_cdr_spool_pending" in metrics and "hivepbx_cdr_store_errors_total" in metrics
        assert (tmp_path / "node" / "cdr-spool.db").exists()
