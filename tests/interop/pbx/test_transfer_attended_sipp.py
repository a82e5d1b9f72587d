"""Attended transfer and Replaces with real SIPp phones: 1002 talks to 1001, calls 1003,
then REFERs 1003 with Refer-To ...?Replaces=<its dialog with 1001>: the node joins 1001 and
1003 and releases both of 1002's dialogs. And an INVITE with Replaces from 1003 takes
1002's place in an answered call, or picks up a call ringing 1002."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import pytest

from node.pbx.call import CallState
from tests.interop.pbx._calls import RTP, RawRtp, call_to, replaces_of
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, stop_all, tenant_with

pytestmark = pytest.mark.interop


async def test_attended_transfer_joins_the_other_two(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer_hangup.xml", variables={"hangup_ms": 3000}, rtp_echo=True)
    listener = await RawRtp.open()
    caller = dial(pbx, tmp_path, "1002", "uac_call_remote_bye_rtp.xml", keys=dict(RTP, rtp_port=listener.port))
    await caller.start()
    try:
        call1 = await call_to(pbx, "1002", CallState.ANSWERED)
        replaces = replaces_of(call1.answered_leg.dialog)
        relay_port = call1.media.session.leg("a").local_port  # where 1001 sends its audio, always
        xfer = await dial(pbx, tmp_path, "1003", "uac_call_refer.xml", "transferor", user="1002", duration_ms=300,
                          keys={"refer_to": f"1001@{DOMAIN}?Replaces={quote(replaces, safe='')}"}).run()
        xfer.assert_ok()
        # 1001's audio crosses both relays to 1003, which echoes it back the same way
        listener.packets.clear()
        sent = []
        for seq in range(15):
            pkt = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") + b"\x00\x00\x12\x34" + bytes([seq]) * 160
            sent.append(pkt)
            listener.transport.sendto(pkt, ("127.0.0.1", relay_port))
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        echoed = [p for p in listener.packets if p[12:] in {s[12:] for s in sent}]
        cres = await caller.wait()
    finally:
        listener.close()
        r2, r3 = await stop_all(p2, p3)
    assert len(echoed) >= 10, f"only {len(echoed)} of 15 packets came back from 1003 through the joined call"
    cres.assert_ok()
    assert xfer.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK"
    assert xfer.received("BYE"), "the transferor's call to 1003 was not released"
    assert r2.received("BYE"), "the transferor's call with 1001 was not released"
    assert len(r3.received("INVITE")) == 1, "the node re-invited 1003 instead of joining"
    assert cres.received("BYE"), "1003's hang-up did not reach 1001"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: (c.end, c.start))
    # the REFER went to 1003: 1003 is the transferee, "calling" the party it was joined with
    assert sorted((c.caller, c.callee, c.hangup_cause) for c in cdrs) == [
        ("1001", "1002", "attended-transfer"), ("1002", "1003", "attended-transfer"), ("1003", "1001", "caller-bye")]
    assert await pbx.wait_idle()


async def test_invite_with_replaces_takes_over_answered_and_ringing_dialogs(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    b = await pbx.tenant("beta", "beta.example")
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    caller = dial(pbx, tmp_path, "1002", "uac_call_remote_bye.xml", "caller")
    await caller.start()
    try:
        call = await call_to(pbx, "1002", CallState.ANSWERED)
        replaces = replaces_of(call.answered_leg.dialog)
        bogus = await dial(pbx, tmp_path, "1002", "uac_call_replaces.xml", "bogus", user="1003",
                           keys={"replaces": "nosuchcall;to-tag=1;from-tag=2"}, duration_ms=100).run()
        assert bogus.received(481) and not bogus.ok
        taker = await dial(pbx, tmp_path, "1002", "uac_call_replaces.xml", "taker", user="1003",
                           keys={"replaces": replaces}, duration_ms=500).run()
        taker.assert_ok()
        cres = await caller.wait()
    finally:
        (r2,) = await stop_all(p2)
    cres.assert_ok()
    assert r2.received("BYE"), "the replaced phone was not released"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs][-2:] == [
        ("1001", "1002", "replaced"), ("1001", "1003", "callee-bye")]
    assert await pbx.wait_cdrs(b.id, 0) == []
    # a ringing call: Replaces of the fork to 1002 picks it up
    await pbx.locations.remove_all(t.id, "1002")  # the stopped phone did not unregister
    p2 = await phone(pbx, tmp_path / "2", t, "1002", "uas_noanswer.xml")
    caller = dial(pbx, tmp_path, "1002", "uac_call_remote_bye.xml", "caller2")
    await caller.start()
    try:
        ringing = await call_to(pbx, "1002", CallState.RINGING)
        await asyncio.sleep(0.3)
        leg = ringing.legs[0]
        did = f"{leg.invite.call_id};to-tag=x;from-tag={leg.invite.from_.tag}"
        taker = await dial(pbx, tmp_path, "1002", "uac_call_replaces.xml", "picker", user="1003",
                           keys={"replaces": did}, duration_ms=500).run()
        taker.assert_ok()
        cres = await caller.wait()
    finally:
        (r2,) = await stop_all(p2)
    cres.assert_ok()
    assert r2.received("CANCEL")
    assert await pbx.wait_idle()
