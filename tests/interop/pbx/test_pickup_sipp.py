"""Call pickup with real SIPp phones: a call rings 1002, 1003 picks it up (group pickup by
its group, directed pickup by the extension), 1002 gets CANCEL, the caller talks to 1003;
another tenant's phone dialling the same code picks up nothing."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import feature_codes, feature_objects
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone, pw, stop_all, tenant_with
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop


async def _pick(pbx, tmp_path, t, code: str, name: str, other_tenant_first: bool = False):
    ringing = await phone(pbx, tmp_path / name, t, "1002", "uas_noanswer.xml")
    caller = dial(pbx, tmp_path, "1002", "uac_call_remote_bye.xml", f"{name}-caller")
    await caller.start()
    try:
        for _ in range(200):  # until 1002 rings (its 180 is in)
            if any(c.state.value == "ringing" and any(leg.provisional for leg in c.legs)
                   for c in pbx.node.service.calls.values()):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the call never rang 1002")
        if other_tenant_first:
            # beta's 1003 dials the same code: alpha's ringing call is none of its business
            res = await Sipp("uac_call_expect_error.xml", pbx.target, workdir=tmp_path / f"{name}-beta",
                             service=code, user="1003", domain="beta.example", auth_user="1003",
                             auth_password=pw("1003"), variables={"expected": 480}, timeout=20).run()
            res.assert_ok()
        picker = await dial(pbx, tmp_path, code, user="1003", duration_ms=800, name=f"{name}-picker").run()
        picker.assert_ok()
        cres = await caller.wait()
    finally:
        (rres,) = await stop_all(ringing)
        await pbx.locations.remove_all(t.id, "1002")  # the stopped phone did not unregister
    cres.assert_ok()
    assert rres.received("CANCEL"), "the ringing phone was not cancelled"
    assert cres.received("BYE"), "the picker's hang-up did not reach the caller"
    return picker


async def test_group_and_directed_pickup(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003", "1004")
    b = await pbx.tenant("beta", "beta.example")
    await pbx.config.create_extension(b.id, "1003", pw("1003"))
    await feature_codes.save(pbx.config, b.id, "**", {"action": "directed_pickup"})
    await feature_codes.save(pbx.config, t.id, "*8", {"action": "pickup"})
    await feature_codes.save(pbx.config, t.id, "**", {"action": "directed_pickup"})
    await feature_objects.save(pbx.config, t.id, "pickup_group", "sales", {"members": ["1002", "1003"]})
    events = []
    pbx.node.service.call_listeners.append(lambda call, state: events.append((call.caller.number, call.plan.callee, state)))
    # 1004 is in no group with 1002: group pickup finds nothing for it
    nothing = await dial(pbx, tmp_path, "*8", "uac_call_expect_error.xml", "nothing", user="1004",
                         variables={"expected": 480}).run()
    nothing.assert_ok()
    await _pick(pbx, tmp_path, t, "*8", "group")
    await _pick(pbx, tmp_path, t, "**1002", "directed", other_tenant_first=True)
    cdrs = sorted(await pbx.wait_cdrs(t.id, 5), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.disposition, c.hangup_cause) for c in cdrs] == [
        ("1004", "*8", "no-answer", "sip-480"),
        ("1001", "1002", "cancelled", "picked-up-by-1003"), ("1001", "1003", "answered", "callee-bye"),
        ("1001", "1002", "cancelled", "picked-up-by-1003"), ("1001", "1003", "answered", "callee-bye"),
    ]
    assert await pbx.wait_idle()
    # busy lamps: the ringing attempt ends, the picked-up pair starts and ends; none stuck
    picked = [e for e in events if e[0] == "1001"]
    assert picked == 2 * [("1001", "1002", "early"), ("1001", "1002", "terminated"),
                          ("1001", "1003", "confirmed"), ("1001", "1003", "terminated")]
    assert all(pbx.node.service.line_states.dialogs(t.id, e) == [] for e in ("1001", "1002", "1003"))
