"""Call park of a call the node answered itself (node/pbx/app_call.py), with SIPp phones
whose RTP is the test's own: 1001 calls the IVR 800, presses 2 and is bridged to the
receptionist 1002, who blind-transfers it to the park lot 700. The caller hears the
tenant's music on hold from its own endpoint; 1003 dials the slot and talks to the caller
(tones both ways); an unretrieved call rings the parker again after the park timeout. The
other way round, the caller parks the receptionist it was put through to."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.pbx import ivr, park
from tests.interop.pbx._calls import MENU, NO_INPUT_MENU, RTP, app_call, free_rtp_port, ivr_caller, moh_correlation
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, pw, stop_all, tenant_with
from tests.peers.rtp_peer import RtpPeer, node_media_of, rms, tone_level
from tests.peers.sipp import Sipp
from tests.waiting import until

pytestmark = pytest.mark.interop


def _parked(pbx, key) -> bool:
    slots = getattr(pbx.node.service, "parking", None)
    return slots is not None and list(slots.slots) == [key]


async def _retrieved(pbx, t, *cdrs: tuple[str, str, str]) -> None:
    """The CDRs (caller, callee, hangup cause) in order: the pair that parked, the parked
    period, the retriever's pair; then no slot, call or media port is left."""
    got = sorted(await pbx.wait_cdrs(t.id, len(cdrs)), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in got] == list(cdrs)
    assert not pbx.node.service.parking.slots
    assert await pbx.wait_idle()
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints


async def test_receptionist_parks_ivr_caller_and_another_phone_retrieves(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await ivr.put(pbx.config, t.id, "800", MENU)
    await park.save(pbx.config, t.id, "700", {"first": "701", "count": 3, "timeout": 30})
    a, b, c = await RtpPeer.open(), await RtpPeer.open(), await RtpPeer.open()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                     keys=dict(RTP, rtp_port=b.port, refer_to=f"700@{DOMAIN}"))
    try:
        run, dest_a = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 9000})
        assert await until(lambda: _parked(pbx, (t.id, "701")), timeout=10), "the caller was not parked in 701"
        call = app_call(pbx)
        assert call is not None and call.b_ep is None and call.answered_leg is None
        parked_at = time.monotonic()
        await asyncio.sleep(1.6)  # the caller listens to the music on hold
        during = a.audio(parked_at + 0.3)
        empty = await dial(pbx, tmp_path, "702", "uac_call_expect_error.xml", "empty", user="1003",
                           variables={"expected": 404}).run()
        retrieve = asyncio.create_task(dial(pbx, tmp_path, "701", "uac_media_call.xml", "retriever", user="1003",
                                            keys=dict(RTP, rtp_port=c.port, formats="0 101", hold_ms=2600)).run())
        dest_c = await node_media_of(pbx, c)  # the new endpoint of the application call facing 1003
        assert await until(lambda: call.b_ep is not None and call.ep.peer is call.b_ep, timeout=5)
        start = time.monotonic()
        await asyncio.gather(a.send_tone(dest_a, 700.0, 1.6), c.send_tone(dest_c, 1200.0, 1.6))
        heard_by_c, heard_by_a = c.audio(start + 0.3), a.audio(start + 0.3)
        b_after = b.audio(parked_at + 0.3)
        rres = await asyncio.wait_for(retrieve, 30)
        cres = await asyncio.wait_for(run, 30)
    finally:
        (r2,) = await stop_all(p2)
        for p in (a, b, c):
            p.close()
    rres.assert_ok()
    cres.assert_ok()
    empty.assert_ok()
    assert "nothing parked in slot 702" in empty.received(404)[0].first_line
    corr = moh_correlation(pbx, during)
    print(f"parked caller: music rms {rms(during):.0f} correlation {corr:.3f}; 1003 hears 700 Hz share "
          f"{tone_level(heard_by_c, 700):.2f}; 1001 hears 1200 Hz share {tone_level(heard_by_a, 1200):.2f}")
    assert len(during) > 1.0 * 8000 and rms(during) > 300 and corr > 0.8, "the parked caller did not hear the music"
    assert len(heard_by_c) > 1.0 * 8000 and tone_level(heard_by_c, 700.0) > 0.5
    assert len(heard_by_a) > 1.0 * 8000 and tone_level(heard_by_a, 1200.0) > 0.5
    assert len(b_after) == 0, "the parker still gets audio"
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE"), r2.describe()
    assert rres.received("BYE") or rres.sent("BYE")
    await _retrieved(pbx, t, ("1001", "800", "parked"), ("1001", "701", "retrieved-by-1003"),
                     ("1001", "1003", "callee-bye"))


