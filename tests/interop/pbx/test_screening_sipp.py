"""Caller ID hiding and selection, the inbound block list and classes of service, seen by
real SIPp peers (a carrier on 127.0.0.3, phones)."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import feature_codes, screening, time_switch
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone, stop_all, tenant_with
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop


async def test_hide_and_select_caller_id_towards_carrier_and_class_of_service(pbx, tmp_path):
    t = await tenant_with(pbx, "1002")
    carrier = Sipp("uas_answer.xml", None, workdir=tmp_path / "carrier", local_ip="127.0.0.3", timeout=40, calls=2)
    await carrier.start()
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3", port=carrier.local_port)
    await pbx.config.create_route(t.id, "0", "carrier")
    await pbx.config.create_did(t.id, "+4930555", "extension", "1002")
    await feature_codes.save(pbx.config, t.id, "*67", {"action": "hide_callerid"})
    await screening.save_caller_id(pbx.config, t.id, "1001", {"number": "+4930555"})
    await screening.save_cos(pbx.config, t.id, "national", {"allow": ["internal", "local", "national"],
                                                            "extensions": ["1001"]})
    try:
        (await dial(pbx, tmp_path, "*67030123456", duration_ms=200, name="hidden").run()).assert_ok()
        (await dial(pbx, tmp_path, "030123457", duration_ms=200, name="shown").run()).assert_ok()
        intl = await dial(pbx, tmp_path, "0044113496000", "uac_call_expect_error.xml", "intl",
                          variables={"expected": 403}).run()
        intl.assert_ok()
        assert "international calls are not allowed" in intl.received(403)[0].first_line
    finally:
        rc = await carrier.stop()
    hidden, shown = rc.received("INVITE")
    assert hidden.first_line.startswith("INVITE sip:030123456@")
    assert "anonymous@anonymous.invalid" in hidden.header("From") and "Ext 1001" not in hidden.header("From")
    assert hidden.header("Privacy") == "id"
    assert "+4930555" in hidden.header("P-Asserted-Identity")  # the carrier still knows (RFC 3325)
    assert "1001" not in hidden.header("Contact")
    assert "+4930555" in shown.header("From") and shown.header("Privacy") is None
    assert len(rc.received("INVITE")) == 2  # the international call never left


async def test_block_list_refuses_inbound_caller_and_country_routing(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003")
    await pbx.config.create_trunk(t.id, "carrier", "127.0.0.3")
    await screening.save_block_list(pbx.config, t.id, {"numbers": ["+447700900666"]})
    # callers from Switzerland go to 1003, everyone else to 1002 (caller-ID routing by country)
    await time_switch.save(pbx.config, t.id, "500", {
        "rules": [{"caller": {"countries": ["CH"]}, "to": "1003"}], "default": "1002"})
    await pbx.config.create_did(t.id, "+441135550100", "time_switch", "500")
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")

    def carrier_call(caller: str, name: str, scenario: str = "uac_call.xml", **kw) -> Sipp:
        return Sipp(scenario, pbx.target, workdir=tmp_path / name, service="441135550100", user=caller,
                    domain="carrier.example", local_ip="127.0.0.3", timeout=30, **kw)

    try:
        blocked = await carrier_call("447700900666", "blocked", "uac_call_expect_error.xml",
                                     variables={"expected": 603}).run()
        blocked.assert_ok()
        assert "caller blocked" in blocked.received(603)[0].first_line
        (await carrier_call("0041446681800", "swiss", duration_ms=200).run()).assert_ok()
        (await carrier_call("447700900123", "uk", duration_ms=200).run()).assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3 = await stop_all(p2, p3)
    assert "447700900123" in r2.received("INVITE")[0].header("From") and len(r2.received("INVITE")) == 1
    assert "0041446681800" in r3.received("INVITE")[0].header("From") and len(r3.received("INVITE")) == 1
    cdrs = await pbx.wait_cdrs(t.id, 3)
    blocked_cdr = [c for c in cdrs if c.caller == "447700900666"][0]
    assert (blocked_cdr.sip_code, blocked_cdr.direction, blocked_cdr.disposition) == (603, "inbound", "rejected")
