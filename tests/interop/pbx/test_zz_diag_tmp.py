import asyncio, subprocess, os, signal
import pytest
from node.runtime.app import Node
from tests.interop.conftest import RunningNode, node_config
from tests.peers.net import free_port
from tests.interop.pbx.test_calls_baresip import _tenant, _phone, PW1, PW2, DOMAIN

@pytest.mark.parametrize("i", range(80))
async def test_diag(tmp_path, peers, i):
    port = free_port("127.0.0.1")
    pcap = f"/tmp/brdiag/{i}.pcap"
    try:
        async with Node(node_config(tmp_path, port, ring_timeout=8, digest_algorithms=("MD5",))) as node:
            pbx = RunningNode(node, port)
            t = await _tenant(pbx)
            a = await _phone(pbx, peers, t, "1001", PW1, 440)
            b = await _phone(pbx, peers, t, "1002", PW2, 1000)
            await a.dial(f"sip:1002@{DOMAIN}")
            try:
                await b.wait_incoming(timeout=5)
            except Exception:
                await asyncio.sleep(0.5)
                print("PORT", port, "A", a.sip_port, "B", b.sip_port)
                print("A events", [e.get("type") + ":" + str(e.get("param")) for e in a.events])
                print("calls", node.service.calls)
                import time
                print("B loc", await pbx.locations.lookup(t.id, "1002", time.time()))
                print("A LOG", a.log()[-3000:])
                print("B LOG", b.log()[-3000:])
                raise
            await b.answer()
            await a.wait_call_established()
            await a.hangup()
            await b.wait_call_closed()
    finally:
        pass
