"""Hunt groups against real SIPp phones on loopback: sequential hunting past a busy and an
unanswered member (per-member ring time), simultaneous ringing with a fallback."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import hunt_groups
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"


def pw(ext: str) -> str:
    return f"pw-{ext}-secret"


async def tenant_with(pbx, *exts: str, name: str = "alpha", domain: str = DOMAIN, **opts):
    t = await pbx.tenant(name, domain, **opts)
    for e in ("1001",) + exts:
        await pbx.config.create_extension(t.id, e, pw(e), display_name=f"Ext {e}")
    return t


async def phone(pbx, tmp_path, tenant, ext: str, answer: str, domain: str = DOMAIN, **kw) -> Sipp:
    """A SIPp phone registered as ``ext`` answering every call with scenario ``answer``."""
    p = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / f"phone-{ext}", user=ext,
             domain=domain, auth_user=ext, auth_password=pw(ext), ooc_scenario=answer,
             duration_ms=20000, timeout=45, **kw)
    await p.start()
    assert await pbx.wait_registered(tenant.id, ext), f"phone {ext} did not register"
    return p


def dial(pbx, tmp_path, callee: str, scenario: str = "uac_call.xml", name: str = "caller",
         user: str = "1001", domain: str = DOMAIN, **kw) -> Sipp:
    return Sipp(scenario, pbx.target, workdir=tmp_path / name, service=callee, user=user, domain=domain,
                auth_user=user, auth_password=pw(user), timeout=40, **kw)


async def stop_all(*phones: Sipp):
    return list(await asyncio.gather(*(p.stop() for p in phones)))


async def test_sequential_hunt_skips_busy_then_moves_on_after_member_ring_time(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003", "1004")
    await hunt_groups.save(pbx.config, t.id, "600", {
        "strategy": "sequential", "ring": 20,
        "members": ["1002", {"to": "1003", "ring": 2}, "1004"]})
    busy = await phone(pbx, tmp_path, t, "1002", "uas_busy.xml")
    silent = await phone(pbx, tmp_path, t, "1003", "uas_noanswer.xml")
    taker = await phone(pbx, tmp_path, t, "1004", "uas_answer.xml")
    try:
        caller = await dial(pbx, tmp_path, "600", duration_ms=500).run()
        caller.assert_ok()
        await asyncio.sleep(0.3)
    finally:
        rb, rs, rt = await stop_all(busy, silent, taker)
    inv_b, inv_s, inv_t = rb.received("INVITE")[0], rs.received("INVITE")[0], rt.received("INVITE")[0]
    assert inv_b.at <= inv_s.at <= inv_t.at, "members were not hunted in order"
    cancel = rs.received("CANCEL")
    assert cancel, "the unanswered member was not cancelled"
    rang = cancel[0].at - inv_s.at
    assert 1.5 <= rang <= 4.0, f"member 1003 rang {rang:.1f}s, its ring time is 2s"
    assert rt.received("BYE"), "the answering member did not get the call"
    assert "Ext 1001" in inv_t.header("From")
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.callee, cdr.disposition, cdr.direction) == ("600", "answered", "internal")


async def test_simultaneous_group_rings_all_then_fallback_answers(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003", "1009")
    await hunt_groups.save(pbx.config, t.id, "600", {
        "strategy": "simultaneous", "group_ring": 2, "members": ["1002", "1003"], "fallback": "1009"})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_noanswer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_noanswer.xml")
    fb = await phone(pbx, tmp_path, t, "1009", "uas_answer.xml")
    try:
        caller = await dial(pbx, tmp_path, "600", duration_ms=500).run()
        caller.assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3, rf = await stop_all(p2, p3, fb)
    i2, i3 = r2.received("INVITE")[0], r3.received("INVITE")[0]
    assert abs(i2.at - i3.at) < 1.0, "members did not ring together"
    assert r2.received("CANCEL") and r3.received("CANCEL")
    inv_f = rf.received("INVITE")[0]
    assert inv_f.at - i2.at >= 1.5, "the fallback rang before the group ring time ran out"
    assert rf.received("BYE")
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert cdr.disposition == "answered"


async def test_all_members_busy_without_fallback_is_486(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await hunt_groups.save(pbx.config, t.id, "600", {"strategy": "sequential", "members": ["1002", "1003"]})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_busy.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_busy.xml")
    try:
        caller = await dial(pbx, tmp_path, "600", "uac_call_expect_error.xml", variables={"expected": 486}).run()
        caller.assert_ok()
    finally:
        r2, r3 = await stop_all(p2, p3)
    assert r2.received("INVITE") and r3.received("INVITE")  # both were tried
    cdr = (await pbx.wait_cdrs(t.id, 1))[0]
    assert (cdr.disposition, cdr.sip_code) == ("busy", 486)


async def test_hunt_group_of_another_tenant_is_not_reachable(pbx, tmp_path):
    a = await tenant_with(pbx, "1002")
    b = await pbx.tenant("beta", "beta.example")
    await pbx.config.create_extension(b.id, "2002", pw("2002"))
    await hunt_groups.save(pbx.config, b.id, "600", {"members": ["2002"]})
    pb = await phone(pbx, tmp_path, b, "2002", "uas_answer.xml", domain="beta.example")
    try:
        caller = await dial(pbx, tmp_path, "600", "uac_call_expect_error.xml", variables={"expected": 404}).run()
        caller.assert_ok()
    finally:
        (rb,) = await stop_all(pb)
    assert not rb.received("INVITE")
    assert (await pbx.wait_cdrs(a.id, 1))[0].sip_code == 404
