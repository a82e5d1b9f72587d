"""Transfers and hold on a call the node answered itself (node/pbx/app_call.py), with SIPp
phones whose RTP is the test's own: 1001 calls the IVR 800, presses 2 and is bridged to the
receptionist 1002 through the node's two media endpoints. Then 1002 blind-transfers the
caller to 1003, or joins it to its consultation call with 1003 (REFER with Replaces), or
the caller holds 1002 (music on hold) and resumes; what each party hears is checked with
tones."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import pytest

from node.pbx import ivr
from tests.interop.pbx._calls import (MENU, NO_INPUT_MENU, RTP, app_call, bridged, free_rtp_port, ivr_caller,
                                      moh_correlation, plain_call_to, replaces_of, transferor_leaves_early)
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, stop_all, tenant_with
from tests.peers.rtp_peer import RtpPeer, node_media_of, rms, tone_level
from tests.waiting import until

pytestmark = pytest.mark.interop

async def test_receptionist_blind_transfers_ivr_caller(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await ivr.put(pbx.config, t.id, "800", MENU)
    a, b, c = await RtpPeer.open(), await RtpPeer.open(), await RtpPeer.open()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                     keys=dict(RTP, rtp_port=b.port, refer_to=f"1003@{DOMAIN}"))
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_hold_media.xml", keys=dict(RTP, rtp_port=c.port))
    try:
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 5500})
        assert await until(lambda: (c_ := app_call(pbx)) is not None and c_.transferred_to == "1003"
                           and bridged(pbx), timeout=10), "the transfer to 1003 did not complete"
        dest_c = await node_media_of(pbx, c)  # the node's new endpoint facing 1003
        start = time.monotonic()
        await asyncio.gather(a.send_tone(dest_a, 700.0, 2.0), c.send_tone(dest_c, 1200.0, 2.0))
        heard_by_c, heard_by_a = c.audio(start + 0.3), a.audio(start + 0.3)
        b_after = b.audio(start + 0.3)
        caller = await asyncio.wait_for(run, 30)
    finally:
        r2, r3 = await stop_all(p2, p3)
        for p in (a, b, c):
            p.close()
    caller.assert_ok()
    print(f"1003 hears 700 Hz share {tone_level(heard_by_c, 700):.2f}; 1001 hears 1200 Hz share "
          f"{tone_level(heard_by_a, 1200):.2f}; 1002 got {len(b_after)} samples after the transfer")
    assert len(heard_by_c) > 1.2 * 8000 and tone_level(heard_by_c, 700.0) > 0.5
    assert len(heard_by_a) > 1.2 * 8000 and tone_level(heard_by_a, 1200.0) > 0.5
    assert len(b_after) == 0, "the released transferor still gets audio"
    # RFC 3515 progress to the transferor, then it is released
    notifies = r2.received("NOTIFY")
    assert [n.body.strip() for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
    assert notifies[-1].header("Subscription-State").startswith("terminated")
    assert r2.received(202) and r2.received("BYE"), r2.describe()
    inv = r3.received("INVITE")
    assert len(inv) == 1 and "sip:1001@alpha.example" in inv[0].header("From")
    assert "1002" in (inv[0].header("Referred-By") or "")
    assert r3.received("BYE"), "the caller's hang-up did not reach 1003"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.disposition, c.hangup_cause) for c in cdrs] == [
        ("1001", "800", "answered", "blind-transfer"), ("1001", "1003", "answered", "caller-bye")]
    assert await pbx.wait_idle()
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints


async def test_blind_transfer_to_busy_target_returns_caller_to_receptionist(pbx, tmp_path):
    """1003 is busy: the final NOTIFY says 486 and the caller talks to 1002 again (its
    endpoint bridged back); a REFER outside the tenant is refused 403."""
    t = await tenant_with(pbx, "1002", "1003")
    await ivr.put(pbx.config, t.id, "800", MENU)
    a, b = await RtpPeer.open(), await RtpPeer.open()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                     keys=dict(RTP, rtp_port=b.port, refer_to=f"1003@{DOMAIN}"))
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_busy.xml", variables={"busy_ms": 500})
    try:
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 4000})
        assert await until(lambda: app_call(pbx) is not None and app_call(pbx)._refer is not None, timeout=10)
        # the caller hears ringback while 1003 rings (unbridged once the REFER's routing is
        # looked up, which may be a moment after _refer is set; 1003 is busy only after 500 ms)
        assert await until(lambda: not bridged(pbx), timeout=5)
        assert await until(lambda: bridged(pbx) and app_call(pbx)._refer is None, timeout=10)
        start = time.monotonic()
        await a.send_tone(dest_a, 700.0, 1.2)
        heard_by_b = b.audio(start + 0.3)
        caller = await asyncio.wait_for(run, 30)
    finally:
        r2, r3 = await stop_all(p2, p3)
        for p in (a, b):
            p.close()
    caller.assert_ok()
    notifies = r2.received("NOTIFY")
    assert notifies[-1].body.startswith("SIP/2.0 486"), [n.body for n in notifies]
    assert tone_level(heard_by_b, 700.0) > 0.5, "the caller did not come back to the receptionist"
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [("1001", "800", "caller-bye")]
    assert await pbx.wait_idle()


async def test_caller_holds_receptionist_who_hears_music_then_resume(pbx, tmp_path):
    t = await tenant_with(pbx, "1002")
    await ivr.put(pbx.config, t.id, "800", MENU)
    a, b = await RtpPeer.open(), await RtpPeer.open()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_hold_media.xml", keys=dict(RTP, rtp_port=b.port))
    try:
        run, dest_a = await ivr_caller(pbx, tmp_path, a, "uac_hold_media.xml", duration_ms=2200)
        assert await until(lambda: bridged(pbx), timeout=10)
        call = app_call(pbx)
        dest_b = await node_media_of(pbx, b)
        talking = asyncio.gather(a.send_tone(dest_a, 700.0, 6.0), b.send_tone(dest_b, 1200.0, 6.0))
        assert await until(lambda: call.held_by == "a", timeout=10)
        held_at = time.monotonic()
        assert await until(lambda: call.held_by is None, timeout=10)
        resumed_at = time.monotonic()
        res = await asyncio.wait_for(run, 30)
        await talking
    finally:
        (r2,) = await stop_all(p2)
        for p in (a, b):
            p.close()
    res.assert_ok()
    assert "a=sendonly" in r2.received("INVITE")[0].body or len(r2.received("INVITE")) == 1
    before = b.audio(held_at - 1.0, held_at)
    during = b.audio(held_at + 0.2, resumed_at)
    after_b = b.audio(resumed_at + 0.2, resumed_at + 1.3)
    after_a = a.audio(resumed_at + 0.2, resumed_at + 1.3)
    corr = moh_correlation(pbx, during)
    print(f"1002 hears 700 Hz: before {tone_level(before, 700):.3f} during {tone_level(during, 700):.3f} "
          f"after {tone_level(after_b, 700):.3f}; music rms {rms(during):.0f} correlation {corr:.3f}; "
          f"1001 hears 1200 Hz after {tone_level(after_a, 1200):.3f}")
    assert tone_level(before, 700.0) > 0.5
    assert len(during) > 1.2 * 8000 and rms(during) > 300 and corr > 0.8  # the tenant's music
    assert tone_level(during, 700.0) < 0.02  # the holder is not heard meanwhile
    assert tone_level(after_b, 700.0) > 0.5 and tone_level(after_a, 1200.0) > 0.5  # bridged again
    assert await pbx.wait_idle()


async def test_attended_transfer_joins_ivr_caller_with_consulted_colleague(pbx, tmp_path):
    """1002 has the IVR caller, calls 1003 (a plain call) and REFERs 1003's dialog with
    Replaces naming its dialog with the IVR call: 1001 and 1003 talk, 1002's two dialogs are
    released, nobody is re-INVITEd."""
    t = await tenant_with(pbx, "1002", "1003")
    await ivr.put(pbx.config, t.id, "800", MENU)
    a, c = await RtpPeer.open(), await RtpPeer.open()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_hold_media.xml", keys=dict(RTP, rtp_port=c.port))
    try:
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 6000})
        assert await until(lambda: bridged(pbx), timeout=10)
        app = app_call(pbx)
        replaces = replaces_of(app.answered_leg.dialog)
        xfer = asyncio.create_task(dial(pbx, tmp_path, "1003", "uac_call_refer.xml", "transferor", user="1002",
                                        duration_ms=500, keys={"refer_to": f"1001@{DOMAIN}?Replaces={quote(replaces, safe='')}"}).run())
        assert await until(lambda: plain_call_to(pbx.node, "1003") is not None, timeout=10)
        dest_c = ("127.0.0.1", plain_call_to(pbx.node, "1003").media.session.leg("b").local_port)  # where 1003 sends
        xres = await asyncio.wait_for(xfer, 30)
        assert await until(lambda: app.transferred_to == "1003" and app.parties is not None
                           and app.parties["b"].number == "1003", timeout=5)
        start = time.monotonic()
        await asyncio.gather(a.send_tone(dest_a, 700.0, 2.0), c.send_tone(dest_c, 1200.0, 2.0))
        heard_by_c, heard_by_a = c.audio(start + 0.3), a.audio(start + 0.3)
        caller = await asyncio.wait_for(run, 30)
    finally:
        r2, r3 = await stop_all(p2, p3)
        for p in (a, c):
            p.close()
    caller.assert_ok()
    xres.assert_ok()
    print(f"1003 hears 700 Hz {tone_level(heard_by_c, 700):.2f}; 1001 hears 1200 Hz {tone_level(heard_by_a, 1200):.2f}")
    assert tone_level(heard_by_c, 700.0) > 0.5 and tone_level(heard_by_a, 1200.0) > 0.5
    assert xres.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK"
    assert xres.received("BYE"), "the consultation call was not released"
    assert r2.received("BYE"), "the receptionist's call with the IVR caller was not released"
    assert len(r3.received("INVITE")) == 1, "1003 was re-INVITEd"
    assert r3.received("BYE"), "the caller's hang-up did not reach 1003"
    cdrs = await pbx.wait_cdrs(t.id, 3)
    assert sorted((c.caller, c.callee, c.hangup_cause) for c in cdrs) == [
        ("1001", "1003", "caller-bye"), ("1001", "800", "attended-transfer"), ("1002", "1003", "attended-transfer")]
    assert await pbx.wait_idle()
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints


async def test_caller_side_blind_transfer(pbx, tmp_path):
    """The caller (an extension) reached 1002 through the IVR (no key: no_input goes there)
    and transfers 1002 to 1003: 1003 is rung as from 1002, referred by 1001. (The caller
    parking 1002: tests/interop/pbx/test_app_call_park_sipp.py.)"""
    t = await tenant_with(pbx, "1002", "1003")
    await ivr.put(pbx.config, t.id, "801", NO_INPUT_MENU)
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer_hangup.xml", variables={"hangup_ms": 800})
    try:
        ok = await dial(pbx, tmp_path, "801", "uac_call_refer.xml", "ok", duration_ms=2000,
                        keys={"refer_to": f"1003@{DOMAIN}"}).run()
        ok.assert_ok()
        await asyncio.sleep(1.5)
    finally:
        r2, r3 = await stop_all(p2, p3)
    assert ok.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and ok.received("BYE")
    inv3 = r3.received("INVITE")
    assert len(inv3) == 1 and "sip:1002@alpha.example" in inv3[0].header("From"), r3.describe()
    assert "1001" in (inv3[0].header("Referred-By") or "")
    assert len(r2.received("BYE")) == 1, "1002 did not get the target's hang-up"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
        ("1001", "801", "blind-transfer"), ("1002", "1003", "callee-bye")]
    assert await pbx.wait_idle()


async def test_attended_refer_in_the_ivr_dialog_joins_consultation_call(pbx, tmp_path):
    """The other way round: 1002 consults 1003 first, then sends the REFER in its dialog
    with the IVR call, Replaces naming the consultation dialog; 1001 and 1003 talk."""
    t = await tenant_with(pbx, "1002", "1003")
    await ivr.put(pbx.config, t.id, "800", MENU)
    a, c = await RtpPeer.open(), await RtpPeer.open()
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_hold_media.xml", keys=dict(RTP, rtp_port=c.port))
    consult = asyncio.create_task(dial(pbx, tmp_path, "1003", "uac_call_remote_bye.xml", "consult", user="1002").run())

    def call2():
        return plain_call_to(pbx.node, "1003")

    p2 = None
    try:
        assert await until(lambda: call2() is not None, timeout=10)
        replaces = replaces_of(call2().a_dialog, node_placed=False)
        dest_c = ("127.0.0.1", call2().media.session.leg("b").local_port)
        p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                         keys=dict(RTP, rtp_port=free_rtp_port(), refer_to=f"1003@{DOMAIN}?Replaces={quote(replaces, safe='')}"))
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 6000})
        assert await until(lambda: (x := app_call(pbx)) is not None and x.transferred_to == "1003"
                           and x.parties is not None, timeout=10), "the join did not happen"
        assert call2() is None
        start = time.monotonic()
        await asyncio.gather(a.send_tone(dest_a, 700.0, 2.0), c.send_tone(dest_c, 1200.0, 2.0))
        heard_by_c, heard_by_a = c.audio(start + 0.3), a.audio(start + 0.3)
        caller = await asyncio.wait_for(run, 30)
        cres = await asyncio.wait_for(consult, 30)
    finally:
        r2, r3 = await stop_all(*(p for p in (p2, p3) if p is not None))
        for p in (a, c):
            p.close()
    caller.assert_ok()
    cres.assert_ok()  # the consultation dialog was released by the node (BYE)
    print(f"1003 hears 700 Hz {tone_level(heard_by_c, 700):.2f}; 1001 hears 1200 Hz {tone_level(heard_by_a, 1200):.2f}")
    assert tone_level(heard_by_c, 700.0) > 0.5 and tone_level(heard_by_a, 1200.0) > 0.5
    notifies = r2.received("NOTIFY")
    assert notifies[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE"), r2.describe()
    assert len(r3.received("INVITE")) == 1 and r3.received("BYE")
    cdrs = await pbx.wait_cdrs(t.id, 3)
    assert sorted((c.caller, c.callee, c.hangup_cause) for c in cdrs) == [
        ("1001", "1003", "caller-bye"), ("1001", "800", "attended-transfer"), ("1002", "1003", "attended-transfer")]
    assert await pbx.wait_idle()
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints


async def test_transferor_leaving_early_then_target_answers_or_is_busy(pbx, tmp_path):
    """The transferor hangs up right after the 202 (RFC 5589 §6.1): the transferee still
    reaches an answering target; a busy one leaves nobody to go back to, so the transferee
    is released (CDR transfer-failed-486), as for plain calls."""
    t = await tenant_with(pbx, "1002", "1003", "1004")
    await ivr.put(pbx.config, t.id, "801", NO_INPUT_MENU)
    await transferor_leaves_early(pbx, tmp_path, t, "801", 2000)
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints
