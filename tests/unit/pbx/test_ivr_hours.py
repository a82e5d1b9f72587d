"""IVR open hours: judged in the tenant's time zone at a pinned "now", the closed prompts and
the out-of-hours destination outside them, the normal menu inside, and the new keys'
validation messages."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from node.config_rules import ConfigError
from node.pbx import ivr
from tests.unit.pbx.test_ivr import Caller

TZ = "America/New_York"
HOURS = {"weekdays": "mon-fri", "time": "08:00-18:00"}
MENU = {"prompt": ["menu"], "options": {"1": "1002"}, "active": HOURS, "out_of_hours": "1003"}


def _at(y, mo, d, h, mi, tz=TZ) -> float:
    return dt.datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).timestamp()


class Hours(Caller):
    def __init__(self, keys, *, holidays=None, **kw) -> None:
        super().__init__(keys, **kw)
        self.tenant = SimpleNamespace(id=1, name="t", timezone=TZ)
        objects = {("holidays", k): v for k, v in (holidays or {}).items()}

        async def get_object(tenant_id, kind, name):
            return objects.get((kind, name))

        self.config.get_object = get_object


@pytest.fixture
def pinned(monkeypatch):
    def pin(ts: float) -> None:
        monkeypatch.setattr(ivr, "clock", lambda: ts)
    return pin


async def test_closed_plays_announcement_then_goes_out_of_hours(pinned):
    # Tuesday 2026-03-03 07:30 in New York is 12:30 UTC: closed there, open if judged in UTC
    pinned(_at(2026, 3, 3, 7, 30))
    c = Hours(["1"])
    await ivr.run(c, "800", MENU)
    assert c.log == [("play", ("closed",), False), ("transfer", "1003")]


async def test_open_runs_the_menu(pinned):
    pinned(_at(2026, 3, 3, 17, 59))
    c = Hours(["1"])
    await ivr.run(c, "800", MENU)
    assert ("transfer", "1002") in c.log and ("play", ("closed",), False) not in c.log


async def test_closed_without_destination_hangs_up_and_own_prompt_plays(pinned):
    pinned(_at(2026, 3, 7, 12, 0))  # a Saturday
    c = Hours(["1"])
    await ivr.run(c, "800", {"options": {"1": "1002"}, "active": [HOURS, {"weekdays": "sat", "time": "09:00-11:00"}],
                             "closed": ["night-greeting"]})
    assert c.log == [("play", ("night-greeting",), False)]


async def test_holiday_list_closes_and_failed_target_says_goodbye(pinned):
    pinned(_at(2026, 12, 24, 10, 0))  # a Thursday, inside the weekday hours
    doc = dict(MENU, active={"weekdays": "mon-fri", "time": "08:00-18:00"}, out_of_hours={"type": "extension", "value": "1003"})
    open_doc = dict(doc, active=[{"holidays": "xmas"}])
    c = Hours(["1"], holidays={"xmas": {"dates": ["12-24"]}}, transfers={"1003": 486})
    assert await ivr.is_open(c.config, c.tenant, open_doc)
    assert not await ivr.is_open(c.config, c.tenant, dict(doc, active={"weekdays": "mon-fri", "dates": ["12-25"]}))
    # missing holiday list never holds
    assert not await ivr.is_open(c.config, c.tenant, dict(doc, active={"holidays": "nope"}))
    pinned(_at(2026, 12, 24, 19, 0))
    await ivr.run(c, "800", doc)
    assert c.played() == [("closed",), ("unavailable",), ("goodbye",)]


async def test_no_active_means_always_open(pinned):
    pinned(_at(2026, 3, 7, 3, 0))
    c = Hours(["1"])
    await ivr.run(c, "800", {"options": {"1": "1002"}})
    assert ("transfer", "1002") in c.log


def test_hours_validation_messages():
    ok = ivr.validate(dict(MENU, out_of_hours="sip:night@192.0.2.7"))
    assert ok["closed"] == ["closed"] and ok["out_of_hours"] == {"type": "uri", "value": "sip:night@192.0.2.7"}
    assert ivr.validate(MENU)["out_of_hours"] == {"type": "extension", "value": "1003"}
    assert "active" not in ivr.validate({"options": {"1": "1002"}})
    cases = [
        (dict(MENU, active={"time": "25:00-26:00"}), "IVR active .open hours.: time"),
        (dict(MENU, active={"weekday": "mon"}), "unknown time condition field"),
        (dict(MENU, active=[]), None),  # an empty list: treated as "no hours", but then the others complain
        (dict(MENU, closed=["Bad Name"]), "IVR closed: prompt name"),
        (dict(MENU, out_of_hours={"type": "repeat"}), "out_of_hours cannot be 'repeat'"),
        (dict(MENU, out_of_hours={"type": "teleport"}), "IVR out_of_hours: destination type"),
        (dict(MENU, out_of_hours="sip:x@example.com"), "host of a SIP URI must be an IP address"),
        ({"options": {"1": "1002"}, "out_of_hours": "1003"}, "needs 'active'"),
    ]
    for doc, msg in cases:
        if msg is None:
            with pytest.raises(ConfigError, match="needs 'active'"):
                ivr.validate(doc)
            continue
        with pytest.raises(ConfigError, match=msg):
            ivr.validate(doc)


async def test_put_checks_holiday_lists_and_targets_in_the_tenant():
    from node.pbx.time_switch import save_holidays

    store: dict = {}

    class Config:
        async def get_object(self, tenant_id, kind, name):
            return store.get((tenant_id, kind, name))

        async def put_object(self, tenant_id, kind, name, doc):
            store[(tenant_id, kind, name)] = doc

        async def get_extension(self, tenant_id, number):
            return object() if (tenant_id, number) in {(1, "1002"), (1, "1003")} else None

    cfg = Config()
    with pytest.raises(ConfigError, match="no holiday list 'public'"):
        await ivr.put(cfg, 1, "800", dict(MENU, active={"holidays": "public"}))
    await save_holidays(cfg, 2, "public", {"dates": ["12-25"]})  # another tenant's list does not count
    with pytest.raises(ConfigError, match="no holiday list 'public'"):
        await ivr.put(cfg, 1, "800", dict(MENU, active={"holidays": "public"}))
    with pytest.raises(ConfigError, match="1009 is no extension"):
        await ivr.put(cfg, 1, "800", dict(MENU, out_of_hours="1009"))
    with pytest.raises(ConfigError, match="no IVR 801"):
        await ivr.put(cfg, 1, "800", dict(MENU, out_of_hours={"type": "ivr", "value": "801"}))
    with pytest.raises(ConfigError, match="itself"):
        await ivr.put(cfg, 1, "800", dict(MENU, out_of_hours={"type": "ivr", "value": "800"}))
    await ivr.put(cfg, 1, "800", MENU)
    assert store[(1, "ivr", "800")]["active"] == HOURS
