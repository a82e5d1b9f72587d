"""Transfer and park on calls whose media a real rtpengine relays (media_relay = "rtpengine"):
the node re-INVITEs the parties onto its own relay first (node/pbx/reanchor.py), deletes
the rtpengine session, then runs the feature as on a local call. SIPp phones whose RTP is
the test's own (RtpPeer) prove the audio after the feature; a party refusing the re-INVITE
leaves the call on rtpengine, talking, and the transferor gets the failure NOTIFY."""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import quote

import pytest

from node.pbx import feature_objects, outgoing, reanchor
from tests.interop.conftest import RunningNode
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, stop_all, tenant_with
from tests.interop.pbx.test_media_rtpengine_sipp import _node, rtpe  # noqa: F401  (the fixture)
from tests.peers.rtp_peer import RtpPeer, tone_level
from tests.waiting import until

pytestmark = pytest.mark.interop

LOOP = "127.0.0.1"


def _rtp(peer: RtpPeer, **more) -> dict:
    return {"rtp_ip": LOOP, "rtp_port": peer.port, **more}


def _port(body: str) -> int:
    m = re.search(r"^m=audio (\d+)", body, re.M)
    assert m, body
    return int(m.group(1))


async def _answered(node, callee: str):
    calls = node.service.calls
    found = []

    def pick():
        found[:] = [c for c in calls.values() if c.plan.callee == callee and c.state.value == "answered"]
        return found

    assert await until(pick), f"no answered call to {callee}"
    return found[0]


async def _listed(ng) -> list[str]:
    return list((await ng.command("list"))["calls"])


async def _talk(a: RtpPeer, to_a, c: RtpPeer, to_c, seconds: float = 1.0) -> tuple[float, float]:
    """a sends 700 Hz towards its relay port, c 1100 Hz towards its own: (what c heard of
    700 Hz, what a heard of 1100 Hz)."""
    t0 = time.monotonic()
    await asyncio.gather(a.send_tone(to_a, 700.0, seconds), c.send_tone(to_c, 1100.0, seconds))
    t1 = time.monotonic()
    return tone_level(c.audio(t0 + 0.2, t1), 700.0), tone_level(a.audio(t0 + 0.2, t1), 1100.0)


async def test_blind_transfer_moves_the_call_to_the_node_relay(tmp_path, rtpe):  # noqa: F811
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a, x, c = await RtpPeer.open(), await RtpPeer.open(), await RtpPeer.open()
    phones = []
    done = reanchor.REANCHORS.labels("done")._value.get()
    try:
        t = await tenant_with(pbx, "1002", "1003")
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                                  keys=_rtp(x, refer_to=f"1003@{DOMAIN}")))
        phones.append(await phone(pbx, tmp_path, t, "1003", "uas_hold_media.xml", keys=_rtp(c)))
        caller = dial(pbx, tmp_path, "1002", "uac_call_rtp_reinvites.xml", keys=_rtp(a, talk_ms=2500))
        await caller.start()
        call = await _answered(node, "1002")
        ng_id = call.media.ng_call_id
        before = await _listed(ng)
        assert await until(lambda: call.plan.callee == "1003" and call.media.where == "local"), "not transferred"
        after = await _listed(ng)
        session = call.media.session
        to_a, to_c = (LOOP, session.leg("a").local_port), (LOOP, session.leg("b").local_port)
        heard_by_c, heard_by_a = await _talk(a, to_a, c, to_c)
        res = await caller.wait()
        assert await pbx.wait_idle()
        cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda cdr: cdr.start)
    finally:
        for p in (a, x, c):
            p.close()
        r2, r3 = await stop_all(*phones) if len(phones) == 2 else (None, None)
        await node.__aexit__(None, None, None)
    res.assert_ok()
    print(f"transferee hears the target {heard_by_a:.3f}, the target hears the transferee {heard_by_c:.3f}")
    assert before == [ng_id] and after == [], (before, after)  # the session was deleted
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    moved = res.received("INVITE")
    assert len(moved) == 1 and _port(moved[0].body) == to_a[1], res.describe()  # one re-INVITE, to the relay
    assert node.cfg.rtp_port_min <= to_a[1] <= node.cfg.rtp_port_max
    assert len(r2.received("INVITE")) == 2, r2.describe()  # the call, then its move
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE")
    assert len(r3.received("INVITE")) == 1
    assert [(cdr.caller, cdr.callee, cdr.hangup_cause) for cdr in cdrs] == [
        ("1001", "1002", "blind-transfer"), ("1001", "1003", "caller-bye")]
    assert reanchor.REANCHORS.labels("done")._value.get() == done + 1


