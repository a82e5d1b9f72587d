"""Semi-attended transfer with real SIPp phones: 1002 talks to 1001 and has a consultation
call to 1003 still ringing, then REFERs 1001 with Refer-To 1003?Replaces=<the ringing
consultation dialog>. The node hands 1003's ringing fork to 1001 (no new INVITE), 1001
hears ringback, and when 1003 answers the two talk; if 1003 never answers, 1002 (who has
hung up) is called back. And the other way phones do it: CANCEL the consultation, then a
blind REFER: the target sees the CANCEL before the new INVITE (no second ring race)."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import quote

import pytest

from node.pbx.call import CallState
from tests.interop.pbx._calls import (answered_call_with, assert_held_then_resumed, ringing_consultation, stop_all,
                                      stop_running)
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, pw, tenant_with
from tests.peers.rtp_peer import RtpPeer, rms, tone_level
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop


def _consultation(pbx, tmp_path, scenario: str = "uac_call_expect_error.xml", **kw) -> Sipp:
    """1002's consultation call to 1003, which ends 487 when its early dialog is replaced."""
    if scenario == "uac_call_expect_error.xml":
        kw.setdefault("variables", {"expected": 487})
    return dial(pbx, tmp_path, "1003", scenario, "consult", user="1002", **kw)


async def _ends_with(pbx, t, cdrs: list[tuple[str, str, str]]) -> None:
    """The tenant's CDRs are ``cdrs`` (caller, callee, hangup cause), then nothing of the
    calls is left: no call, no relay session."""
    got = await pbx.wait_cdrs(t.id, len(cdrs))
    assert sorted((c.caller, c.callee, c.hangup_cause) for c in got) == sorted(cdrs)
    assert await pbx.wait_idle()
    await _no_relays_left(pbx)


