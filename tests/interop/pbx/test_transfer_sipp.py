"""Blind transfer with real SIPp phones: the callee REFERs the caller to another extension,
gets 202 and NOTIFY progress, is released, and the caller ends up talking to the target; a
REFER into another tenant is refused and the call goes on."""

from __future__ import annotations

import asyncio

import pytest

from tests.interop.pbx._calls import assert_held_then_resumed, transferor_leaves_early
from tests.interop.pbx.test_hunt_groups_sipp import DOMAIN, dial, phone, stop_all, tenant_with

pytestmark = pytest.mark.interop


async def test_blind_transfer_by_callee(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    events = []
    pbx.node.service.call_listeners.append(lambda call, state: events.append((call.caller.number, call.plan.callee, state)))
    transferor = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer.xml", keys={"refer_to": f"1003@{DOMAIN}"})
    target = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    try:
        caller = await dial(pbx, tmp_path, "1002", duration_ms=3000).run()
        caller.assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3 = await stop_all(transferor, target)
    # the transferor's scenario checked 202, NOTIFY 100 / 200 (terminated) and the node's BYE
    notifies = r2.received("NOTIFY")
    assert [n.body.strip() for n in notifies] == ["SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 200 OK"]
    assert [n.header("Subscription-State").split(";")[0] for n in notifies] == ["active", "active", "terminated"]
    assert r2.received(202) and r2.received("BYE"), r2.describe()
    inv = r3.received("INVITE")
    assert len(inv) == 1 and "sip:1001@alpha.example" in inv[0].header("From")
    assert "1002" in (inv[0].header("Referred-By") or "")
    assert r3.received("BYE"), "the caller's hang-up did not reach the transfer target"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.disposition, c.hangup_cause) for c in cdrs] == [
        ("1001", "1002", "answered", "blind-transfer"), ("1001", "1003", "answered", "caller-bye")]
    assert await pbx.wait_idle()
    assert events == [("1001", "1002", "early"), ("1001", "1002", "confirmed"), ("1001", "1002", "terminated"),
                      ("1001", "1003", "confirmed"), ("1001", "1003", "terminated")]
    assert all(pbx.node.service.line_states.dialogs(t.id, e) == [] for e in ("1001", "1002", "1003"))


async def test_refer_into_another_tenant_is_refused(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    b = await pbx.tenant("beta", "beta.example")
    await pbx.config.create_extension(b.id, "1003", "pw-beta-1003")
    transferor = await phone(pbx, tmp_path, t, "1002", "uas_answer_refer_forbidden.xml",
                             keys={"refer_to": "1003@beta.example"})
    try:
        caller = await dial(pbx, tmp_path, "1002", duration_ms=2000).run()
        caller.assert_ok()
        await asyncio.sleep(0.3)
    finally:
        (r2,) = await stop_all(transferor)
    assert r2.received(403)[0].first_line.endswith("(Refer-To outside this tenant)")
    assert r2.received("BYE"), "the call did not go on after the refused REFER"
    cdrs = await pbx.wait_cdrs(t.id, 1)
    assert [(c.callee, c.hangup_cause) for c in cdrs] == [("1002", "caller-bye")]


async def test_caller_transfers_callee_within_its_class_of_service(pbx, tmp_path):
    from node.pbx import screening

    t = await tenant_with(pbx, "1002", "1003")
    await screening.save_cos(pbx.config, t.id, "internal-only", {"allow": ["internal"], "extensions": ["1001"]})
    callee = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    target = await phone(pbx, tmp_path, t, "1003", "uas_answer_hangup.xml", variables={"hangup_ms": 800})
    try:
        # an outside number 1001 may not dial: the transfer fails, 1001 stays and hangs up
        barred = await dial(pbx, tmp_path, "1002", "uac_call_refer.xml", "barred", duration_ms=300,
                            keys={"refer_to": f"004930123456@{DOMAIN}"}).run()
        barred.assert_ok()
        final = barred.received("NOTIFY")[-1]
        assert final.body.startswith("SIP/2.0 403") and "class of service" in final.body, final.body
        assert barred.sent("BYE") and not barred.received("BYE")
        # to 1003: 1001 is released, 1002 now talks to 1003 (who hangs up after a while)
        ok = await dial(pbx, tmp_path, "1002", "uac_call_refer.xml", "ok", duration_ms=300,
                        keys={"refer_to": f"1003@{DOMAIN}"}).run()
        ok.assert_ok()
        assert ok.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and ok.received("BYE")
        await asyncio.sleep(1.5)
    finally:
        r2, r3 = await stop_all(callee, target)
    inv3 = r3.received("INVITE")
    assert len(inv3) == 1 and "sip:1002@alpha.example" in inv3[0].header("From"), "1003 was not rung as from 1002"
    assert len(r2.received("BYE")) == 2, "1002 did not get the target's hang-up"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.hangup_cause) for c in cdrs] == [
        ("1001", "1002", "caller-bye"), ("1001", "1002", "blind-transfer"), ("1002", "1003", "callee-bye")]
    assert await pbx.wait_idle()


async def test_transfer_of_a_held_caller_takes_it_off_hold(pbx, tmp_path):
    """Desk phones hold before they transfer: the node stops the music on hold and
    re-INVITEs the transferee (a=sendrecv, its own relay port) once the target answered."""
    t = await tenant_with(pbx, "1002", "1003")
    transferor = await phone(pbx, tmp_path, t, "1002", "uas_answer_hold_refer.xml", keys={"refer_to": f"1003@{DOMAIN}"})
    target = await phone(pbx, tmp_path, t, "1003", "uas_answer_hangup.xml", variables={"hangup_ms": 1200})
    try:
        caller = await dial(pbx, tmp_path, "1002", "uac_call_remote_bye_reinvites.xml").run()
        caller.assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3 = await stop_all(transferor, target)
    assert r2.received("NOTIFY")[-1].body.strip() == "SIP/2.0 200 OK" and r2.received("BYE"), r2.describe()
    assert_held_then_resumed(caller)
    assert len(r3.received("INVITE")) == 1
    cdrs = sorted(await pbx.wait_cdrs(t.id, 2), key=lambda c: c.start)
    assert [(c.callee, c.hangup_cause) for c in cdrs] == [("1002", "blind-transfer"), ("1003", "callee-bye")]
    assert await pbx.wait_idle()


async def test_transferor_leaving_early_and_busy_target(pbx, tmp_path):
    """The transferor hangs up right after the 202: the transferee still reaches the target;
    when the target is busy instead, nobody is left to take the call back and the transferee
    is released."""
    t = await tenant_with(pbx, "1002", "1003", "1004")
    await transferor_leaves_early(pbx, tmp_path, t, "1002", 300)