async def test_refused_move_keeps_the_call_on_rtpengine_and_fails_the_transfer(tmp_path, rtpe):  # noqa: F811
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a, x = await RtpPeer.open(), await RtpPeer.open()
    phones = []
    failed = outgoing.FEATURE_EVENTS.labels("blind_transfer", "failed")._value.get()
    refused = reanchor.REANCHORS.labels("refused")._value.get()
    try:
        t = await tenant_with(pbx, "1002", "1003")
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites_fail.xml",
                                  keys=_rtp(x, refer_to=f"1003@{DOMAIN}")))
        phones.append(await phone(pbx, tmp_path, t, "1003", "uas_answer.xml"))
        caller = dial(pbx, tmp_path, "1002", "uac_call_rtp_refuse_reinvites.xml", keys=_rtp(a, talk_ms=15000))
        await caller.start()
        call = await _answered(node, "1002")
        anchor = call.media
        assert await until(
            lambda: outgoing.FEATURE_EVENTS.labels("blind_transfer", "failed")._value.get() > failed), "no failure"
        where, listed = call.media.where, await _listed(ng)
        heard_by_x, heard_by_a = await _talk(a, anchor.sent_to["a"], x, anchor.sent_to["b"], 0.8)
        res = await caller.wait()  # the transferor hangs up: the node's BYE ends the caller
        assert await pbx.wait_idle()
        final = await _listed(ng)
    finally:
        for p in (a, x):
            p.close()
        r2, r3 = await stop_all(*phones) if len(phones) == 2 else (None, None)
        await node.__aexit__(None, None, None)
    res.assert_ok()
    print(f"after the refused move: 1002 hears 1001 {heard_by_x:.3f}, 1001 hears 1002 {heard_by_a:.3f}")
    assert where == "rtpengine" and listed == [anchor.ng_call_id]
    assert heard_by_x > 0.5 and heard_by_a > 0.5  # still talking through rtpengine
    last = r2.received("NOTIFY")[-1]
    assert last.body.startswith("SIP/2.0 488") and "terminated" in last.header("Subscription-State"), r2.describe()
    reinvites = r2.received("INVITE")[1:]
    assert len(reinvites) == 2, r2.describe()  # moved to the node's relay, then back to rtpengine
    assert _port(reinvites[1].body) == anchor.sent_to["b"][1]
    assert len(res.received("INVITE")) == 1 and res.sent(488)
    assert r3.received("INVITE") == []  # the target was never rung
    assert reanchor.REANCHORS.labels("refused")._value.get() == refused + 1
    assert final == []


