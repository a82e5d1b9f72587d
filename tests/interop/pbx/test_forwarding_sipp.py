"""Call forwarding, do-not-disturb and follow-me against real SIPp phones and a SIPp carrier."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import forwarding
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone, stop_all, tenant_with
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop


async def test_busy_forward(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await forwarding.save(pbx.config, t.id, "1002", {"busy": "1003"})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_busy.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    try:
        (await dial(pbx, tmp_path, "1002", duration_ms=300).run()).assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3 = await stop_all(p2, p3)
    assert r2.received("INVITE") and r3.received("BYE")
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.callee, cdr.disposition) == ("1002", "answered")


async def test_no_answer_forward_after_its_ring_time(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await forwarding.save(pbx.config, t.id, "1002", {"no_answer": "1003", "no_answer_ring": 2})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_noanswer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    try:
        (await dial(pbx, tmp_path, "1002", duration_ms=300).run()).assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3 = await stop_all(p2, p3)
    rang = r2.received("CANCEL")[0].at - r2.received("INVITE")[0].at
    assert 1.5 <= rang <= 4.0, f"rang {rang:.1f}s before forwarding, configured 2s"
    assert r3.received("INVITE")[0].at >= r2.received("CANCEL")[0].at - 0.5
    assert r3.received("BYE")


async def test_unreachable_forward_and_dnd(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await forwarding.save(pbx.config, t.id, "1002", {"unreachable": "1003"})
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    try:
        (await dial(pbx, tmp_path, "1002", duration_ms=300).run()).assert_ok()  # 1002 has no phone
        await forwarding.update(pbx.config, t.id, "1003", dnd=True)
        busy = await dial(pbx, tmp_path, "1003", "uac_call_expect_error.xml", "dnd", variables={"expected": 486}).run()
        busy.assert_ok()
        assert "do not disturb" in busy.received(486)[0].first_line
    finally:
        (r3,) = await stop_all(p3)
    assert len(r3.received("INVITE")) == 1  # the forwarded call only: DND kept the second away


async def test_unconditional_forward_to_external_number_and_follow_me(pbx, tmp_path):
    t = await tenant_with(pbx, "1002")
    carrier = Sipp("uas_answer.xml", None, workdir=tmp_path / "carrier", local_ip="127.0.0.3", timeout=40, calls=2)
    await carrier.start()
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3", port=carrier.local_port)
    await pbx.config.create_route(t.id, "0", "carrier")
    await forwarding.save(pbx.config, t.id, "1002", {"unconditional": "tel:01701234567"})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_noanswer.xml")
    try:
        (await dial(pbx, tmp_path, "1002", duration_ms=300).run()).assert_ok()
        await asyncio.sleep(0.5)
        # follow-me: the desk phone 2 s, then the mobile through the carrier
        await forwarding.save(pbx.config, t.id, "1002", {"follow_me": {"mode": "ordered", "destinations": [
            {"to": "1002", "ring": 2}, {"to": "tel:01709999999", "ring": 10}]}})
        (await dial(pbx, tmp_path, "1002", duration_ms=300, name="c2").run()).assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2 = (await stop_all(p2))[0]
        rc = await carrier.stop()
    invites = rc.received("INVITE")
    assert [i.first_line.split()[1].split("@")[0] for i in invites] == ["sip:01701234567", "sip:01709999999"]
    assert len(r2.received("INVITE")) == 1 and r2.received("CANCEL")  # rang only for follow-me
    assert "Ext 1001" in invites[0].header("From")  # the original caller is presented
    cdrs = await pbx.wait_cdrs(t.id, 2)
    assert all(c.disposition == "answered" and c.trunk == "carrier" for c in cdrs)
