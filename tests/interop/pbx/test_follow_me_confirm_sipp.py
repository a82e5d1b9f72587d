"""Follow-me "press 1 to accept" (node/pbx/answer_confirm.py) and per-destination active
periods, with a SIPp caller and a SIPp carrier whose RTP are the test's own sockets: the
mobile that answers hears the spoken prompt (non-silent RTP), presses keys as RFC 4733
events, and is bridged to the caller (audio both ways) only after pressing 1; another key or
silence releases it, the follow-me goes on, and the answered leg keeps its CDR row."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.pbx import answer_confirm, forwarding
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, phone, pw, stop_all, tenant_with
from tests.peers.rtp_peer import RtpPeer, node_media_of, rms, tone_level
from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop

MOBILE = "01701234567"


async def _setup(pbx, tmp_path, mobile: RtpPeer, destinations: list, *exts: str):
    t = await tenant_with(pbx, "1002", *exts)
    carrier = Sipp("uas_hold_media.xml", None, workdir=tmp_path / "carrier", local_ip="127.0.0.3", timeout=40,
                   keys={"rtp_ip": "127.0.0.1", "rtp_port": mobile.port})
    await carrier.start()
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3", port=carrier.local_port)
    await pbx.config.create_route(t.id, "0", "carrier")
    await forwarding.save(pbx.config, t.id, "1002", {"follow_me": {"mode": "ordered", "destinations": destinations}})
    return t, carrier


def _caller(pbx, tmp_path, a: RtpPeer, hold_ms: int):
    return asyncio.create_task(Sipp(
        "uac_media_call.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001", domain=DOMAIN,
        auth_user="1001", auth_password=pw("1001"), timeout=40,
        keys={"rtp_ip": "127.0.0.1", "rtp_port": a.port, "formats": "0 101", "hold_ms": hold_ms}).run())


async def test_accepted_with_1_bridges_caller_and_mobile(pbx, tmp_path):
    a, m = await RtpPeer.open(), await RtpPeer.open()
    t, carrier = await _setup(pbx, tmp_path, m, [{"to": f"tel:{MOBILE}", "ring": 10, "confirm": True}])
    calls = pbx.node.service.calls
    try:
        caller = _caller(pbx, tmp_path, a, hold_ms=4000)
        to_mobile_ep = await node_media_of(pbx, m)
        assert await until(lambda: rms(m.audio()) > 300, timeout=15), "the answering mobile heard no prompt"
        call = next(iter(calls.values()))
        assert call.state.value == "ringing", "the caller was connected before the mobile accepted"
        pressed = time.time()
        await m.send_digits(to_mobile_ep, "1")
        assert await until(lambda: call.state.value == "answered", timeout=5), "pressing 1 did not connect"
        relay_a = ("127.0.0.1", call.media.session.a.local_port)
        t0 = time.monotonic()
        await asyncio.gather(a.send_tone(relay_a, 700, 1.0), m.send_tone(to_mobile_ep, 1100, 1.0))
        await asyncio.sleep(0.3)
        res = await asyncio.wait_for(caller, 30)
    finally:
        a.close()
        m.close()
        rc = await carrier.stop()
    res.assert_ok()
    assert tone_level(a.audio(since=t0), 1100) > 0.5, "the mobile's audio did not reach the caller"
    assert tone_level(m.audio(since=t0), 700) > 0.5, "the caller's audio did not reach the mobile"
    assert rc.received("BYE"), "the mobile was not hung up with the call"
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert len(cdrs) == 1
    cdr = cdrs[0]
    assert (cdr.callee, cdr.disposition, cdr.trunk) == ("1002", "answered", "carrier")
    assert cdr.answer is not None and cdr.answer < pressed, "the CDR's answer is not the mobile's answer time"
    assert await pbx.wait_idle()
    assert not any(ep for ep in pbx.node.media.endpoints if not ep.closed), "a screening endpoint was left open"


@pytest.mark.parametrize("key", ["2", None], ids=["declined", "timeout"])
async def test_declined_or_silent_mobile_is_released_and_follow_me_goes_on(pbx, tmp_path, monkeypatch, key):
    monkeypatch.setattr(answer_confirm, "CONFIRM_TIMEOUT", 2.0)
    a, m = await RtpPeer.open(), await RtpPeer.open()
    t, carrier = await _setup(pbx, tmp_path, m, [
        {"to": f"tel:{MOBILE}", "ring": 10, "confirm": True}, {"to": "1003", "ring": 10}], "1003")
    desk = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    calls = pbx.node.service.calls
    try:
        caller = _caller(pbx, tmp_path, a, hold_ms=1500)
        to_mobile_ep = await node_media_of(pbx, m)
        assert await until(lambda: rms(m.audio()) > 300, timeout=15), "the answering mobile heard no prompt"
        call = next(iter(calls.values()))
        if key is not None:
            await m.send_digits(to_mobile_ep, key)
        res = await asyncio.wait_for(caller, 30)
        await asyncio.sleep(0.3)
    finally:
        a.close()
        m.close()
        rc = await carrier.stop()
        (rd,) = await stop_all(desk)
    res.assert_ok()
    assert call.state.value == "ended"
    assert rc.received("BYE"), "the mobile that did not accept was not released"
    assert rd.received("INVITE") and rd.received("BYE"), "follow-me did not go on to the desk phone"
    assert rd.received("INVITE")[0].at >= rc.received("BYE")[0].at - 0.5
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.end)
    assert len(cdrs) == 2, cdrs
    leg, main = cdrs
    cause = "confirm-declined" if key else "confirm-timeout"
    assert (leg.callee, leg.disposition, leg.trunk, leg.hangup_cause, leg.direction) == (
        MOBILE, "answered", "carrier", cause, "outbound")
    assert leg.answer is not None and leg.start <= leg.answer <= leg.end
    assert (main.callee, main.disposition, main.hangup_cause) == ("1002", "answered", "caller-bye")
    assert main.answer is not None and main.answer >= leg.end - 0.5
    assert await pbx.wait_idle()
    assert not any(ep for ep in pbx.node.media.endpoints if not ep.closed), "a screening endpoint was left open"


async def test_destination_outside_its_active_period_is_skipped(pbx, tmp_path):
    never, always = {"years": "1971"}, {"years": "1970-2200"}
    t = await tenant_with(pbx, "1002", "1003", "1004")
    await forwarding.save(pbx.config, t.id, "1002", {"follow_me": {"mode": "ordered", "destinations": [
        {"to": "1003", "ring": 10, "active": never}, {"to": "1004", "ring": 10, "active": always}]}})
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    p4 = await phone(pbx, tmp_path, t, "1004", "uas_answer.xml")
    try:
        (await Sipp("uac_call.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
                    domain=DOMAIN, auth_user="1001", auth_password=pw("1001"), timeout=40, duration_ms=300).run()
         ).assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r3, r4 = await stop_all(p3, p4)
    assert not r3.received("INVITE"), "a destination outside its active period rang"
    assert r4.received("INVITE") and r4.received("BYE")


async def test_caller_giving_up_while_the_mobile_decides_releases_it_with_its_cdr(pbx, tmp_path):
    m = await RtpPeer.open()
    t, carrier = await _setup(pbx, tmp_path, m, [{"to": f"tel:{MOBILE}", "ring": 10, "confirm": True}])
    try:
        res = await Sipp("uac_cancel.xml", pbx.target, workdir=tmp_path / "caller", service="1002", user="1001",
                         domain=DOMAIN, auth_user="1001", auth_password=pw("1001"), timeout=40,
                         duration_ms=2500).run()
        await asyncio.sleep(0.3)
    finally:
        m.close()
        rc = await carrier.stop()
    res.assert_ok()  # CANCEL, 487: the caller was never connected
    assert rms(m.audio()) > 300, "the answering mobile heard no prompt"
    assert rc.received("BYE"), "the answered mobile was not hung up when the caller left"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.hangup_cause)
    assert [(c.callee, c.disposition, c.hangup_cause) for c in cdrs] == [
        ("1002", "cancelled", "caller-cancel"), (MOBILE, "answered", "confirm-caller-gone")]
    assert await pbx.wait_idle()
    assert not any(ep for ep in pbx.node.media.endpoints if not ep.closed), "a screening endpoint was left open"
