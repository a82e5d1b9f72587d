"""Attended transfer of a call the node answered itself (node/pbx/app_call.py) to a plain call
a real rtpengine relays (media_relay = "rtpengine"): 1001 reaches the receptionist 1002
through the IVR 800, 1002 consults 1003 (relayed by rtpengine) and REFERs 1003's dialog with
Replaces naming its dialog with the IVR call. 1003 is re-INVITEd onto the node's relay first
(node/pbx/reanchor.py), then joined to the caller's endpoint; a refused move fails the
transfer (final NOTIFY) and leaves both calls as they were."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import pytest

from node.pbx import ivr, outgoing, reanchor
from node.pbx.app_call import AppCall
from node.pbx.call import CallState
from tests.interop.pbx._calls import (LOOP, MENU, RTP, RtpeNode, app_call, bridged, free_rtp_port, ivr_caller,
                                      no_rtpe_sessions, plain_call_to, replaces_of, rtpe_sessions, sdp_port)
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, tenant_with
from tests.interop.pbx.test_media_rtpengine_sipp import rtpe  # noqa: F401  (the fixture)
from tests.peers.rtp_peer import node_media_of, tone_level
from tests.waiting import until

pytestmark = pytest.mark.interop


async def _consult_then_refer(h: RtpeNode, app: AppCall):
    """1002 calls 1003 (must be relayed by rtpengine), then REFERs with Replaces of its IVR dialog."""
    refer_to = f"1001@{DOMAIN}?Replaces={quote(replaces_of(app.answered_leg.dialog), safe='')}"
    xfer = asyncio.create_task(h.dial("1003", "uac_call_refer.xml", "transferor", user="1002",
                                      duration_ms=800, keys={"refer_to": refer_to}).run())
    assert await until(lambda: plain_call_to(h.node, "1003") is not None, timeout=10), "1003 did not answer"
    consult = plain_call_to(h.node, "1003")
    where, ng_id, listed = consult.media.where, consult.media.ng_call_id, await rtpe_sessions(h.ng)
    return xfer, consult, where, ng_id, listed


async def test_attended_transfer_joins_ivr_caller_with_colleague_rtpengine_relays(tmp_path, rtpe):  # noqa: F811
    done = reanchor.REANCHORS.labels("done")._value.get()
    async with RtpeNode(tmp_path, rtpe, peers=2) as h:
        a, c = h.peers
        pbx = h.pbx
        t = await tenant_with(pbx, "1002", "1003")
        await ivr.put(pbx.config, t.id, "800", MENU)
        await h.phone(t, "1002", "uas_answer.xml")
        await h.phone(t, "1003", "uas_hold_media.xml", keys=dict(RTP, rtp_port=c.port))
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 7000})
        assert await until(lambda: bridged(pbx), timeout=10), "the IVR did not bridge 1001 to 1002"
        app = app_call(pbx)
        xfer, consult, where, ng_id, listed = await _consult_then_refer(h, app)
        xres = await asyncio.wait_for(xfer, 30)
        assert await until(lambda: app.transferred_to == "1003" and app.parties is not None
                           and app.parties["b"].number == "1003", timeout=5), "the join did not happen"
        gone = await no_rtpe_sessions(h.ng)
        relay = app._absorbed[-1]
        dest_c = (LOOP, relay.session.leg("b").local_port)  # the relay leg 1003 was moved to
        start = time.monotonic()
        await asyncio.gather(a.send_tone(dest_a, 700.0, 2.0), c.send_tone(dest_c, 1200.0, 2.0))
        heard_by_c, heard_by_a = c.audio(start + 0.3), a.audio(start + 0.3)
        caller = await asyncio.wait_for(run, 30)
        assert await pbx.wait_idle()
        cdrs = await pbx.wait_cdrs(t.id, 3)
        final = await rtpe_sessions(h.ng)
    r2, r3 = h.results
    caller.assert_ok()
    xres.assert_ok()
    print(f"1003 hears 700 Hz {tone_level(heard_by_c, 700):.2f}; 1001 hears 1200 Hz {tone_level(heard_by_a, 1200):.2f}")
    assert where == "rtpengine" and listed == [ng_id], (where, listed)  # the consultation was in rtpengine
    assert gone and final == [], "the rtpengine session was not deleted"
    assert relay.where == "local" and reanchor.REANCHORS.labels("done")._value.get() == done + 1
    assert len(heard_by_c) > 1.2 * 8000 and tone_level(heard_by_c, 700.0) > 0.5
    assert len(heard_by_a) > 1.2 * 8000 and tone_level(heard_by_a, 1200.0) > 0.5
    assert [n.body.strip() for n in xres.received("NOTIFY")] == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"]
    assert xres.received("BYE"), "the consultation call was not released"
    assert len(xres.received("INVITE")) == 0  # the transferor leaves: never moved
    assert r2.received("BYE") and len(r2.received("INVITE")) == 1, r2.describe()
    invites = r3.received("INVITE")
    assert len(invites) == 2 and sdp_port(invites[1].body) == dest_c[1], r3.describe()  # moved once, to the relay
    assert r3.received("BYE"), "the caller's hang-up did not reach 1003"
    assert sorted((x.caller, x.callee, x.hangup_cause) for x in cdrs) == [
        ("1001", "1003", "caller-bye"), ("1001", "800", "attended-transfer"), ("1002", "1003", "attended-transfer")]
    assert h.node.media.pool.in_use == 0 and not h.node.media.endpoints


async def test_refused_move_fails_the_transfer_and_both_calls_go_on(tmp_path, rtpe):  # noqa: F811
    """1003 answers 488 to the re-INVITE that would move it off rtpengine: the transferor's
    final NOTIFY says 488, the consultation stays in rtpengine and the IVR caller still talks
    to the receptionist."""
    failed = outgoing.FEATURE_EVENTS.labels("attended_transfer", "failed")._value.get()
    refused = reanchor.REANCHORS.labels("refused")._value.get()
    async with RtpeNode(tmp_path, rtpe, peers=3) as h:
        a, b, c = h.peers
        pbx = h.pbx
        t = await tenant_with(pbx, "1002", "1003")
        await ivr.put(pbx.config, t.id, "800", MENU)
        await h.phone(t, "1002", "uas_hold_media.xml", keys=dict(RTP, rtp_port=b.port))
        await h.phone(t, "1003", "uas_media_refuse_reinvites.xml", keys=dict(RTP, rtp_port=c.port))
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 6000})
        assert await until(lambda: bridged(pbx), timeout=10), "the IVR did not bridge 1001 to 1002"
        app = app_call(pbx)
        leg, to = app.answered_leg, app.transferred_to  # the IVR's transfer to 1002
        xfer, consult, where, ng_id, listed = await _consult_then_refer(h, app)
        assert await until(lambda: outgoing.FEATURE_EVENTS.labels("attended_transfer", "failed")._value.get()
                           > failed, timeout=10), "the transfer did not fail"
        # before the transferor hangs up (300 ms after the final NOTIFY): both calls as they were
        kept = (consult.state, consult.media.where, await rtpe_sessions(h.ng))
        app_kept = (app.answered_leg is leg, app.transferred_to == to == "1002", app._absorbed, bridged(pbx))
        xres = await asyncio.wait_for(xfer, 30)
        dest_b = await node_media_of(pbx, b)
        start = time.monotonic()
        await asyncio.gather(a.send_tone(dest_a, 700.0, 1.5), b.send_tone(dest_b, 1200.0, 1.5))
        heard_by_b, heard_by_a = b.audio(start + 0.3), a.audio(start + 0.3)
        caller = await asyncio.wait_for(run, 30)
        assert await pbx.wait_idle()
        cdrs = await pbx.wait_cdrs(t.id, 2)
        final = await rtpe_sessions(h.ng)
    r2, r3 = h.results
    caller.assert_ok()
    xres.assert_ok()
    print(f"after the refused move: 1002 hears 700 Hz {tone_level(heard_by_b, 700):.2f}; "
          f"1001 hears 1200 Hz {tone_level(heard_by_a, 1200):.2f}")
    assert where == "rtpengine" and listed == [ng_id]
    assert kept == (CallState.ANSWERED, "rtpengine", [ng_id]), kept
    assert app_kept == (True, True, [], True), app_kept
    assert reanchor.REANCHORS.labels("refused")._value.get() == refused + 1
    last = xres.received("NOTIFY")[-1]
    assert last.body.startswith("SIP/2.0 488") and "terminated" in last.header("Subscription-State"), xres.describe()
    assert xres.sent("BYE") and not xres.received("BYE")  # the transferor stayed, then hung up itself
    invites = r3.received("INVITE")
    assert len(invites) == 2 and r3.sent(488), r3.describe()  # the move offered, refused; nothing to undo
    assert r3.received("BYE"), "the transferor's hang-up did not reach 1003"
    assert len(heard_by_b) > 0.8 * 8000 and tone_level(heard_by_b, 700.0) > 0.5
    assert len(heard_by_a) > 0.8 * 8000 and tone_level(heard_by_a, 1200.0) > 0.5
    assert len(r2.received("INVITE")) == 1 and r2.received("BYE"), r2.describe()
    assert sorted((x.caller, x.callee, x.hangup_cause) for x in cdrs) == [
        ("1001", "800", "caller-bye"), ("1002", "1003", "caller-bye")]
    assert final == [], "the consultation's rtpengine session was not deleted"
    assert h.node.media.pool.in_use == 0 and not h.node.media.endpoints


async def test_attended_refer_in_the_ivr_dialog_moves_consultation_off_rtpengine(tmp_path, rtpe):  # noqa: F811
    """The other way round: 1002 consults 1003 first (rtpengine relays it), then REFERs in its
    dialog with the IVR call, Replaces naming the consultation dialog: the NOTIFYs go on the
    IVR dialog, 1003 is moved, then 1001 and 1003 talk."""
    async with RtpeNode(tmp_path, rtpe, peers=2) as h:
        a, c = h.peers
        pbx, node = h.pbx, h.node
        t = await tenant_with(pbx, "1002", "1003")
        await ivr.put(pbx.config, t.id, "800", MENU)
        await h.phone(t, "1003", "uas_hold_media.xml", keys=dict(RTP, rtp_port=c.port))
        consult = asyncio.create_task(h.dial("1003", "uac_call_remote_bye.xml", "consult", user="1002").run())
        assert await until(lambda: plain_call_to(node, "1003") is not None, timeout=10), "1003 did not answer"
        call2 = plain_call_to(node, "1003")
        where, ng_id, listed = call2.media.where, call2.media.ng_call_id, await rtpe_sessions(h.ng)
        replaces = replaces_of(call2.a_dialog, node_placed=False)  # as 1002 sees it
        await h.phone(t, "1002", "uas_answer_refer_reinvites.xml",
                      keys=dict(RTP, rtp_port=free_rtp_port(),
                                refer_to=f"1003@{DOMAIN}?Replaces={quote(replaces, safe='')}"))
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 7000})
        assert await until(lambda: (x := app_call(pbx)) is not None and x.transferred_to == "1003"
                           and x.parties is not None, timeout=10), "the join did not happen"
        app = app_call(pbx)
        gone = await no_rtpe_sessions(h.ng)
        dest_c = (LOOP, app._absorbed[-1].session.leg("b").local_port)
        start = time.monotonic()
        await asyncio.gather(a.send_tone(dest_a, 700.0, 2.0), c.send_tone(dest_c, 1200.0, 2.0))
        heard_by_c, heard_by_a = c.audio(start + 0.3), a.audio(start + 0.3)
        caller = await asyncio.wait_for(run, 30)
        cres = await asyncio.wait_for(consult, 30)
        assert await pbx.wait_idle()
        cdrs = await pbx.wait_cdrs(t.id, 3)
    r3, r2 = h.results
    caller.assert_ok()
    cres.assert_ok()  # the consultation dialog was released by the node (BYE)
    print(f"1003 hears 700 Hz {tone_level(heard_by_c, 700):.2f}; 1001 hears 1200 Hz {tone_level(heard_by_a, 1200):.2f}")
    assert where == "rtpengine" and listed == [ng_id] and gone
    assert tone_level(heard_by_c, 700.0) > 0.5 and tone_level(heard_by_a, 1200.0) > 0.5
    notifies = [n.body.strip() for n in r2.received("NOTIFY")]
    assert notifies == ["SIP/2.0 100 Trying", "SIP/2.0 200 OK"] and r2.received("BYE"), r2.describe()
    invites = r3.received("INVITE")
    assert len(invites) == 2 and sdp_port(invites[1].body) == dest_c[1] and r3.received("BYE"), r3.describe()
    assert len(cres.received("INVITE")) == 0  # the transferor was not moved
    assert sorted((x.caller, x.callee, x.hangup_cause) for x in cdrs) == [
        ("1001", "1003", "caller-bye"), ("1001", "800", "attended-transfer"), ("1002", "1003", "attended-transfer")]
    assert h.node.media.pool.in_use == 0 and not h.node.media.endpoints
