"""The node in media_relay = "rtpengine" mode against a real rtpengine (userspace) and SIPp
phones whose RTP is the test's own (node/pbx/media_rtpengine.py): the SDP each phone gets
names rtpengine's ports, audio flows both ways through them, hold plays the tenant's music
from rtpengine, the session is deleted after the BYE; a recorded call stays on the node's
relay; a hung rtpengine leaves the call on the node's relay."""

from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest

from node.media.wav import read_wav
from node.pbx import hold, recording
from node.pbx import media_rtpengine as mr
from node.rtp_engine.ng_client import NgClient
from node.runtime.app import Node
from tests.interop.conftest import RunningNode, node_config
from tests.peers.net import free_port
from tests.peers.rtp_peer import RtpPeer, best_correlation, rms, tone_level
from tests.peers.rtpengine import Rtpengine, rtp_ports
from tests.peers.sipp import Sipp, sipp_phone
from tests.waiting import until

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"
RTPE_PORTS = (40100, 40199)


@pytest.fixture
async def rtpe(tmp_path):
    e = await Rtpengine(tmp_path / "rtpe", port_min=RTPE_PORTS[0], port_max=RTPE_PORTS[1]).start()
    ng = NgClient(*e.address, timeout=0.5, retries=2)
    try:
        yield e, ng
    finally:
        ng.close()
        await e.stop()


async def _node(tmp_path, ng_address: tuple[str, int], **kw) -> Node:
    port = free_port("127.0.0.1")
    cfg = node_config(tmp_path, port, ring_timeout=8, media_relay="rtpengine",
                      rtpengine_ng=(f"{ng_address[0]}:{ng_address[1]}",), **kw)
    node = Node(cfg)
    await node.__aenter__()
    node.test_port = port  # type: ignore[attr-defined]
    return node


async def _tenant(pbx: RunningNode):
    t = await pbx.tenant("alpha", DOMAIN)
    await pbx.config.create_extension(t.id, "1001", PW1)
    await pbx.config.create_extension(t.id, "1002", PW2)
    return t


def _sdp_port(body: str) -> tuple[str, int]:
    c = re.search(r"^c=IN IP4 (\S+)", body, re.M)
    m = re.search(r"^m=audio (\d+)", body, re.M)
    assert c and m, body
    return c.group(1), int(m.group(1))


def _local_port(query: dict, tag: str) -> int:
    return int(query["tags"][tag]["medias"][0]["streams"][0]["local port"])


async def test_call_through_rtpengine_talk_hold_resume_then_session_deleted(tmp_path, rtpe):
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a = b = callee = None
    try:
        t = await _tenant(pbx)
        a, b = await RtpPeer.open(), await RtpPeer.open()
        callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_hold_media.xml",
                            registered_ms=20000, workdir=tmp_path / "phone",
                            keys={"rtp_ip": "127.0.0.1", "rtp_port": b.port})
        await callee.start()
        assert await pbx.wait_registered(t.id, "1002")
        calls = node.service.calls

        def the_call():
            return next(iter(calls.values()), None)

        caller = asyncio.create_task(Sipp(
            "uac_hold_media.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=1600, timeout=30,
            keys={"rtp_ip": "127.0.0.1", "rtp_port": a.port}).run())
        assert await until(lambda: the_call() is not None and the_call().state.value == "answered")
        call = the_call()
        anchor = call.media
        assert anchor.where == "rtpengine" and anchor.session is None  # no node relay ports for it
        q = await ng.query(anchor.ng_call_id)
        to_a, to_b = ("127.0.0.1", _local_port(q, "a")), ("127.0.0.1", _local_port(q, "b"))
        assert anchor.sent_to == {"a": to_a, "b": to_b}
        talking = asyncio.create_task(a.send_tone(to_a, 700.0, 5.0))
        answering = asyncio.create_task(b.send_tone(to_b, 1100.0, 1.2))
        assert await until(lambda: getattr(call, "hold", None) is not None and call.hold.held_side == "b")
        held_at = time.monotonic()
        assert await until(lambda: call.hold.held_side is None)
        resumed_at = time.monotonic()
        res = await asyncio.wait_for(caller, 30)
        await talking
        await answering
        ng_id = anchor.ng_call_id
        assert await pbx.wait_idle()
        # the BYE deleted the call's session in rtpengine
        for _ in range(50):
            listed = (await ng.command("list"))["calls"]
            if ng_id not in listed:
                break
            await asyncio.sleep(0.1)
    finally:
        for p in (a, b):
            if p is not None:
                p.close()
        cres = await callee.stop() if callee is not None else None
        await node.__aexit__(None, None, None)
    res.assert_ok()
    assert ng_id not in listed, listed
    # each phone was told rtpengine's port: not the node relay's, not the other phone's
    invite_to_b = cres.received("INVITE")[0].body
    answer_to_a = res.received(200)[0].body
    assert _sdp_port(invite_to_b) == to_b and _sdp_port(answer_to_a) == to_a
    node_relay = range(node.cfg.rtp_port_min, node.cfg.rtp_port_max + 1)
    for port in (to_a[1], to_b[1]):
        assert port in rtp_ports(*RTPE_PORTS) and port not in node_relay and port not in (a.port, b.port)
    invites = cres.received("INVITE")
    assert len(invites) == 3 and "a=sendonly" in invites[1].body, cres.describe()  # hold reached 1002

    talk = b.audio(held_at - 1.2, held_at)
    heard_by_a = a.audio(held_at - 1.2, held_at)
    during = b.audio(held_at + 0.3, resumed_at)
    after = b.audio(resumed_at + 0.3, resumed_at + 1.3)
    tune = read_wav(hold.default_file(node.cfg.data_dir)).astype(np.float64)
    corr = best_correlation(during[:8000], np.concatenate([tune, tune]))
    print(f"1002 hears 700 Hz: talk {tone_level(talk, 700):.3f} hold {tone_level(during, 700):.3f} "
          f"resumed {tone_level(after, 700):.3f}; 1001 hears 1100 Hz {tone_level(heard_by_a, 1100):.3f}; "
          f"music rms {rms(during):.0f} correlation {corr:.3f}")
    assert tone_level(talk, 700.0) > 0.5  # 1001 → rtpengine → 1002
    assert tone_level(heard_by_a, 1100.0) > 0.5  # 1002 → rtpengine → 1001
    assert rms(during) > 300 and corr > 0.8  # rtpengine plays the tenant's music to the held party
    assert tone_level(during, 700.0) < 0.02  # and blocks the holder meanwhile
    assert tone_level(after, 700.0) > 0.5  # resumed: two-way again


