"""Transfer and park on calls whose media a real rtpengine relays (media_relay = "rtpengine"):
the node re-INVITEs the parties onto its own relay first (node/pbx/reanchor.py), deletes
the rtpengine session, then runs the feature as on a local call. SIPp phones whose RTP is
the test's own (RtpPeer) prove the audio after the feature; a party refusing the re-INVITE
leaves the call on rtpengine, talking, and the transferor gets the failure NOTIFY."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest

from node.pbx import feature_objects, outgoing, reanchor
from tests.interop.pbx._calls import (LOOP, RtpeNode, answered, relay_ends, replaces_of, rtp_keys, rtpe_sessions,
                                      sdp_port, talk)
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, tenant_with
from tests.interop.pbx.test_media_rtpengine_sipp import rtpe  # noqa: F401  (the fixture)
from tests.waiting import until

pytestmark = pytest.mark.interop


async def test_blind_transfer_moves_the_call_to_the_node_relay(tmp_path, rtpe):  # noqa: F811
    done = reanchor.REANCHORS.labels("done")._value.get()
    async with RtpeNode(tmp_path, rtpe, peers=3) as h:
        a, x, c = h.peers
        t = await tenant_with(h.pbx, "1002", "1003")
        await h.phone(t, "1002", "uas_answer_refer_reinvites.xml", keys=rtp_keys(x, refer_to=f"1003@{DOMAIN}"))
        await h.phone(t, "1003", "uas_hold_media.xml", keys=rtp_keys(c))
        caller = h.dial("1002", "uac_call_rtp_reinvites.xml", keys=rtp_keys(a, talk_ms=2500))
        await caller.start()
        call = await answered(h.node, "1002")
        ng_id = call.media.ng_call_id
        before = await rtpe_sessions(h.ng)
        assert await until(lambda: call.plan.callee == "1003" and call.media.where == "local"), "not transferred"
        after = await rtpe_sessions(h.ng)
        to_a, to_c = relay_ends(call)
        heard_by_c, heard_by_a = await talk(a, to_a, c, to_c)
        res = await caller.wait()
        assert await h.pbx.wait_idle()
        cdrs = sorted(await h.pbx.wait_cdrs(t.id, 2), key=lambda cdr: cdr.start)
    r2, r3 = h.results
    res.assert_ok()
    print(f"transferee hears the target {heard_by_a:.3f}, the target hears the transferee {heard_by_c:.3f}")
    assert before == [ng_id] and after == [], (before, after)  # the session was deleted
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    moved = res.received("INVITE")
    assert len(moved) == 1 and sdp_port(moved[0].body) == to_a[1], res.describe()  # one re-INVITE, to the relay
    assert h.node.cfg.rtp_port_min <= to_a[1] <= h.node.cfg.rtp_port_max
    assert len(r2.received("INVITE")) == 2, r2.describe()  # the call, then its move
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE")
    assert len(r3.received("INVITE")) == 1
    assert [(cdr.caller, cdr.callee, cdr.hangup_cause) for cdr in cdrs] == [
        ("1001", "1002", "blind-transfer"), ("1001", "1003", "caller-bye")]
    assert reanchor.REANCHORS.labels("done")._value.get() == done + 1


async def _failed_move(h, caller_scenario: str):
    """1002 (answers every re-INVITE) blind-transfers 1001 (``caller_scenario``) to 1003
    and the move to the node's relay fails: (what the test saw before the transferor hung
    up, the caller's SIPp result). The transferor's phone expects the failure NOTIFY and
    hangs up 1.8 s after it, which ends the caller."""
    a, x = h.peers
    failed = outgoing.FEATURE_EVENTS.labels("blind_transfer", "failed")._value.get()
    t = await tenant_with(h.pbx, "1002", "1003")
    await h.phone(t, "1002", "uas_answer_refer_reinvites_fail.xml", keys=rtp_keys(x, refer_to=f"1003@{DOMAIN}"))
    await h.phone(t, "1003", "uas_answer.xml")
    caller = h.dial("1002", caller_scenario, keys=rtp_keys(a, talk_ms=15000))
    await caller.start()
    call = await answered(h.node, "1002")
    anchor = call.media
    assert await until(lambda: outgoing.FEATURE_EVENTS.labels("blind_transfer", "failed")._value.get() > failed,
                       timeout=20), "no failure"
    where, listed = call.media.where, await rtpe_sessions(h.ng)
    heard_by_x, heard_by_a = await talk(a, anchor.sent_to["a"], x, anchor.sent_to["b"], 0.8)
    res = await caller.wait()  # the transferor hangs up: the node's BYE ends the caller
    assert await h.pbx.wait_idle()
    final = await rtpe_sessions(h.ng)
    print(f"after the failed move: 1002 hears 1001 {heard_by_x:.3f}, 1001 hears 1002 {heard_by_a:.3f}")
    assert where == "rtpengine" and listed == [anchor.ng_call_id]
    assert heard_by_x > 0.5 and heard_by_a > 0.5  # still talking through rtpengine
    assert final == []
    return anchor, res


async def test_refused_move_keeps_the_call_on_rtpengine_and_fails_the_transfer(tmp_path, rtpe):  # noqa: F811
    refused = reanchor.REANCHORS.labels("refused")._value.get()
    async with RtpeNode(tmp_path, rtpe, peers=2) as h:
        anchor, res = await _failed_move(h, "uac_call_rtp_refuse_reinvites.xml")
    r2, r3 = h.results
    res.assert_ok()
    last = r2.received("NOTIFY")[-1]
    assert last.body.startswith("SIP/2.0 488") and "terminated" in last.header("Subscription-State"), r2.describe()
    reinvites = r2.received("INVITE")[1:]
    assert len(reinvites) == 2, r2.describe()  # moved to the node's relay, then back to rtpengine
    assert sdp_port(reinvites[1].body) == anchor.sent_to["b"][1]
    assert len(res.received("INVITE")) == 1 and res.sent(488)
    assert r3.received("INVITE") == []  # the target was never rung
    assert reanchor.REANCHORS.labels("refused")._value.get() == refused + 1


async def test_unanswered_move_is_cancelled_after_a_bounded_wait(tmp_path, rtpe):  # noqa: F811
    """1001 takes the re-INVITE that would move it (100 Trying) and never answers it: after
    the node's ``reanchor_answer_wait`` (1 s here, not the 32 s INVITE transaction timeout)
    the node CANCELs it (RFC 3261 §9.1), moves 1002 back to rtpengine and fails the transfer
    with 408 in the final NOTIFY; the call goes on through rtpengine."""
    refused = reanchor.REANCHORS.labels("refused")._value.get()
    async with RtpeNode(tmp_path, rtpe, peers=2, reanchor_answer_wait=1.0) as h:
        anchor, res = await _failed_move(h, "uac_call_rtp_ignore_reinvite.xml")
    r2, r3 = h.results
    res.assert_ok()
    (move,) = res.received("INVITE")
    (cancel,) = res.received("CANCEL")
    assert res.sent(100) and res.sent(487) and cancel.header("CSeq").split()[0] == move.header("CSeq").split()[0]
    waited = cancel.at - move.at
    last = r2.received("NOTIFY")[-1]
    print(f"the unanswered re-INVITE was cancelled after {waited:.2f} s; final NOTIFY {last.body.strip()!r}")
    assert 0.8 < waited < 10.0, "the node did not wait for its reanchor_answer_wait"  # 32 s without the bound
    assert last.body.startswith("SIP/2.0 408") and "terminated" in last.header("Subscription-State"), r2.describe()
    reinvites = r2.received("INVITE")[1:]
    assert len(reinvites) == 2, r2.describe()  # moved to the node's relay, then back to rtpengine
    assert sdp_port(reinvites[1].body) == anchor.sent_to["b"][1]
    assert r3.received("INVITE") == []  # the target was never rung
    assert reanchor.REANCHORS.labels("refused")._value.get() == refused + 1


async def test_attended_transfer_joins_calls_moved_off_rtpengine(tmp_path, rtpe):  # noqa: F811
    async with RtpeNode(tmp_path, rtpe, peers=2) as h:
        a, c = h.peers
        t = await tenant_with(h.pbx, "1002", "1003")
        await h.phone(t, "1002", "uas_answer.xml")
        await h.phone(t, "1003", "uas_hold_media.xml", keys=rtp_keys(c))
        caller = h.dial("1002", "uac_call_rtp_reinvites.xml", keys=rtp_keys(a, talk_ms=4000))
        await caller.start()
        call1 = await answered(h.node, "1002")
        replaces = replaces_of(call1.answered_leg.dialog)
        xfer = await h.dial("1003", "uac_call_refer.xml", "transferor", user="1002", duration_ms=300,
                            keys={"refer_to": f"1001@{DOMAIN}?Replaces={quote(replaces, safe='')}"}).run()
        joined = await answered(h.node, "1001")  # 1003 (the REFER's far end) now "calls" 1001
        listed = await rtpe_sessions(h.ng)
        # the REFER's call (1002 → 1003) survives: its b leg faces 1003; the absorbed call's
        # a leg faces 1001 (node/pbx/replaces.py ``join``)
        main, absorbed = joined.media._main, joined.media._absorbed
        to_a, to_c = (LOOP, absorbed.session.leg("a").local_port), (LOOP, main.session.leg("b").local_port)
        heard_by_c, heard_by_a = await talk(a, to_a, c, to_c)
        res = await caller.wait()
        assert await h.pbx.wait_idle()
    r2, r3 = h.results
    xfer.assert_ok()
    res.assert_ok()
    print(f"attended: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert main.where == absorbed.where == "local" and listed == []  # both sessions deleted
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    assert xfer.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and xfer.received("BYE")
    assert r2.received("BYE") and len(r2.received("INVITE")) == 1  # the transferor: released, never moved
    assert len(res.received("INVITE")) == 1 and len(r3.received("INVITE")) == 2  # each moved once


async def test_park_and_retrieve_a_call_moved_off_rtpengine(tmp_path, rtpe):  # noqa: F811
    async with RtpeNode(tmp_path, rtpe, peers=3) as h:
        a, x, c = h.peers
        t = await tenant_with(h.pbx, "1002", "1003")
        await feature_objects.save(h.pbx.config, t.id, "park", "700", {"first": "701", "count": 3, "timeout": 30})
        await h.phone(t, "1002", "uas_answer_refer_reinvites.xml", keys=rtp_keys(x, refer_to=f"700@{DOMAIN}"))
        caller = h.dial("1002", "uac_call_rtp_reinvites.xml", keys=rtp_keys(a, talk_ms=3000))
        await caller.start()
        call = await answered(h.node, "1002")
        assert await until(lambda: bool(getattr(h.node.service, "parking", None) and h.node.service.parking.slots))
        parked_on, listed = call.media.where, await rtpe_sessions(h.ng)
        retriever = h.dial("701", "uac_call_remote_bye_rtp.xml", "retriever", user="1003", keys=rtp_keys(c))
        await retriever.start()
        assert await until(lambda: call.plan.callee == "1003"), "not retrieved"
        to_a, to_c = relay_ends(call)
        heard_by_c, heard_by_a = await talk(a, to_a, c, to_c)
        res = await caller.wait()
        rres = await retriever.wait()
        assert await h.pbx.wait_idle()
    (r2,) = h.results
    res.assert_ok()
    rres.assert_ok()
    print(f"park: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert parked_on == "local" and listed == []
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE")
    assert len(res.received("INVITE")) == 1


async def test_pickup_of_a_call_ringing_through_rtpengine(tmp_path, rtpe):  # noqa: F811
    from node.pbx import feature_codes

    async with RtpeNode(tmp_path, rtpe, peers=2) as h:
        a, c = h.peers
        t = await tenant_with(h.pbx, "1002", "1003")
        h.cleanups.append(lambda: h.pbx.locations.remove_all(t.id, "1002"))
        await feature_codes.save(h.pbx.config, t.id, "**", {"action": "directed_pickup"})
        await h.phone(t, "1002", "uas_noanswer.xml")
        caller = h.dial("1002", "uac_call_remote_bye_rtp.xml", keys=rtp_keys(a))
        await caller.start()
        calls = h.node.service.calls
        assert await until(lambda: any(cl.state.value == "ringing" and any(leg.provisional for leg in cl.legs)
                                       for cl in calls.values())), "the call never rang 1002"
        call = next(iter(calls.values()))
        ringing_on, ng_id = call.media.where, call.media.ng_call_id
        before = await rtpe_sessions(h.ng)
        picker = h.dial("**1002", "uac_call_rtp_reinvites.xml", "picker", user="1003", keys=rtp_keys(c, talk_ms=1800))
        await picker.start()
        assert await until(lambda: call.state.value == "answered" and call.plan.callee == "1003"), "not picked up"
        after = await rtpe_sessions(h.ng)
        to_a, to_c = relay_ends(call)
        heard_by_c, heard_by_a = await talk(a, to_a, c, to_c)
        pres = await picker.wait()
        res = await caller.wait()
        assert await h.pbx.wait_idle()
    (r2,) = h.results
    pres.assert_ok()
    res.assert_ok()
    print(f"pickup: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert ringing_on == "rtpengine" and before == [ng_id] and after == []
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    assert r2.received("CANCEL")
    # the caller's 200 names the node's relay (the ringing phone had rtpengine's port)
    assert sdp_port(res.received(200)[-1].body) == to_a[1]


async def test_semi_attended_transfer_of_calls_rtpengine_relays(tmp_path, rtpe):  # noqa: F811
    """The transferee's call moves to the node's relay before the REFER is carried out; the
    target, rung by a consultation call rtpengine relays, is re-INVITEd onto the transferee's
    relay leg once it answers; both rtpengine sessions are then gone."""
    from tests.interop.pbx._calls import answered_call_with, ringing_consultation

    done = reanchor.REANCHORS.labels("done")._value.get()
    async with RtpeNode(tmp_path, rtpe, peers=3) as h:
        a, x, c = h.peers
        t = await tenant_with(h.pbx, "1002", "1003")
        await h.phone(t, "1003", "uas_ring_answer_reinvite_hangup.xml", keys=rtp_keys(c),
                      variables={"ring_ms": 2500, "hangup_ms": 1800})
        consult = h.dial("1003", "uac_call_expect_error.xml", "consult", user="1002", variables={"expected": 487})
        await consult.start()
        _, did = await ringing_consultation(h.pbx, "1003")
        await h.phone(t, "1002", "uas_answer_refer_reinvites.xml",
                      keys=rtp_keys(x, refer_to=f"1003@{DOMAIN}?Replaces={quote(did, safe='')}"))
        caller = h.dial("1002", "uac_call_rtp_reinvites.xml", keys=rtp_keys(a, talk_ms=8000))
        await caller.start()
        call = await answered_call_with(h.pbx, "1003")
        assert await until(lambda: reanchor.REANCHORS.labels("done")._value.get() >= done + 2), "target not moved"
        listed = await rtpe_sessions(h.ng)
        to_a, to_c = relay_ends(call)
        heard_by_c, heard_by_a = await talk(a, to_a, c, to_c)
        res = await caller.wait()
        cres = await consult.wait()
        assert await h.pbx.wait_idle()
    r3, r2 = h.results
    res.assert_ok()
    cres.assert_ok()  # the consultation INVITE got 487: its early dialog was replaced
    print(f"semi-attended: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert listed == [] and heard_by_c > 0.5 and heard_by_a > 0.5
    invites = r3.received("INVITE")
    assert len(invites) == 2 and sdp_port(invites[1].body) == to_c[1], r3.describe()  # kept its fork, then moved
    assert [m.body.strip() for m in r2.received("NOTIFY")][-1] == "SIP/2.0 200 OK" and r2.received("BYE")
    assert len(res.received("INVITE")) == 1  # the transferee moved once


async def test_held_transferee_stays_held_while_moved_then_is_resumed(tmp_path, rtpe):  # noqa: F811
    """Desk phones hold before they transfer: on rtpengine the hold plays rtpengine's music;
    the move offers the transferee the holder's a=sendonly (it stays held, the node plays
    the music now), and the target's answer resumes it (a=sendrecv, same relay port)."""
    async with RtpeNode(tmp_path, rtpe, peers=3) as h:
        a, x, c = h.peers
        t = await tenant_with(h.pbx, "1002", "1003")
        await h.phone(t, "1002", "uas_answer_hold_refer_reinvites.xml", keys=rtp_keys(x, refer_to=f"1003@{DOMAIN}"))
        await h.phone(t, "1003", "uas_hold_media.xml", keys=rtp_keys(c))
        caller = h.dial("1002", "uac_call_rtp_reinvites.xml", keys=rtp_keys(a, talk_ms=2000))
        await caller.start()
        call = await answered(h.node, "1002")
        assert await until(lambda: call.plan.callee == "1003" and call.media.where == "local"), "not transferred"
        listed = await rtpe_sessions(h.ng)
        await asyncio.sleep(0.3)  # the resume re-INVITE
        to_a, to_c = relay_ends(call)
        heard_by_c, heard_by_a = await talk(a, to_a, c, to_c)
        res = await caller.wait()
        assert await h.pbx.wait_idle()
    r2, r3 = h.results
    res.assert_ok()
    print(f"held transferee: hears the target {heard_by_a:.3f}, the target hears it {heard_by_c:.3f}")
    assert listed == [] and heard_by_c > 0.5 and heard_by_a > 0.5
    hold_, move, resume = res.received("INVITE")
    assert "a=sendonly" in hold_.body and "a=sendonly" in move.body, res.describe()  # held while moved
    assert "a=sendrecv" in resume.body and sdp_port(move.body) == sdp_port(resume.body) == to_a[1]
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE")


