"""Paging from a real SIPp phone: the feature code then an extension or a page group rings
the phones with the auto-answer headers phones understand; an ordinary call does not."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import feature_codes, feature_objects
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone, stop_all, tenant_with

pytestmark = pytest.mark.interop


def _auto_answer(invite) -> bool:
    call_info = invite.header("Call-Info") or ""
    alert = invite.header("Alert-Info") or ""
    return call_info.endswith(";answer-after=0") and alert == "<http://127.0.0.1>;info=alert-autoanswer"


async def test_page_extension_and_group(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await feature_codes.save(pbx.config, t.id, "*80", {"action": "page"})
    await feature_objects.save(pbx.config, t.id, "page_group", "850", {"members": ["1001", "1002", "1003"]})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_noanswer.xml")
    try:
        (await dial(pbx, tmp_path, "1002", duration_ms=200, name="plain").run()).assert_ok()
        (await dial(pbx, tmp_path, "*801002", duration_ms=200, name="page").run()).assert_ok()
        (await dial(pbx, tmp_path, "*80850", duration_ms=200, name="group").run()).assert_ok()
        missing = await dial(pbx, tmp_path, "*80999", "uac_call_expect_error.xml", "missing",
                             variables={"expected": 404}).run()
        missing.assert_ok()
        await asyncio.sleep(0.5)
    finally:
        r2, r3 = await stop_all(p2, p3)
    inv2 = r2.received("INVITE")
    assert len(inv2) == 3
    assert not _auto_answer(inv2[0]), "an ordinary call asked for auto-answer"
    assert _auto_answer(inv2[1]) and _auto_answer(inv2[2])
    inv3 = r3.received("INVITE")
    assert len(inv3) == 1 and _auto_answer(inv3[0]), "the page group did not page 1003"
    assert r3.received("CANCEL"), "1003 was not released when 1002 took the page"
    cdrs = sorted(await pbx.wait_cdrs(t.id, 4), key=lambda c: c.start)
    assert [(c.callee, c.sip_code) for c in cdrs] == [("1002", 200), ("1002", 200), ("850", 200), ("999", 404)]
