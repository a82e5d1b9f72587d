"""Music on hold with real phones: baresip A holds baresip B (a=sendonly re-INVITE through the
B2BUA); B must take the node's music stream on its call's port while held (its own log says
which RTP streams it received) and go back to A's stream after the resume."""

from __future__ import annotations

import asyncio
import re

import pytest

from node.runtime.app import Node
from tests.interop.conftest import RunningNode, node_config
from tests.peers.audio import read_wav
from tests.peers.net import free_port
from tests.peers.rtp_peer import tone_level

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"
A_HZ, B_HZ = 440, 1000


@pytest.fixture
async def pbx(tmp_path):
    """MD5-only digest: baresip 1.0 (libre < 3.12) gives up on a SHA-256 challenge."""
    port = free_port("127.0.0.1")
    async with Node(node_config(tmp_path, port, ring_timeout=8, digest_algorithms=("MD5",))) as node:
        yield RunningNode(node, port)


async def _wait_for(cond, what: str, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.05)


async def test_baresip_held_party_hears_music_then_the_caller(pbx, peers):
    t = await pbx.tenant("alpha", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", PW1)
    await pbx.config.create_extension(t.id, "1002", PW2)
    a = await peers.baresip(f"1001@{DOMAIN}", PW1, pbx.target, tone_hz=A_HZ)
    b = await peers.baresip(f"1002@{DOMAIN}", PW2, pbx.target, tone_hz=B_HZ)
    await a.wait_registered()
    await b.wait_registered()
    assert await pbx.wait_registered(t.id, "1002")
    await a.dial(f"sip:1002@{DOMAIN}")
    await b.wait_incoming()
    await b.answer()
    await a.wait_call_established()
    await b.wait_call_established()
    calls = pbx.node.service.calls
    call = next(iter(calls.values()))
    await asyncio.sleep(1.5)
    await a.hold()
    await _wait_for(lambda: getattr(call, "hold", None) is not None and call.hold.held_side == "b", "no music")
    feed = call.hold.feed
    await asyncio.sleep(2.0)
    sent_during_hold = feed.sent
    await a.resume()
    await _wait_for(lambda: call.hold.held_side is None, "the music did not stop")
    await asyncio.sleep(1.0)
    await a.hangup()
    await b.wait_call_closed()
    await b.wait_recording()

    # the phone took the music on its call's port: a new RTP stream (SSRC) from the relay's
    # address while held, and A's stream again after the resume
    log = b.log()
    moh_ssrc = feed.ssrc  # compared as numbers: baresip prints 0x%x, without leading zeros
    changes = [(int(x, 16), int(y, 16)) for x, y in re.findall(r"SSRC changed (0x[0-9a-f]+) -> (0x[0-9a-f]+)", log)]
    print(f"music packets sent while held: {sent_during_hold}; B's SSRC changes: {changes}")
    assert sent_during_hold >= 80  # ~50 a second for 2 s
    assert len(changes) >= 2 and changes[0][1] == moh_ssrc and changes[-1][0] == moh_ssrc, log
    assert changes[-1][1] == changes[0][0]  # back to A's own stream
    # before the hold B heard A's tone (baresip restarts its recorder on a re-INVITE, so only
    # the first part of what it heard is in a file; the music's sound is checked by the SIPp test)
    heard, rate = read_wav(b.recordings()[0])
    assert tone_level(heard, A_HZ) > 0.8
    assert await pbx.wait_idle()