async def test_invite_with_replaces_of_a_call_rtpengine_relays(tmp_path, rtpe):  # noqa: F811
    """1003 takes 1002's place: only 1001 (who stays) is moved to the node's relay, then 1002
    is released and 1003 answered at the relay leg facing it."""
    async with RtpeNode(tmp_path, rtpe, peers=1) as h:
        (a,) = h.peers
        t = await tenant_with(h.pbx, "1002", "1003")
        await h.phone(t, "1002", "uas_answer.xml")
        caller = h.dial("1002", "uac_call_rtp_reinvites.xml", keys=rtp_keys(a, talk_ms=8000))
        await caller.start()
        call = await answered(h.node, "1002")
        taker = await h.dial("1002", "uac_call_replaces.xml", "taker", user="1003", duration_ms=800,
                             keys={"replaces": replaces_of(call.answered_leg.dialog)}).run()
        listed = await rtpe_sessions(h.ng)
        relay_a = call.media.session.leg("a").local_port if call.media.session is not None else None
        res = await caller.wait()
        assert await h.pbx.wait_idle()
    (r2,) = h.results
    taker.assert_ok()
    res.assert_ok()
    assert listed == [] and call.media.where == "local"
    (move,) = res.received("INVITE")
    assert sdp_port(move.body) == relay_a
    assert sdp_port(taker.received(200)[0].body) == call.media.session.leg("b").local_port
    assert r2.received("BYE") and len(r2.received("INVITE")) == 1  # released, never moved
