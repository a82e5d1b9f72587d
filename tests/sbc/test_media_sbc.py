"""Media anchoring in the running SBC: a SIPp call through the SBC and a real hivepbx node,
with the tenant's calls on its own rtpengine relay set (a second, real rtpengine)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import struct
from pathlib import Path

import pytest

from node.rtp_engine.ng_client import NgClient
from tests.peers.rtpengine import Rtpengine
from tests.peers.sipp import Sipp
from tests.sbc import conftest as sbc_conftest
from tests.sbc.conftest import DOMAIN, PASSWORDS, stack, wait_for

pytestmark = pytest.mark.interop


def audio_port(sdp: str) -> int:
    m = re.search(r"(?m)^m=audio (\d+) ", sdp)
    assert m, f"no audio stream in:\n{sdp}"
    return int(m.group(1))


async def calls_on(engine: Rtpengine) -> int:
    c = NgClient(*engine.address)
    try:
        reply = await c.command("list", limit=100)
        return len(reply.get("calls", []))
    finally:
        c.close()


async def test_call_media_goes_through_the_tenants_relay_set(tmp_path: Path) -> None:
    default = await Rtpengine(tmp_path / "rtpe-default", port_min=40000, port_max=40499).start()
    eu = await Rtpengine(tmp_path / "rtpe-eu", port_min=40500, port_max=40999).start()
    try:
        media = {"rtpengine": ["%s:%d" % default.address], "sets": {"eu": ["%s:%d" % eu.address]},
                 "tenants": {DOMAIN: "eu"}, "ping_interval": 0}
        async with stack(tmp_path, names=("a",), media=media) as s:
            callee = Sipp("uas_register_then_answer.xml", s.target, workdir=tmp_path / "callee", user="1002",
                          domain=DOMAIN, auth_user="1002", auth_password=PASSWORDS["1002"],
                          ooc_scenario="uas_answer.xml", duration_ms=15000, timeout=40)
            await callee.start()
            try:
                node = s.nodes["a"]
                assert await wait_for(lambda: node.wait_registered(s.tenants["a"].id, "1002", 0.1))
                caller = Sipp("uac_call.xml", s.target, workdir=tmp_path / "caller", service="1002", user="1001",
                              domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"], duration_ms=800)
                await caller.start()
                # during the call both legs (phone-SBC-node, node-SBC-phone) are anchored in eu
                assert await wait_for(lambda: calls_on(eu), timeout=10)
                result = await caller.wait()
                result.assert_ok()
            finally:
                cres = await callee.stop()
            invite = cres.received("INVITE")[0]
            answer = next(m for m in result.received(200) if "m=audio" in m.body)
            for sdp, phone_port in ((invite.body, None), (answer.body, callee.media_port)):
                port = audio_port(sdp)
                assert port in eu.ports, f"media not anchored in the tenant's set:\n{sdp}"
                assert phone_port is None or port != phone_port
                assert "c=IN IP4 127.0.0.1" in sdp
            # the node's own media ports never reach a phone: only rtpengine's
            assert audio_port(invite.body) != audio_port(answer.body)
            assert await calls_on(default) == 0  # the default set saw nothing of this tenant
            # the call is over: every anchored leg is deleted on the BYE
            assert await wait_for(lambda: len(s.sbc.media._sessions) == 0, timeout=10)
            assert await wait_for(lambda: _zero(calls_on(eu)), timeout=10)
    finally:
        await default.stop()
        await eu.stop()


async def _zero(n) -> bool:
    return (await n) == 0


async def caller_leg_port(engine: Rtpengine, phone_media_port: int) -> int | None:
    """rtpengine's port facing the phone whose SDP gave ``phone_media_port`` (None: not yet)."""
    c = NgClient(*engine.address)
    try:
        for call_id in (await c.command("list", limit=100)).get("calls", []):
            q = await c.query(call_id)
            for tag in q.get("tags", {}).values():
                for m in tag.get("medias", []):
                    for stream in m.get("streams", []):
                        if stream.get("endpoint", {}).get("port") == phone_media_port and "RTP" in stream.get("flags", []):
                            return stream["local port"]
        return None
    finally:
        c.close()


@pytest.fixture
def node_media_on_its_own_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared stack binds the nodes' RTP on 127.0.0.1 while their SDP names their own
    address; for media to really flow, each node binds RTP where its SDP says."""
    original = sbc_conftest.node_config

    def node_config(tmp_path, name):
        cfg, port = original(tmp_path, name)
        return dataclasses.replace(cfg, rtp_bind=sbc_conftest.NODE_IPS[name]), port

    monkeypatch.setattr(sbc_conftest, "node_config", node_config)


async def test_rtp_crosses_sbc_rtpengine_and_node_to_the_callee_and_back(
        tmp_path: Path, node_media_on_its_own_address: None) -> None:
    """RTP sent to the rtpengine port a caller was given goes rtpengine → node relay →
    rtpengine → callee (SIPp echoing it) and all the way back."""
    engine = await Rtpengine(tmp_path / "rtpe", port_min=40000, port_max=40999).start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        async with stack(tmp_path, names=("a",), media={"rtpengine": ["%s:%d" % engine.address], "ping_interval": 0}) as s:
            callee = Sipp("uas_register_then_answer.xml", s.target, workdir=tmp_path / "callee", user="1002",
                          domain=DOMAIN, auth_user="1002", auth_password=PASSWORDS["1002"],
                          ooc_scenario="uas_answer.xml", duration_ms=15000, timeout=40, rtp_echo=True)
            await callee.start()
            try:
                assert await wait_for(lambda: s.nodes["a"].wait_registered(s.tenants["a"].id, "1002", 0.1))
                caller = Sipp("uac_call.xml", s.target, workdir=tmp_path / "caller", service="1002", user="1001",
                              domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"], duration_ms=4000)
                await caller.start()
                port: list[int] = []

                async def found() -> bool:
                    p = await caller_leg_port(engine, caller.media_port)
                    if p is not None and await calls_on(engine) >= 2:
                        port.append(p)
                        return True
                    return False

                assert await wait_for(found, timeout=10), "the call was not anchored in rtpengine"
                await asyncio.sleep(0.3)  # the 200 OK has reached the caller: both legs answered
                loop = asyncio.get_running_loop()
                echoed = 0
                for seq in range(1, 31):
                    # stands in for the caller's audio (rtpengine learns the sender, as with NAT)
                    sock.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xCAFE) + b"\xd5" * 160,
                                ("127.0.0.1", port[0]))
                    await asyncio.sleep(0.02)
                    while True:
                        try:
                            data = sock.recv(2048)
                        except BlockingIOError:
                            break
                        if len(data) == 172 and data[12:] == b"\xd5" * 160:
                            echoed += 1
                deadline = loop.time() + 1.0
                while loop.time() < deadline and echoed < 30:
                    try:
                        data = sock.recv(2048)
                        if len(data) == 172 and data[12:] == b"\xd5" * 160:
                            echoed += 1
                    except BlockingIOError:
                        await asyncio.sleep(0.02)
                assert echoed >= 20, f"only {echoed}/30 RTP packets came back through the chain"
                (await caller.wait()).assert_ok()
            finally:
                await callee.stop()
    finally:
        sock.close()
        await engine.stop()
