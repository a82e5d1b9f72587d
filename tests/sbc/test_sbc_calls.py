"""SIPp phones through the SBC to two real hivepbx nodes: registration with digest auth,
answered calls both ways, topology hiding on everything the phones saw, failover."""

from __future__ import annotations

import re
import time

import pytest

from sbc.proxy import Forward
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, PASSWORDS, stack, wait_for

pytestmark = pytest.mark.interop


def _registrar(s, ext, name, **kw) -> Sipp:
    return Sipp("uac_register_auth.xml", s.target, workdir=s.workdir / name, user=ext, domain=DOMAIN,
                auth_user=ext, auth_password=PASSWORDS[ext], **kw)


async def _phone(s, ext, answer="uas_answer.xml", hold_ms=15000, **kw) -> Sipp:
    phone = Sipp("uas_register_then_answer.xml", s.target, workdir=s.workdir / f"phone-{ext}", user=ext,
                 domain=DOMAIN, auth_user=ext, auth_password=PASSWORDS[ext], ooc_scenario=answer,
                 duration_ms=hold_ms, timeout=40, **kw)
    await phone.start()
    return phone


def _dial(s, callee, name="caller", scenario="uac_call.xml", **kw) -> Sipp:
    return Sipp(scenario, s.target, workdir=s.workdir / name, service=callee, user="1001", domain=DOMAIN,
                auth_user="1001", auth_password=PASSWORDS["1001"], **kw)


def assert_hidden(s, messages, *, sdp: bool = False) -> None:
    """No node address or port, no SBC-inside address and no internal header in what a
    phone saw (the SDP is the media anchor's business: checked only when asked)."""
    assert messages, "nothing captured"
    secrets = s.node_addresses()
    for m in messages:
        text = m.text if sdp else m.text.split("\n\n", 1)[0].split("\r\n\r\n", 1)[0]
        for secret in secrets:
            assert secret not in text, f"{secret!r} leaked to the phone in:\n{m.text}"
        assert not re.search(r"(?im)^x-hive-", text), f"internal header leaked:\n{m.text}"
        assert "sbcf=" not in text, f"the inside flow token leaked:\n{m.text}"


async def _where_registered(s, ext) -> list[str]:
    out = []
    for name, node in s.nodes.items():
        if await node.locations.lookup(s.tenants[name].id, ext, time.time()):
            out.append(name)
    return out


async def test_register_with_digest_through_the_sbc_is_hidden(two_nodes, tmp_path):
    s = two_nodes
    s.workdir = tmp_path
    reg = await _registrar(s, "1001", "r1", keys={"expires": 120}).run()
    reg.assert_ok()
    assert reg.received(401)[0].header("WWW-Authenticate").startswith("Digest ")
    ok = reg.received(200)[0]
    # the phone gets its own Contact back, not the SBC's masquerade
    assert re.search(r"<sip:1001@127\.0\.0\.1:\d+;transport=UDP>;expires=1[12]\d", ok.header("Contact"))
    assert_hidden(s, reg.received())
    # it is registered on exactly one node, by way of the SBC's inside socket
    where = await _where_registered(s, "1001")
    assert len(where) == 1
    node = s.nodes[where[0]]
    (b,) = await node.locations.lookup(s.tenants[where[0]].id, "1001", time.time())
    assert (b.source_host, b.source_port) == s.sbc.proxy.inside.bound["udp"]
    assert "sbcf=" in b.contact and b.contact.startswith("sip:1001@127.0.0.4:")


async def test_call_through_the_sbc_answered_and_hidden(two_nodes, tmp_path):
    s = two_nodes
    s.workdir = tmp_path
    callee = await _phone(s, "1002")
    try:
        assert await wait_for(lambda: _where_registered(s, "1002")), "callee did not register"
        caller = await _dial(s, "1002", duration_ms=800).run()
        caller.assert_ok()
        assert caller.received(407), "the INVITE was not challenged by the node"
    finally:
        cres = await callee.stop()
    invite = cres.received("INVITE")[0]
    assert "sip:1001@alpha.example" in invite.header("From")
    # the call reached the phone over its registration flow, with its own Contact as R-URI
    assert re.match(r"INVITE sip:1002@127\.0\.0\.1:\d+;transport=UDP SIP/2\.0", invite.first_line)
    assert len(invite.headers("Via")) == 1 and "127.0.0.1" in invite.header("Via")
    assert cres.received("BYE") or caller.received("BYE") or caller.sent("BYE")
    assert_hidden(s, caller.received())
    assert_hidden(s, cres.received())
    # both phones of the tenant met on one node (hash mode), and it saw one answered call
    (home,) = await _where_registered(s, "1002")
    cdrs = await s.nodes[home].wait_cdrs(s.tenants[home].id, 1)
    assert [c.disposition for c in cdrs] == ["answered"]
    assert await s.nodes[home].wait_idle()


