"""A blind transfer to a hunt group follows the group's rules (node/pbx/attempts.py walks the
plan for transfers exactly as for calls): member 1 rings its own ring time, then member 2."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import hunt_groups
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, stop_all, tenant_with

pytestmark = pytest.mark.interop


async def test_blind_transfer_to_sequential_hunt_group_moves_on_after_member_ring(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003", "1004")
    await hunt_groups.save(pbx.config, t.id, "600", {
        "strategy": "sequential", "ring": 20, "members": [{"to": "1003", "ring": 2}, "1004"]})
    transferor = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer.xml", keys={"refer_to": f"600@{DOMAIN}"})
    silent = await phone(pbx, tmp_path, t, "1003", "uas_noanswer.xml")
    taker = await phone(pbx, tmp_path, t, "1004", "uas_answer.xml")
    try:
        caller = await dial(pbx, tmp_path, "1002", duration_ms=5000).run()
        caller.assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3, r4 = await stop_all(transferor, silent, taker)
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK", r2.describe()
    inv3, inv4 = r3.received("INVITE"), r4.received("INVITE")
    assert len(inv3) == 1 and r3.received("CANCEL"), r3.describe()
    rang = r3.received("CANCEL")[0].at - inv3[0].at
    assert 1.5 <= rang <= 4.0, f"member 1 rang {rang:.1f}s, configured 2s"
    assert len(inv4) == 1 and inv4[0].at >= r3.received("CANCEL")[0].at - 0.5, "member 2 did not ring after member 1"
    assert "sip:1001@alpha.example" in inv4[0].header("From")
    assert r4.received("BYE"), "the caller's hang-up did not reach member 2"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.disposition, c.hangup_cause) for c in cdrs] == [
        ("1001", "1002", "answered", "blind-transfer"), ("1001", "600", "answered", "caller-bye")]
    assert await pbx.wait_idle()
