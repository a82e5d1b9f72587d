"""Time switch and day/night toggle against real SIPp peers: the rule picked in the tenant's
time zone, the toggle flipped by a feature code taking effect on the next call."""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from node.pbx import feature_codes, time_switch
from tests.interop.pbx.test_hunt_groups_sipp import dial, phone, stop_all, tenant_with

pytestmark = pytest.mark.interop

TZ = "Pacific/Kiritimati"  # UTC+14: its date differs from UTC's for ten hours a day


async def test_time_switch_in_tenant_zone_and_day_night_feature_code(pbx, tmp_path):
    t = await tenant_with(pbx, "1002", "1003", "1009", timezone=TZ)
    here = dt.datetime.now(ZoneInfo(TZ)).date().isoformat()
    utc = dt.datetime.now(dt.timezone.utc).date().isoformat()
    rules = [{"when": {"dates": [here]}, "to": "1002"}]
    if utc != here:  # evaluated in UTC instead, this rule would win
        rules.insert(0, {"when": {"dates": [utc]}, "to": "1003"})
    await time_switch.save(pbx.config, t.id, "500", {"toggle": "main", "night": "1009", "rules": rules, "default": "1003"})
    await feature_codes.save(pbx.config, t.id, "*33", {"action": "daynight_toggle", "toggle": "main"})
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p3 = await phone(pbx, tmp_path, t, "1003", "uas_answer.xml")
    p9 = await phone(pbx, tmp_path, t, "1009", "uas_answer.xml")
    try:
        (await dial(pbx, tmp_path, "500", duration_ms=200, name="day").run()).assert_ok()
        toggle = await dial(pbx, tmp_path, "*33", "uac_call_remote_bye.xml", "toggle").run()
        toggle.assert_ok()  # answered by the node, a beep, hung up
        assert await time_switch.get_mode(pbx.config, t.id, "main") == "night"
        (await dial(pbx, tmp_path, "500", duration_ms=200, name="night").run()).assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r3, r9 = await stop_all(p2, p3, p9)
    assert len(r2.received("INVITE")) == 1, "the day call did not follow the date rule"
    assert not r3.received("INVITE"), "rule evaluated outside the tenant's time zone"
    assert len(r9.received("INVITE")) == 1, "the night toggle did not take effect"
    cdrs = await pbx.wait_cdrs(t.id, 3)
    assert sorted((c.callee, c.disposition) for c in cdrs) == [("*33", "answered"), ("500", "answered"), ("500", "answered")]


async def test_cli_configures_a_running_node_and_daynight_takes_effect_on_next_call(pbx, tmp_path):
    from node.cli import main

    t = await tenant_with(pbx, "1002", "1009")
    d = ["--data-dir", str(pbx.node.cfg.data_dir)]

    async def cli(*argv: str) -> None:
        assert await asyncio.to_thread(main, [*argv, *d]) == 0, argv

    await cli("timeswitch", "add", "alpha", "500", '{"toggle": "main", "night": "1009", "default": "1002"}')
    # let the node take in the CLI's commit before phones register: the embedded location
    # store's write-behind otherwise reloads its index over a binding not yet written
    await asyncio.sleep(1.2)
    await pbx.config.list_tenants()
    p2 = await phone(pbx, tmp_path, t, "1002", "uas_answer.xml")
    p9 = await phone(pbx, tmp_path, t, "1009", "uas_answer.xml")
    try:
        (await dial(pbx, tmp_path, "500", duration_ms=200, name="day").run()).assert_ok()
        await cli("daynight", "alpha", "night")
        # the node notices another process's commit within POLL_INTERVAL (node/embedded/db.py):
        # the call waits for that, not for a guessed sleep
        deadline = asyncio.get_running_loop().time() + 5.0
        while await time_switch.get_mode(pbx.config, t.id, "main") != "night":
            assert asyncio.get_running_loop().time() < deadline, "the node never saw the CLI's night"
            await asyncio.sleep(0.05)
        (await dial(pbx, tmp_path, "500", duration_ms=200, name="night").run()).assert_ok()
        await asyncio.sleep(0.3)
    finally:
        r2, r9 = await stop_all(p2, p9)
    assert len(r2.received("INVITE")) == 1 and len(r9.received("INVITE")) == 1