def _local_port(result) -> int:
    contact = result.sent("REGISTER")[0].header("Contact")
    return int(re.search(r":(\d+)[;>]", contact).group(1))


def _failovers(reason: str) -> float:
    from sbc.metrics import FAILOVERS

    return FAILOVERS.labels(reason)._value.get()


async def test_dead_node_refresh_and_new_calls_move_to_the_survivor(two_nodes):
    s = two_nodes
    reg = await _registrar(s, "1001", "r1", keys={"expires": 120}).run()
    reg.assert_ok()
    (home,) = await _where_registered(s, "1001")
    survivor = s.other(home)
    before = _failovers("timeout")
    await s.kill(home)
    # the phone refreshes from the same flow: the SBC finds the home node silent and moves it
    refresh = await _registrar(s, "1001", "r2", keys={"expires": 120}, local_port=_local_port(reg),
                               timeout=10).run()
    refresh.assert_ok()
    assert await s.nodes[survivor].locations.lookup(s.tenants[survivor].id, "1001", time.time())
    assert await wait_for(lambda: not s.sbc.health.is_up(home), 5), "the probes did not take the dead node down"
    assert s.sbc.health.is_up(survivor)
    assert_hidden(s, refresh.received())
    # new calls go to the survivor: a phone registering now lands there and gets the call
    callee = await _phone(s, "1002")
    try:
        assert await wait_for(lambda: s.nodes[survivor].wait_registered(s.tenants[survivor].id, "1002", 0.1))
        caller = await _dial(s, "1002", duration_ms=300, timeout=15).run()
        caller.assert_ok()
    finally:
        await callee.stop()
    cdrs = await s.nodes[survivor].wait_cdrs(s.tenants[survivor].id, 1)
    assert [c.disposition for c in cdrs] == ["answered"]
    # the refresh found the home node silent: that was a timeout failover, unless the probes
    # had already taken the node down (then the refresh went straight to the survivor)
    assert _failovers("timeout") >= before
    status = s.sbc.status()
    assert status["nodes"][home]["up"] is False and status["nodes"][survivor]["up"] is True


async def test_503_from_a_node_retries_the_invite_on_another_node(two_nodes):
    s = two_nodes
    callee = await _phone(s, "1002")
    try:
        assert await wait_for(lambda: _where_registered(s, "1002"))
        (home,) = await _where_registered(s, "1002")
        survivor = s.other(home)
        s.nodes[home].node.service.draining = True  # a draining node answers new INVITEs 503
        before = _failovers("503")
        # the survivor has no registration of 1002: its 480, not the home node's 503, comes back
        caller = await _dial(s, "1002", scenario="uac_call_expect_error.xml", variables={"expected": 480},
                             timeout=15).run()
        caller.assert_ok()
        assert not caller.received(503)
    finally:
        await callee.stop()
    assert _failovers("503") == before + 1
    cdrs = await s.nodes[survivor].wait_cdrs(s.tenants[survivor].id, 1)
    assert cdrs and cdrs[0].callee == "1002"
    assert not s.sbc.health.is_up(home)  # held down until the probes see it well again


async def test_node_killed_mid_load_new_calls_reach_the_survivor(two_nodes):
    s = two_nodes
    calls = 24
    p1 = await _phone(s, "1002", hold_ms=60000)
    p2 = None
    try:
        assert await wait_for(lambda: _where_registered(s, "1002"))
        (home,) = await _where_registered(s, "1002")
        survivor = s.other(home)
        load = _dial(s, "1002", name="load", calls=calls, rate=4, duration_ms=200, timeout=40,
                     recv_timeout_ms=8000)
        await load.start()
        # some calls complete on the home node, then it dies under load
        assert await wait_for(lambda: len(_received_invites(p1)) >= 2, timeout=15)
        await s.kill(home)
        # the phone re-registers (a refresh from a new flow): it lands on the survivor
        p2 = await _phone(s, "1002", hold_ms=60000)
        assert await wait_for(lambda: s.nodes[survivor].wait_registered(s.tenants[survivor].id, "1002", 0.1))
        result = await load.wait()
    finally:
        r1 = await p1.stop()
        r2 = await p2.stop() if p2 is not None else None
    print(f"mid-load kill: {result.successful} of {calls} calls answered, {result.failed} failed")
    assert result.successful + result.failed == calls, result.describe()
    assert r1.received("INVITE"), "no call was answered by the home node before it died"
    assert r2 is not None and r2.received("INVITE"), "no call reached the survivor"
    cdrs = await s.nodes[survivor].wait_cdrs(s.tenants[survivor].id, 1)
    answered = [c for c in cdrs if c.disposition == "answered"]
    assert answered, [c.disposition for c in cdrs]
    # most calls made it: only those in flight on the dead node or placed before the phone
    # re-registered can fail
    assert result.successful >= calls // 3, result.describe()
    assert not s.sbc.health.is_up(home)
    assert_hidden(s, r2.received())