async def test_attended_transfer_joins_calls_moved_off_rtpengine(tmp_path, rtpe):  # noqa: F811
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a, c = await RtpPeer.open(), await RtpPeer.open()
    phones = []
    try:
        t = await tenant_with(pbx, "1002", "1003")
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_answer.xml"))
        phones.append(await phone(pbx, tmp_path, t, "1003", "uas_hold_media.xml", keys=_rtp(c)))
        caller = dial(pbx, tmp_path, "1002", "uac_call_rtp_reinvites.xml", keys=_rtp(a, talk_ms=4000))
        await caller.start()
        call1 = await _answered(node, "1002")
        d = call1.answered_leg.dialog
        replaces = f"{d.call_id};to-tag={d.remote_tag};from-tag={d.local_tag}"
        xfer = await dial(pbx, tmp_path, "1003", "uac_call_refer.xml", "transferor", user="1002", duration_ms=300,
                          keys={"refer_to": f"1001@{DOMAIN}?Replaces={quote(replaces, safe='')}"}).run()
        joined = await _answered(node, "1001")  # 1003 (the REFER's far end) now "calls" 1001
        listed = await _listed(ng)
        # the REFER's call (1002 → 1003) survives: its b leg faces 1003; the absorbed call's
        # a leg faces 1001 (node/pbx/replaces.py ``join``)
        main, absorbed = joined.media._main, joined.media._absorbed
        to_a, to_c = (LOOP, absorbed.session.leg("a").local_port), (LOOP, main.session.leg("b").local_port)
        heard_by_c, heard_by_a = await _talk(a, to_a, c, to_c)
        res = await caller.wait()
        assert await pbx.wait_idle()
    finally:
        for p in (a, c):
            p.close()
        r2, r3 = await stop_all(*phones) if len(phones) == 2 else (None, None)
        await node.__aexit__(None, None, None)
    xfer.assert_ok()
    res.assert_ok()
    print(f"attended: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert main.where == absorbed.where == "local" and listed == []  # both sessions deleted
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    assert xfer.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and xfer.received("BYE")
    assert r2.received("BYE") and len(r2.received("INVITE")) == 1  # the transferor: released, never moved
    assert len(res.received("INVITE")) == 1 and len(r3.received("INVITE")) == 2  # each moved once


async def test_park_and_retrieve_a_call_moved_off_rtpengine(tmp_path, rtpe):  # noqa: F811
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a, x, c = await RtpPeer.open(), await RtpPeer.open(), await RtpPeer.open()
    phones = []
    try:
        t = await tenant_with(pbx, "1002", "1003")
        await feature_objects.save(pbx.config, t.id, "park", "700", {"first": "701", "count": 3, "timeout": 30})
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                                  keys=_rtp(x, refer_to=f"700@{DOMAIN}")))
        caller = dial(pbx, tmp_path, "1002", "uac_call_rtp_reinvites.xml", keys=_rtp(a, talk_ms=3000))
        await caller.start()
        call = await _answered(node, "1002")
        assert await until(lambda: bool(getattr(node.service, "parking", None) and node.service.parking.slots))
        parked_on, listed = call.media.where, await _listed(ng)
        retriever = dial(pbx, tmp_path, "701", "uac_call_remote_bye_rtp.xml", "retriever", user="1003",
                         keys=_rtp(c))
        await retriever.start()
        assert await until(lambda: call.plan.callee == "1003"), "not retrieved"
        session = call.media.session
        to_a, to_c = (LOOP, session.leg("a").local_port), (LOOP, session.leg("b").local_port)
        heard_by_c, heard_by_a = await _talk(a, to_a, c, to_c)
        res = await caller.wait()
        rres = await retriever.wait()
        assert await pbx.wait_idle()
    finally:
        for p in (a, x, c):
            p.close()
        (r2,) = await stop_all(*phones)
        await node.__aexit__(None, None, None)
    res.assert_ok()
    rres.assert_ok()
    print(f"park: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert parked_on == "local" and listed == []
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE")
    assert len(res.received("INVITE")) == 1


async def test_pickup_of_a_call_ringing_through_rtpengine(tmp_path, rtpe):  # noqa: F811
    from node.pbx import feature_codes

    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a, c = await RtpPeer.open(), await RtpPeer.open()
    phones = []
    try:
        t = await tenant_with(pbx, "1002", "1003")
        await feature_codes.save(pbx.config, t.id, "**", {"action": "directed_pickup"})
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_noanswer.xml"))
        caller = dial(pbx, tmp_path, "1002", "uac_call_remote_bye_rtp.xml", keys=_rtp(a))
        await caller.start()
        calls = node.service.calls
        assert await until(lambda: any(cl.state.value == "ringing" and any(leg.provisional for leg in cl.legs)
                                       for cl in calls.values())), "the call never rang 1002"
        call = next(iter(calls.values()))
        ringing_on, ng_id = call.media.where, call.media.ng_call_id
        before = await _listed(ng)
        picker = dial(pbx, tmp_path, "**1002", "uac_call_rtp_reinvites.xml", "picker", user="1003",
                      keys=_rtp(c, talk_ms=1800))
        await picker.start()
        assert await until(lambda: call.state.value == "answered" and call.plan.callee == "1003"), "not picked up"
        after = await _listed(ng)
        session = call.media.session
        to_a, to_c = (LOOP, session.leg("a").local_port), (LOOP, session.leg("b").local_port)
        heard_by_c, heard_by_a = await _talk(a, to_a, c, to_c)
        pres = await picker.wait()
        res = await caller.wait()
        assert await pbx.wait_idle()
    finally:
        for p in (a, c):
            p.close()
        (r2,) = await stop_all(*phones)
        await pbx.locations.remove_all(t.id, "1002")
        await node.__aexit__(None, None, None)
    pres.assert_ok()
    res.assert_ok()
    print(f"pickup: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert ringing_on == "rtpengine" and before == [ng_id] and after == []
    assert heard_by_c > 0.5 and heard_by_a > 0.5
    assert r2.received("CANCEL")
    # the caller's 200 names the node's relay (the ringing phone had rtpengine's port)
    assert _port(res.received(200)[-1].body) == to_a[1]


async def test_semi_attended_transfer_of_calls_rtpengine_relays(tmp_path, rtpe):  # noqa: F811
    """The transferee's call moves to the node's relay before the REFER is carried out; the
    target, rung by a consultation call rtpengine relays, is re-INVITEd onto the transferee's
    relay leg once it answers; both rtpengine sessions are then gone."""
    from tests.interop.pbx.test_transfer_semi_attended_sipp import _answered_call_with, _ringing_consultation

    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a, x, c = await RtpPeer.open(), await RtpPeer.open(), await RtpPeer.open()
    phones = []
    done = reanchor.REANCHORS.labels("done")._value.get()
    try:
        t = await tenant_with(pbx, "1002", "1003")
        phones.append(await phone(pbx, tmp_path, t, "1003", "uas_ring_answer_reinvite_hangup.xml", keys=_rtp(c),
                                  variables={"ring_ms": 2500, "hangup_ms": 1800}))
        consult = dial(pbx, tmp_path, "1003", "uac_call_expect_error.xml", "consult", user="1002",
                       variables={"expected": 487})
        await consult.start()
        _, did = await _ringing_consultation(pbx, "1003")
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                                  keys=_rtp(x, refer_to=f"1003@{DOMAIN}?Replaces={quote(did, safe='')}")))
        caller = dial(pbx, tmp_path, "1002", "uac_call_rtp_reinvites.xml", keys=_rtp(a, talk_ms=8000))
        await caller.start()
        call = await _answered_call_with(pbx, "1003")
        assert await until(lambda: reanchor.REANCHORS.labels("done")._value.get() >= done + 2), "target not moved"
        listed = await _listed(ng)
        session = call.media.session
        to_a, to_c = (LOOP, session.leg("a").local_port), (LOOP, session.leg("b").local_port)
        heard_by_c, heard_by_a = await _talk(a, to_a, c, to_c)
        res = await caller.wait()
        cres = await consult.wait()
        assert await pbx.wait_idle()
    finally:
        for p in (a, x, c):
            p.close()
        r3, r2 = await stop_all(*phones) if len(phones) == 2 else (None, None)
        await node.__aexit__(None, None, None)
    res.assert_ok()
    cres.assert_ok()  # the consultation INVITE got 487: its early dialog was replaced
    print(f"semi-attended: 1001 hears 1003 {heard_by_a:.3f}, 1003 hears 1001 {heard_by_c:.3f}")
    assert listed == [] and heard_by_c > 0.5 and heard_by_a > 0.5
    invites = r3.received("INVITE")
    assert len(invites) == 2 and _port(invites[1].body) == to_c[1], r3.describe()  # kept its fork, then moved
    assert [m.body.strip() for m in r2.received("NOTIFY")][-1] == "SIP/2.0 200 OK" and r2.received("BYE")
    assert len(res.received("INVITE")) == 1  # the transferee moved once