async def test_recorded_call_stays_on_the_node_relay(tmp_path, rtpe):
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    callee = None
    before = mr.ANCHORED.labels("local", "recording")._value.get()
    try:
        t = await _tenant(pbx)
        await recording.put(pbx.config, t.id, "1002", {"mode": "always"})
        callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_answer.xml",
                            registered_ms=15000, workdir=tmp_path / "phone")
        await callee.start()
        assert await pbx.wait_registered(t.id, "1002")
        caller = asyncio.create_task(Sipp(
            "uac_call.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001", domain=DOMAIN,
            auth_user="1001", auth_password=PW1, duration_ms=1500, timeout=30).run())
        calls = node.service.calls
        assert await until(lambda: any(c.state.value == "answered" for c in calls.values()))
        call = next(iter(calls.values()))
        where, session = call.media.where, call.media.session
        listed = (await ng.command("list"))["calls"]
        res = await asyncio.wait_for(caller, 30)
        assert await pbx.wait_idle()
    finally:
        cres = await callee.stop() if callee is not None else None
        await node.__aexit__(None, None, None)
    res.assert_ok()
    assert where == "local" and session is not None and listed == []
    assert mr.ANCHORED.labels("local", "recording")._value.get() == before + 1
    port = _sdp_port(cres.received("INVITE")[0].body)[1]
    assert node.cfg.rtp_port_min <= port <= node.cfg.rtp_port_max  # the node's relay, not rtpengine


async def test_hung_rtpengine_leaves_the_call_on_the_node_relay(tmp_path, rtpe):
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address, rtpengine_timeout=0.3)
    pbx = RunningNode(node, node.test_port)
    callee = None
    fallbacks = mr.FALLBACKS._value.get()
    timeouts = mr.NG_COMMANDS.labels("offer", "timeout")._value.get()
    try:
        t = await _tenant(pbx)
        callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_answer.xml",
                            registered_ms=15000, workdir=tmp_path / "phone")
        await callee.start()
        assert await pbx.wait_registered(t.id, "1002")
        engine.pause()  # up when the node started, hung now: the offer times out
        try:
            caller = asyncio.create_task(Sipp(
                "uac_call.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
                domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=1000, timeout=30).run())
            calls = node.service.calls
            assert await until(lambda: any(c.state.value == "answered" for c in calls.values()))
            call = next(iter(calls.values()))
            where, session = call.media.where, call.media.session
            res = await asyncio.wait_for(caller, 30)
            assert await pbx.wait_idle()
        finally:
            engine.resume()
    finally:
        cres = await callee.stop() if callee is not None else None
        await node.__aexit__(None, None, None)
    res.assert_ok()
    assert where == "local" and session is not None
    assert mr.FALLBACKS._value.get() == fallbacks + 1
    assert mr.NG_COMMANDS.labels("offer", "timeout")._value.get() == timeouts + 1
    port = _sdp_port(cres.received("INVITE")[0].body)[1]
    assert node.cfg.rtp_port_min <= port <= node.cfg.rtp_port_max



async def test_node_shutdown_deletes_the_sessions_of_the_calls_it_ends(tmp_path, rtpe):
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    callee = None
    stopped = False
    try:
        t = await _tenant(pbx)
        callee = sipp_phone(pbx.target, user="1002", password=PW2, domain=DOMAIN, answer_with="uas_answer.xml",
                            registered_ms=15000, workdir=tmp_path / "phone")
        await callee.start()
        assert await pbx.wait_registered(t.id, "1002")
        caller = asyncio.create_task(Sipp(
            "uac_call_remote_bye.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1, timeout=20).run())
        calls = node.service.calls
        assert await until(lambda: any(c.state.value == "answered" for c in calls.values()))
        ng_id = next(iter(calls.values())).media.ng_call_id
        assert (await ng.command("list"))["calls"] == [ng_id]
        await node.__aexit__(None, None, None)  # hangs the call up, deletes its session
        stopped = True
        listed = (await ng.command("list"))["calls"]  # no waiting: the stop awaited the delete
        res = await asyncio.wait_for(caller, 20)
    finally:
        if callee is not None:
            await callee.stop()
        if not stopped:
            await node.__aexit__(None, None, None)
    res.assert_ok()  # the caller got the node's BYE
    assert listed == []