def _received_invites(phone: Sipp) -> list:
    from tests.peers.sipp import parse_message_log

    from pathlib import Path

    log = Path(phone._file("messages.log"))
    try:
        return [m for m in parse_message_log(log.read_text(errors="replace"))
                if m.direction == "received" and m.first_line.startswith("INVITE")]
    except FileNotFoundError:
        return []


async def test_with_media_anchored_not_even_the_sdp_shows_a_node(tmp_path):
    """With rtpengine anchoring media at the SBC (sbc.media), the SDP the phones see names
    rtpengine's ports, never the node's relay: the whole message is checked."""
    from tests.peers.rtpengine import Rtpengine

    engine = await Rtpengine(tmp_path / "rtpe", port_min=40900, port_max=40999).start()
    try:
        h, p = engine.address
        async with stack(tmp_path, names=("a",), media={"rtpengine": [f"{h}:{p}"], "ping_interval": 0}) as s:
            callee = await _phone(s, "1002")
            try:
                assert await wait_for(lambda: _where_registered(s, "1002"))
                caller = await _dial(s, "1002", duration_ms=500).run()
                caller.assert_ok()
            finally:
                cres = await callee.stop()
            answer = caller.received(200)
            assert any(f"m=audio {port} " in m.body for m in answer for port in engine.ports), \
                "the answer was not anchored at rtpengine"
            assert_hidden(s, caller.received(), sdp=True)
            assert_hidden(s, cres.received(), sdp=True)
    finally:
        await engine.stop()


async def _home_of(s, ext):
    assert await wait_for(lambda: _where_registered(s, ext)), f"{ext} did not register"
    (home,) = await _where_registered(s, ext)
    return home


async def test_cancel_crosses_the_sbc(two_nodes):
    s = two_nodes
    callee = await _phone(s, "1002", "uas_noanswer.xml")
    try:
        home = await _home_of(s, "1002")
        caller = await _dial(s, "1002", scenario="uac_cancel.xml", duration_ms=800).run()
        caller.assert_ok()
        assert caller.received(487)
        assert await wait_for(lambda: s.nodes[home].wait_idle(0.1), 5)
    finally:
        cres = await callee.stop()
    assert cres.received("CANCEL"), "the node did not cancel the ringing phone through the SBC"
    cdr = (await s.nodes[home].wait_cdrs(s.tenants[home].id, 1))[0]
    assert (cdr.disposition, cdr.sip_code) == ("cancelled", 487)
    assert_hidden(s, caller.received() + cres.received())


async def test_hold_resume_reinvites_cross_the_sbc(two_nodes):
    s = two_nodes
    callee = await _phone(s, "1002", "uas_hold.xml")
    try:
        home = await _home_of(s, "1002")
        caller = await _dial(s, "1002", scenario="uac_hold_resume.xml", duration_ms=500).run()
        caller.assert_ok()
    finally:
        cres = await callee.stop()
    invites = cres.received("INVITE")
    assert len(invites) == 3 and "a=sendonly" in invites[1].body and "a=sendonly" not in invites[2].body
    # the caller's re-INVITEs went to the SBC's masqueraded Contact, never to the node
    reinvites = caller.sent("INVITE")[-2:]
    assert all(";sbcn=" in m.first_line for m in reinvites), [m.first_line for m in reinvites]
    assert_hidden(s, caller.received() + cres.received())
    assert (await s.nodes[home].wait_cdrs(s.tenants[home].id, 1))[0].disposition == "answered"


async def test_callee_hangup_reaches_the_caller_through_the_sbc(two_nodes):
    s = two_nodes
    callee = await _phone(s, "1002", "uas_answer_hangup.xml", variables={"hangup_ms": 800})
    try:
        home = await _home_of(s, "1002")
        caller = await _dial(s, "1002", scenario="uac_call_remote_bye.xml", duration_ms=1000).run()
        caller.assert_ok()
    finally:
        await callee.stop()
    bye = caller.received("BYE")[0]
    assert re.match(r"BYE sip:1001@127\.0\.0\.1:\d+", bye.first_line), bye.first_line  # its own Contact
    assert_hidden(s, caller.received())
    cdr = (await s.nodes[home].wait_cdrs(s.tenants[home].id, 1))[0]
    assert (cdr.disposition, cdr.hangup_cause) == ("answered", "callee-bye")