async def test_held_transferee_stays_held_while_moved_then_is_resumed(tmp_path, rtpe):  # noqa: F811
    """Desk phones hold before they transfer: on rtpengine the hold plays rtpengine's music;
    the move offers the transferee the holder's a=sendonly (it stays held, the node plays
    the music now), and the target's answer resumes it (a=sendrecv, same relay port)."""
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a, x, c = await RtpPeer.open(), await RtpPeer.open(), await RtpPeer.open()
    phones = []
    try:
        t = await tenant_with(pbx, "1002", "1003")
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_answer_hold_refer_reinvites.xml",
                                  keys=_rtp(x, refer_to=f"1003@{DOMAIN}")))
        phones.append(await phone(pbx, tmp_path, t, "1003", "uas_hold_media.xml", keys=_rtp(c)))
        caller = dial(pbx, tmp_path, "1002", "uac_call_rtp_reinvites.xml", keys=_rtp(a, talk_ms=2000))
        await caller.start()
        call = await _answered(node, "1002")
        assert await until(lambda: call.plan.callee == "1003" and call.media.where == "local"), "not transferred"
        listed = await _listed(ng)
        await asyncio.sleep(0.3)  # the resume re-INVITE
        session = call.media.session
        to_a, to_c = (LOOP, session.leg("a").local_port), (LOOP, session.leg("b").local_port)
        heard_by_c, heard_by_a = await _talk(a, to_a, c, to_c)
        res = await caller.wait()
        assert await pbx.wait_idle()
    finally:
        for p in (a, x, c):
            p.close()
        r2, r3 = await stop_all(*phones) if len(phones) == 2 else (None, None)
        await node.__aexit__(None, None, None)
    res.assert_ok()
    print(f"held transferee: hears the target {heard_by_a:.3f}, the target hears it {heard_by_c:.3f}")
    assert listed == [] and heard_by_c > 0.5 and heard_by_a > 0.5
    hold_, move, resume = res.received("INVITE")
    assert "a=sendonly" in hold_.body and "a=sendonly" in move.body, res.describe()  # held while moved
    assert "a=sendrecv" in resume.body and _port(move.body) == _port(resume.body) == to_a[1]
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE")


