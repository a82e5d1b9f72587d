"""Speed dials from a real SIPp phone: *0<index> rings the number it stands for (own list
before the tenant's), and a barred target stays barred."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import feature_codes, feature_objects, screening
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone, stop_all, tenant_with

pytestmark = pytest.mark.interop


async def test_speed_dial_rings_its_target(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await feature_codes.save(pbx.config, t.id, "*0", {"action": "speed_dial"})
    await feature_objects.save(pbx.config, t.id, "speed_dial", "tenant", {"01": "1002", "02": "tel:0301234567"})
    await feature_objects.save(pbx.config, t.id, "speed_dial", "1001", {"01": "1003"})
    await screening.save_cos(pbx.config, t.id, "internal", {"allow": ["internal"], "extensions": ["1001"]})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    try:
        (await dial(pbx, tmp_path, "*001", duration_ms=300, name="own").run()).assert_ok()
        (await dial(pbx, tmp_path, "*001", user="1002", duration_ms=300, name="shared").run()).assert_ok()
        barred = await dial(pbx, tmp_path, "*002", "uac_call_expect_error.xml", "barred",
                            variables={"expected": 403}).run()
        barred.assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3 = await stop_all(p2, p3)
    assert len(r3.received("INVITE")) == 1, "1001's own *001 (1003) was not rung"
    assert len(r2.received("INVITE")) == 1, "1002's *001 is the shared entry (1002 itself)"
    assert "class of service" in barred.received(403)[0].first_line
    cdrs = sorted(await pbx.wait_cdrs(t.id, 3), key=lambda c: c.start)
    assert [(c.caller, c.callee, c.sip_code) for c in cdrs] == [
        ("1001", "1003", 200), ("1002", "1002", 200), ("1001", "0301234567", 403)]