async def test_caller_parks_the_party_it_was_put_through_to(pbx, tmp_path):
    """Side a parks side b: 1001 reaches 1002 through the IVR 801 (no key: no_input goes
    there) and blind-transfers it to the park lot 700. 1001 is released; 1002 hears the
    music from its own endpoint, which keeps its port; 1003 dials the slot and talks to 1002
    (tones both ways)."""
    t = await tenant_with(pbx, "1002", "1003")
    await ivr.put(pbx.config, t.id, "801", NO_INPUT_MENU)
    await park.save(pbx.config, t.id, "700", {"first": "701", "count": 3, "timeout": 30})
    b, c = await RtpPeer.open(), await RtpPeer.open()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_hold_media.xml", keys=dict(RTP, rtp_port=b.port))
    try:
        parker = asyncio.create_task(dial(pbx, tmp_path, "801", "uac_call_refer.xml", "parker", duration_ms=1500,
                                          keys={"refer_to": f"700@{DOMAIN}"}).run())
        dest_b = await node_media_of(pbx, b)  # the endpoint facing 1002, before and after the park
        assert await until(lambda: _parked(pbx, (t.id, "701")), timeout=10), "1002 was not parked in 701"
        call = app_call(pbx)
        assert call is not None and call.b_ep is None and call.answered_leg is None
        assert call.ep is not None and call.ep.local_port == dest_b[1]  # 1002 waits on side a, same port
        pres = await asyncio.wait_for(parker, 30)
        parked_at = time.monotonic()
        await asyncio.sleep(1.4)  # 1002 listens to the music on hold
        during = b.audio(parked_at + 0.2)
        retrieve = asyncio.create_task(dial(pbx, tmp_path, "701", "uac_media_call.xml", "retriever", user="1003",
                                            keys=dict(RTP, rtp_port=c.port, formats="0 101", hold_ms=2600)).run())
        dest_c = await node_media_of(pbx, c)
        assert await until(lambda: call.b_ep is not None and call.ep.peer is call.b_ep, timeout=5)
        start = time.monotonic()
        await asyncio.gather(b.send_tone(dest_b, 700.0, 1.6), c.send_tone(dest_c, 1200.0, 1.6))
        heard_by_c, heard_by_b = c.audio(start + 0.3), b.audio(start + 0.3)
        rres = await asyncio.wait_for(retrieve, 30)
    finally:
        (r2,) = await stop_all(p2)
        for p in (b, c):
            p.close()
    pres.assert_ok()
    rres.assert_ok()
    corr = moh_correlation(pbx, during)
    print(f"parked 1002: music rms {rms(during):.0f} correlation {corr:.3f}; 1003 hears 700 Hz share "
          f"{tone_level(heard_by_c, 700):.2f}; 1002 hears 1200 Hz share {tone_level(heard_by_b, 1200):.2f}")
    assert len(during) > 0.8 * 8000 and rms(during) > 300 and corr > 0.8, "the parked party did not hear the music"
    assert len(heard_by_c) > 1.0 * 8000 and tone_level(heard_by_c, 700.0) > 0.5
    assert len(heard_by_b) > 1.0 * 8000 and tone_level(heard_by_b, 1200.0) > 0.5
    notifies = [n.body.strip() for n in pres.received("NOTIFY")]
    assert notifies[-1] == "SIP/2.0 200 OK" and pres.received("BYE"), pres.describe()  # the parker released
    assert len(r2.received("INVITE")) == 1, r2.describe()  # 1002 was never re-INVITEd
    assert r2.received("BYE"), "the retriever's hang-up did not reach 1002"
    await _retrieved(pbx, t, ("1001", "801", "parked"), ("1002", "701", "retrieved-by-1003"),
                     ("1002", "1003", "callee-bye"))