async def _no_relays_left(pbx, timeout: float = 5.0) -> None:
    """Both calls' relays are closed (the consultation's, kept for the target, included)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pbx.node.relay.session_count and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert pbx.node.relay.session_count == 0, "an RTP relay session outlived the calls"


async def _referring_transferor(pbx, tmp_path, t, scenario: str, **kw) -> Sipp:
    """1002's phone once its consultation call to 1003 rings: answering 1001's call with
    ``scenario``, it REFERs 1001 to 1003 with Replaces naming that early dialog."""
    _, did = await ringing_consultation(pbx, "1003")
    return await phone(pbx, tmp_path, t, "1002", scenario,
                       keys={"refer_to": f"1003@{DOMAIN}?Replaces={quote(did, safe='')}"}, **kw)


def _transferee(pbx, tmp_path, peer: RtpPeer) -> Sipp:
    return Sipp("uac_call_remote_bye_rtp.xml", pbx.target, workdir=tmp_path / "transferee", service="1002",
                user="1001", domain=DOMAIN, auth_user="1001", auth_password=pw("1001"), timeout=40,
                keys={"rtp_ip": "127.0.0.1", "rtp_port": peer.port})


def _ringback(samples) -> tuple[float, float, float]:
    return rms(samples), tone_level(samples, 440), tone_level(samples, 480)


@pytest.mark.parametrize("transferor", ["stays", "leaves"])
async def test_early_replaces_hands_the_ringing_target_to_the_transferee(pbx, tmp_path, transferor):
    """``stays``: the transferor waits for the final NOTIFY and is released by the node;
    ``leaves``: it hangs up as soon as the target rings (what most phones do)."""
    t = await tenant_with(pbx, "1002", "1003")
    # 1003 rings 3.5 s, answers, echoes what it gets, hangs up 2 s later
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_ring_answer_hangup.xml", rtp_echo=True,
                     variables={"ring_ms": 3500, "hangup_ms": 2000})
    consult = _consultation(pbx, tmp_path)
    await consult.start()
    peer = await RtpPeer.open()
    transferee = p2 = None
    try:
        scenario = "uas_answer_refer.xml" if transferor == "stays" else "uas_answer_refer_leave.xml"
        p2 = await _referring_transferor(pbx, tmp_path, t, scenario,
                                         variables={"hangup_ms": 0} if transferor == "leaves" else None)
        transferee = _transferee(pbx, tmp_path, peer)
        await transferee.start()
        call1 = await answered_call_with(pbx, "1002")
        relay_port = call1.media.session.leg("a").local_port  # where 1001 sends its audio, always
        # the REFER arrives 0.5 s after the answer: wait for the ringback, listen 1.5 s of it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8
        while call1.transfer is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert call1.transfer is not None, "the semi-attended REFER was not taken"
        since = time.monotonic()
        await asyncio.sleep(1.5)
        ringback = peer.audio(since + 0.2, time.monotonic())
        # 1003 answers: 1001's audio reaches it and comes back (echo), through both relays
        call1 = await answered_call_with(pbx, "1003")
        await asyncio.sleep(0.3)
        mark = time.monotonic()
        await peer.send_tone(("127.0.0.1", relay_port), 1000, 0.6)
        await asyncio.sleep(0.3)
        echoed = peer.audio(mark, time.monotonic())
        cres = await transferee.wait()
        consult_res = await consult.wait()
    finally:
        peer.close()
        await stop_running(transferee, consult)
        r3, r2 = await stop_all(p3, p2)
    level, l440, l480 = _ringback(ringback)
    print(f"ringback: rms {level:.0f}, 440 Hz {l440:.2f}, 480 Hz {l480:.2f}; echo rms {rms(echoed):.0f},"
          f" 1 kHz {tone_level(echoed, 1000):.2f}")
    assert level > 300 and l440 > 0.2 and l480 > 0.2, "the transferee did not hear ringback while 1003 rang"
    assert tone_level(echoed, 1000) > 0.5 and len(echoed) > 0.3 * 8000, "no audio between transferee and target"
    cres.assert_ok()
    consult_res.assert_ok()  # the consultation INVITE got 487: its early dialog was replaced
    assert len(r3.received("INVITE")) == 1, "the target was INVITEd again instead of keeping its ringing fork"
    assert not r3.received("CANCEL")
    notifies = [m.body.strip() for m in r2.received("NOTIFY")]
    assert len(r2.received("INVITE")) == 1, "the transferor was called back although the target answered"
    if transferor == "stays":
        assert notifies == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"], notifies
        assert r2.received("BYE"), "the transferor was not released"
    else:
        assert notifies == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing"], notifies
        assert r2.sent("BYE") and not r2.received("BYE")
    assert cres.received("BYE"), "1003's hang-up did not reach 1001"
    cdrs = await pbx.wait_cdrs(t.id, 3)
    assert sorted((c.caller, c.callee, c.hangup_cause, c.disposition) for c in cdrs) == [
        ("1001", "1002", "semi-attended-transfer", "answered"),
        ("1001", "1003", "callee-bye", "answered"),
        ("1002", "1003", "semi-attended-transfer", "cancelled")]
    assert await pbx.wait_idle()
    await _no_relays_left(pbx)


async def test_held_transferee_is_taken_off_hold_when_the_target_answers(pbx, tmp_path):
    """Desk phones hold the transferee before they consult: the music stops for the ringback,
    and once the target answers the node re-INVITEs the transferee (a=sendrecv, its own relay
    port); not before, while the target still rings."""
    t = await tenant_with(pbx, "1002", "1003")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_ring_answer_hangup.xml", variables={"ring_ms": 3000, "hangup_ms": 1200})
    consult = _consultation(pbx, tmp_path)
    await consult.start()
    p2 = None
    try:
        p2 = await _referring_transferor(pbx, tmp_path, t, "uas_answer_hold_refer.xml")
        caller = await dial(pbx, tmp_path, "1002", "uac_call_remote_bye_reinvites.xml", "transferee").run()
        consult_res = await consult.wait()
    finally:
        await stop_running(consult)
        r3, r2 = await stop_all(p3, p2)
    caller.assert_ok()
    consult_res.assert_ok()
    assert [m.body.strip() for m in r2.received("NOTIFY")][-1] == "SIP/2.0 200 OK" and r2.received("BYE")
    assert_held_then_resumed(caller)
    reinvites = caller.received("INVITE")
    target_ok = [m for m in r3.sent(200) if "INVITE" in (m.header("CSeq") or "")][0]
    # two SIPp processes stamp their own logs (sub-ms apart); the target rang 3 s before its 200
    assert reinvites[1].at >= target_ok.at - 0.05, "the transferee was taken off hold while the target still rang"
    assert len(r3.received("INVITE")) == 1
    await _ends_with(pbx, t, [
        ("1001", "1002", "semi-attended-transfer"), ("1001", "1003", "callee-bye"),
        ("1002", "1003", "semi-attended-transfer")])


async def test_target_never_answers_the_transferor_is_called_back(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003", ring_timeout=4)
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_noanswer.xml")
    consult = _consultation(pbx, tmp_path)
    await consult.start()
    peer = await RtpPeer.open()
    transferee = p2 = None
    try:
        # 1002 REFERs and hangs up at once; when called back it answers and hangs up 1.5 s later
        p2 = await _referring_transferor(pbx, tmp_path, t, "uas_answer_refer_leave.xml", variables={"hangup_ms": 1500})
        transferee = _transferee(pbx, tmp_path, peer)
        await transferee.start()
        await answered_call_with(pbx, "1002")
        cres = await transferee.wait()
        consult_res = await consult.wait()
    finally:
        peer.close()
        await stop_running(transferee, consult)
        r3, r2 = await stop_all(p3, p2)
    cres.assert_ok()
    consult_res.assert_ok()
    assert len(r3.received("INVITE")) == 1 and r3.received("CANCEL"), "the target's fork was not rung out and cancelled"
    invites = r2.received("INVITE")
    assert len(invites) == 2, r2.describe()
    recall = invites[1]
    assert "urn:alert:service:recall:transfer" in (recall.header("Alert-Info") or "")
    assert "sip:1001@" in recall.header("From"), "the recall does not present the transferee"
    assert r3.received("CANCEL")[0].at <= recall.at + 0.5
    # ringback from the REFER until the recall was answered, then the transferor's hang-up reached 1001
    heard = peer.audio()
    assert rms(heard) > 300 and tone_level(heard, 440) > 0.2, "the transferee sat in silence"
    assert cres.received("BYE")
    await _ends_with(pbx, t, [
        ("1001", "1002", "callee-bye"), ("1001", "1002", "transfer-recall"),
        ("1002", "1003", "semi-attended-transfer")])


async def test_target_never_answers_a_transferor_still_there_keeps_the_call(pbx, tmp_path):
    """The transferor called 1001 itself (it is side a of that call), stays in it after its
    REFER, and 1003 rings out: the final NOTIFY says so, nobody is recalled, the call goes on
    until the transferor hangs up."""
    t = await tenant_with(pbx, "1002", "1003", ring_timeout=5)
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_noanswer.xml")
    p1 = await phone(pbx, tmp_path, t, "1001", "uas_answer.xml")
    consult = _consultation(pbx, tmp_path)
    await consult.start()
    try:
        _, did = await ringing_consultation(pbx, "1003")
        xfer = await dial(pbx, tmp_path, "1001", "uac_call_refer.xml", "transferor", user="1002", duration_ms=300,
                          keys={"refer_to": f"1003@{DOMAIN}?Replaces={quote(did, safe='')}"}).run()
        consult_res = await consult.wait()
    finally:
        await stop_running(consult)
        r3, r1 = await stop_all(p3, p1)
    xfer.assert_ok()
    consult_res.assert_ok()
    notifies = [m.body.strip() for m in xfer.received("NOTIFY")]
    assert notifies[:2] == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing"], notifies
    assert notifies[-1].startswith("SIP/2.0 480"), notifies
    assert xfer.sent("BYE") and r1.received("BYE"), "the transferor's hang-up did not end the call"
    assert len(r3.received("INVITE")) == 1 and r3.received("CANCEL")
    await _ends_with(pbx, t, [
        ("1002", "1001", "caller-bye"), ("1002", "1003", "semi-attended-transfer")])


async def test_transferee_hangs_up_while_the_target_rings(pbx, tmp_path):
    """Nobody is left to take the call: the target's ringing fork is CANCELled, nobody is
    recalled, and nothing of either call stays behind."""
    t = await tenant_with(pbx, "1002", "1003")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_noanswer.xml")
    consult = _consultation(pbx, tmp_path)
    await consult.start()
    p2 = None
    try:
        p2 = await _referring_transferor(pbx, tmp_path, t, "uas_answer_refer_leave.xml", variables={"hangup_ms": 0})
        caller = await dial(pbx, tmp_path, "1002", "uac_call.xml", "transferee", duration_ms=2500).run()
        consult_res = await consult.wait()
    finally:
        await stop_running(consult)
        r3, r2 = await stop_all(p3, p2)
    caller.assert_ok()
    consult_res.assert_ok()
    assert len(r3.received("INVITE")) == 1 and r3.received("CANCEL"), "the target kept ringing for nobody"
    assert len(r2.received("INVITE")) == 1 and r2.sent("BYE"), "the transferor was called back for nobody"
    await _ends_with(pbx, t, [
        ("1001", "1002", "caller-bye"), ("1002", "1003", "semi-attended-transfer")])


async def test_cancel_then_blind_refer_rings_the_target_once_at_a_time(pbx, tmp_path):
    """The transferor gives up its consultation call and REFERs blind right after: the node
    CANCELs the fork to 1003 and must not INVITE 1003 again before that fork has ended (a
    slow phone: its 487 comes 1.5 s after the CANCEL)."""
    t = await tenant_with(pbx, "1002", "1003")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_cancel_or_answer.xml")
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer.xml", keys={"refer_to": f"1003@{DOMAIN}"})
    consult = _consultation(pbx, tmp_path, "uac_cancel.xml", duration_ms=800)
    await consult.start()
    try:
        call2, _ = await ringing_consultation(pbx, "1003")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 8
        while call2.state is not CallState.ENDED and loop.time() < deadline:
            await asyncio.sleep(0.01)
        # the consultation is cancelled: the transferee's call, answered by 1002, REFERred 0.5 s later
        caller = await dial(pbx, tmp_path, "1002", "uac_call.xml", "transferee", duration_ms=7000).run()
        consult_res = await consult.wait()
    finally:
        r3, r2 = await stop_all(p3, p2)
    consult_res.assert_ok()
    caller.assert_ok()
    msgs = [m for m in r3.received() if m.method in ("INVITE", "CANCEL", "ACK")]
    seen = [m.method for m in msgs]
    assert seen.count("INVITE") == 2 and seen[:2] == ["INVITE", "CANCEL"], seen
    first, second = [m for m in msgs if m.method == "INVITE"]
    assert first.header("Call-ID") != second.header("Call-ID")
    sent_487 = r3.sent(487)
    assert sent_487, r3.describe()
    print(f"1003 sent 487 at +{sent_487[0].at - first.at:.2f} s, got the transfer's INVITE at +{second.at - first.at:.2f} s")
    assert sent_487[0].at <= second.at, "the blind transfer rang 1003 while the consultation still rang there"
    notifies = [m.body.strip() for m in r2.received("NOTIFY")]
    assert notifies[-1] == "SIP/2.0 200 OK", notifies
    assert await pbx.wait_idle()
    await _no_relays_left(pbx)
