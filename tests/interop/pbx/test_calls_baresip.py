"""Real phones through the node: two baresips register (answering the digest challenge), call
each other through the B2BUA, and each hears the other's tone after it crossed the RTP relay."""

from __future__ import annotations

import asyncio

import pytest

from tests.peers.audio import analyze, tone_share

from node.runtime.app import Node
from tests.interop.conftest import RunningNode, node_config
from tests.peers.net import free_port

pytestmark = pytest.mark.interop


@pytest.fixture
async def pbx(tmp_path):
    port = free_port("127.0.0.1")
    async with Node(node_config(tmp_path, port, ring_timeout=8, digest_algorithms=("MD5",))) as node:
        yield RunningNode(node, port)

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"


async def _tenant(pbx, name="alpha", domain=DOMAIN):
    t = await pbx.tenant(name, domain)
    await pbx.config.create_extension(t.id, "1001", PW1, display_name="Alice")
    await pbx.config.create_extension(t.id, "1002", PW2, display_name="Bob")
    return t


async def _phone(pbx, peers, tenant, ext, password, tone_hz, domain=DOMAIN):
    ua = await peers.baresip(f"{ext}@{domain}", password, pbx.target, tone_hz=tone_hz)
    await ua.wait_registered()
    assert await pbx.wait_registered(tenant.id, ext)
    return ua


async def test_call_through_the_relay(pbx, peers):
    t = await _tenant(pbx)
    a = await _phone(pbx, peers, t, "1001", PW1, 440)
    b = await _phone(pbx, peers, t, "1002", PW2, 1000)
    before = pbx.node.relay.totals().packets_out
    await a.dial(f"sip:1002@{DOMAIN}")
    incoming = await b.wait_incoming()
    print(incoming)
    await b.answer()
    await a.wait_call_established()
    await b.wait_call_established()
    (session,) = pbx.node.relay.sessions("alpha")
    await asyncio.sleep(3.0)
    print(session.stats())
    print(await a.command("audio_debug")); print(await b.command("callstat")); print(await a.command("listcalls"))
    await a.hangup()
    print(await a.wait_call_closed(), await b.wait_call_closed())
    print(analyze(await b.wait_recording()), analyze(await a.wait_recording()))
    print(pbx.node.relay.totals().packets_out - before)
    print(await pbx.wait_cdrs(t.id, 1))
    print(a.events, b.events)