async def test_caller_parks_the_party_then_is_recalled(pbx, tmp_path):
    """Side a parks side b and nobody retrieves: after the park timeout (3 s) the caller's
    extension 1001 is rung, presenting the parked 1002, and answering puts the two together
    again (1001 hangs up 1.5 s later)."""
    t = await tenant_with(pbx, "1002")
    await ivr.put(pbx.config, t.id, "801", NO_INPUT_MENU)
    await park.save(pbx.config, t.id, "700", {"first": "701", "count": 1, "timeout": 3})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_hold_media.xml", keys=dict(RTP, rtp_port=free_rtp_port()))
    p1 = await phone(pbx, tmp_path, t, "1001", "uas_answer_hangup.xml", variables={"hangup_ms": 1500})
    try:
        pres = await dial(pbx, tmp_path, "801", "uac_call_refer.xml", "parker", duration_ms=1500,
                          keys={"refer_to": f"700@{DOMAIN}"}).run()
        assert await until(lambda: not pbx.node.service.parking.slots, timeout=10), "never recalled"
        assert await pbx.wait_idle(timeout=15)
    finally:
        r2, r1 = await stop_all(p2, p1)
    pres.assert_ok()
    assert pres.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and pres.received("BYE")
    (recall,) = r1.received("INVITE")
    assert "sip:1002@alpha.example" in recall.header("From"), r1.describe()
    assert len(r2.received("INVITE")) == 1 and r2.received("BYE"), r2.describe()
    cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
        ("1001", "801", "parked"), ("1002", "701", "park-timeout"), ("1002", "1001", "callee-bye")]
    assert cdrs[2].start - cdrs[1].start >= 2.9
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints


@pytest.mark.parametrize("answers", [True, False], ids=["answered", "unanswered"])
async def test_park_timeout_rings_the_receptionist_again(pbx, tmp_path, answers):
    """Nobody retrieves: after the park timeout (3 s) the parker 1002 is rung from a new
    endpoint, as from the caller; it answers and later hangs up, or does not answer within
    the ring timeout (2 s) and the caller is hung up (``park-timeout``). 1002's phone is
    swapped for one that does not REFER, on the same port (SIPp reuses a REFER's branch)."""
    t = await tenant_with(pbx, "1002", ring_timeout=2)
    await ivr.put(pbx.config, t.id, "800", MENU)
    await park.save(pbx.config, t.id, "700", {"first": "701", "count": 1, "timeout": 3})
    a, b = await RtpPeer.open(), await RtpPeer.open()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_reinvites.xml",
                     keys=dict(RTP, rtp_port=b.port, refer_to=f"700@{DOMAIN}"))
    again = None
    try:
        run, _ = await ivr_caller(pbx, tmp_path, a, keys={"hold_ms": 20000})
        assert await until(lambda: _parked(pbx, (t.id, "701")), timeout=10), "the caller was not parked"
        parked_at = time.monotonic()
        call = app_call(pbx)
        await asyncio.sleep(0.8)  # the parker is released (its BYE after a grace)
        await p2.stop(grace=0.2)  # gone for good before the recall
        again = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "phone-1002-again", user="1002",
                     domain=DOMAIN, auth_user="1002", auth_password=pw("1002"),
                     ooc_scenario="uas_answer_hangup.xml" if answers else "uas_noanswer.xml",
                     local_port=p2.local_port, duration_ms=20000, timeout=45,
                     variables={"hangup_ms": 1500} if answers else None)
        await again.start()
        if answers:
            assert await until(lambda: call.answered_leg is not None and call.ep.peer is call.b_ep, timeout=10), \
                "the recall was not answered and bridged"
            recalled_at = time.monotonic()
            assert recalled_at - parked_at >= 2.9
        assert await until(lambda: not pbx.node.service.parking.slots, timeout=10)
        cres = await asyncio.wait_for(run, 30)
        ended_at = time.monotonic()
    finally:
        r2, *results = await stop_all(p2, *(p for p in (again,) if p is not None))
        for p in (a, b):
            p.close()
    cres.assert_ok()
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE"), r2.describe()
    (r2b,) = results
    invites = r2b.received("INVITE")
    assert len(invites) == 1 and "sip:1001@alpha.example" in invites[0].header("From"), r2b.describe()
    assert cres.received("BYE"), "the caller was not hung up by the node"
    if answers:
        cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: c.start)
        assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
            ("1001", "800", "parked"), ("1001", "701", "park-timeout"), ("1001", "1002", "callee-bye")]
        assert cdrs[2].start - cdrs[1].start >= 2.9
    else:
        assert r2b.received("CANCEL"), r2b.describe()
        assert ended_at - parked_at >= 4.9  # park timeout + ring timeout
        cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.start)
        assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
            ("1001", "800", "parked"), ("1001", "701", "park-timeout")]
    assert await pbx.wait_idle()
    assert pbx.node.media.pool.in_use == 0 and not pbx.node.media.endpoints