async def test_invite_with_replaces_of_a_call_rtpengine_relays(tmp_path, rtpe):  # noqa: F811
    """1003 takes 1002's place: only 1001 (who stays) is moved to the node's relay, then 1002
    is released and 1003 answered at the relay leg facing it."""
    engine, ng = rtpe
    node = await _node(tmp_path, engine.address)
    pbx = RunningNode(node, node.test_port)
    a = await RtpPeer.open()
    phones = []
    try:
        t = await tenant_with(pbx, "1002", "1003")
        phones.append(await phone(pbx, tmp_path, t, "1002", "uas_answer.xml"))
        caller = dial(pbx, tmp_path, "1002", "uac_call_rtp_reinvites.xml", keys=_rtp(a, talk_ms=8000))
        await caller.start()
        call = await _answered(node, "1002")
        d = call.answered_leg.dialog
        taker = await dial(pbx, tmp_path, "1002", "uac_call_replaces.xml", "taker", user="1003", duration_ms=800,
                           keys={"replaces": f"{d.call_id};to-tag={d.remote_tag};from-tag={d.local_tag}"}).run()
        listed = await _listed(ng)
        relay_a = call.media.session.leg("a").local_port if call.media.session is not None else None
        res = await caller.wait()
        assert await pbx.wait_idle()
    finally:
        a.close()
        (r2,) = await stop_all(*phones) if phones else (None,)
        await node.__aexit__(None, None, None)
    taker.assert_ok()
    res.assert_ok()
    assert listed == [] and call.media.where == "local"
    (move,) = res.received("INVITE")
    assert _port(move.body) == relay_a
    assert _port(taker.received(200)[0].body) == call.media.session.leg("b").local_port
    assert r2.received("BYE") and len(r2.received("INVITE")) == 1  # released, never moved
