"""Time switches, holiday lists and day/night toggles on the embedded store."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from node.config_rules import ConfigError
from node.model import Binding
from node.pbx import time_switch
from node.pbx.dialplan import FeatureState, plan_inbound, plan_outgoing


def berlin(*args) -> float:
    from zoneinfo import ZoneInfo

    return dt.datetime(*args, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()


async def _setup(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example", timezone="Europe/Berlin")
    b = await c.create_tenant("beta", "beta.example")
    for n in ("1001", "1002", "1003", "1009"):
        await c.create_extension(a.id, n, f"secret-{n}")
        await store.locations.save(Binding(
            tenant_id=a.id, extension=n, contact=f"sip:{n}@127.0.0.1:{6000 + int(n) % 100}", source_host="127.0.0.1",
            source_port=6000 + int(n) % 100, transport="udp", expires_at=time.time() + 60, call_id=n, cseq=1))
    await c.create_extension(b.id, "2002", "secret-2002")
    await time_switch.save_holidays(c, a.id, "public", {"dates": ["12-25", "2026-04-03"]})
    await time_switch.save(c, a.id, "500", {
        "toggle": "main", "night": "1009",
        "rules": [{"when": {"holidays": "public"}, "to": "1009"},
                  {"when": {"weekdays": "mon-fri", "time": "08:00-18:00"}, "caller": {"countries": ["DE"]}, "to": "1002"},
                  {"when": [{"weekdays": "mon-fri", "time": "08:00-18:00"}, {"weekdays": "sat", "time": "10:00-12:00"}],
                   "to": "1003"}],
        "default": "1009"})
    return a, b


async def test_choose_by_time_caller_holiday_and_toggle(store):
    a, _ = await _setup(store)
    doc = await store.config.get_object(a.id, "time_switch", "500")
    c = store.config
    tue_morning = berlin(2026, 12, 1, 9, 0)
    assert await time_switch.choose(c, a, doc, "+493012345", tue_morning) == "1002"   # German caller
    assert await time_switch.choose(c, a, doc, "+447700900123", tue_morning) == "1003"  # UK caller
    assert await time_switch.choose(c, a, doc, "+447700900123", berlin(2026, 12, 5, 11, 0)) == "1003"  # Saturday
    assert await time_switch.choose(c, a, doc, "+493012345", berlin(2026, 12, 1, 18, 0)) == "1009"  # closed
    assert await time_switch.choose(c, a, doc, "+493012345", berlin(2026, 12, 25, 9, 0)) == "1009"  # holiday
    # 07:30 UTC on a Tuesday is 08:30 in Berlin: open (the tenant's zone counts, not the server's)
    assert await time_switch.choose(c, a, doc, "+493012345", dt.datetime(2026, 12, 1, 7, 30, tzinfo=dt.timezone.utc).timestamp()) == "1002"
    assert await time_switch.set_mode(c, a.id, "main", None) == "night"
    assert await time_switch.choose(c, a, doc, "+493012345", tue_morning) == "1009"
    assert await time_switch.set_mode(c, a.id, "main", "day") == "day"
    assert await time_switch.choose(c, a, doc, "+493012345", tue_morning) == "1002"


async def test_switch_as_dialled_number_and_did_destination(store):
    a, _ = await _setup(store)
    caller = await store.config.get_extension(a.id, "1001")
    await time_switch.set_mode(store.config, a.id, "main", "night")
    plan = await plan_outgoing(a, caller, "500", store.config, store.locations, FeatureState())
    assert [t.ruri for t in plan.attempts[0]] == ["sip:1009@127.0.0.1:6009"] and plan.callee == "500"
    await store.config.create_trunk(a.id, "carrier", "127.0.0.3")
    await store.config.create_did(a.id, "+4930555", "time_switch", "500")
    trunks = await store.config.trunks_by_address("127.0.0.3")
    plan = await plan_inbound(trunks, "4930555", "+493012345", store.config, store.locations, FeatureState())
    assert [t.ruri for t in plan.attempts[0]] == ["sip:1009@127.0.0.1:6009"] and plan.direction == "inbound"


async def test_validation(store):
    a, b = await _setup(store)
    c = store.config
    with pytest.raises(ConfigError, match="rule 1: .*not a time HH:MM"):
        await time_switch.save(c, a.id, "501", {"rules": [{"when": {"time": "8-9"}, "to": "1002"}]})
    with pytest.raises(ConfigError, match="neither 'when' nor 'caller'"):
        await time_switch.save(c, a.id, "501", {"rules": [{"to": "1002"}]})
    with pytest.raises(ConfigError, match="needs a 'night' destination"):
        await time_switch.save(c, a.id, "501", {"toggle": "main", "default": "1002"})
    with pytest.raises(ConfigError, match="no holiday list 'bank'"):
        await time_switch.save(c, a.id, "501", {"rules": [{"when": {"holidays": "bank"}, "to": "1002"}]})
    with pytest.raises(ConfigError, match="2002 is no extension"):
        await time_switch.save(c, a.id, "501", {"default": "2002"})  # beta's extension
    with pytest.raises(ConfigError, match="not an ISO 3166 country"):
        await time_switch.save(c, a.id, "501", {"rules": [{"caller": {"countries": ["XX"]}, "to": "1002"}]})
    with pytest.raises(ConfigError, match="use day or night"):
        await time_switch.set_mode(c, a.id, "main", "evening")
    # beta's toggle of the same name is its own
    await time_switch.set_mode(c, b.id, "main", "night")
    assert await time_switch.get_mode(c, a.id, "main") == "day"


async def test_switch_can_send_a_call_to_an_application(store):
    a, _ = await _setup(store)
    await store.config.put_object(a.id, "ivr", "800", {"prompt": "welcome"})
    await time_switch.save(store.config, a.id, "501", {"default": "800"})
    caller = await store.config.get_extension(a.id, "1001")
    plan = await plan_outgoing(a, caller, "501", store.config, store.locations, FeatureState())
    assert (plan.app.kind, plan.app.name) == ("ivr", "800") and plan.attempts == []
