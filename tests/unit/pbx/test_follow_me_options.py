"""Follow-me per-destination options (node/pbx/forwarding.py): ``active`` periods in the
tenant's time zone and ``confirm`` ("press 1 to accept", node/pbx/answer_confirm.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from node.config_rules import ConfigError
from node.pbx import answer_confirm, forwarding
from node.pbx.dialplan import Ctx, FeatureState
from tests.unit.pbx._fixtures import alpha_beta, binding


async def _setup(store):
    a, b = await alpha_beta(store, ("1001", "1002", "1003", "1009"), ("2002",))
    for n in ("1002", "1003", "1009"):
        await store.locations.save(binding(a.id, n, 6000 + int(n) % 100))
    await store.config.create_trunk(a.id, "carrier", "127.0.0.5", port=5080)
    await store.config.create_route(a.id, "0", "carrier")
    return a, b


def test_validation_of_confirm_and_active():
    fm = lambda d: {"follow_me": {"mode": "ordered", "destinations": [d]}}  # noqa: E731
    with pytest.raises(ConfigError, match="confirm must be true or false"):
        forwarding.validate(fm({"to": "1003", "confirm": "yes"}))
    with pytest.raises(ConfigError, match="follow_me destination 1 active period: time"):
        forwarding.validate(fm({"to": "1003", "active": {"time": "9-5"}}))
    with pytest.raises(ConfigError, match="allowed: active, confirm, ring, to"):
        forwarding.validate(fm({"to": "1003", "screen": True}))
    out = forwarding.validate(fm({"to": "tel:0301234", "confirm": True, "active": {"weekdays": "mon-fri"}}))
    assert out["follow_me"]["destinations"] == [{"to": "tel:0301234", "confirm": True, "active": {"weekdays": "mon-fri"}}]
    assert forwarding.validate(fm({"to": "1003", "confirm": False}))["follow_me"]["destinations"] == [{"to": "1003"}]


async def test_destination_active_period_in_tenant_time_zone(store):
    a, _ = await _setup(store)
    a = dataclasses.replace(a, timezone="America/New_York")
    doc = forwarding.validate({"follow_me": {"mode": "ordered", "destinations": [
        {"to": "1003", "ring": 5, "active": {"time": "08:00-18:00"}}, {"to": "1009", "ring": 5}]}})
    ny_morning = dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.timezone.utc).timestamp()  # 09:00 in New York
    ny_night = dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.timezone.utc).timestamp()  # 21:00 in New York
    for now, expected in ((ny_morning, ["sip:1003@127.0.0.1:6003", "sip:1009@127.0.0.1:6009"]),
                          (ny_night, ["sip:1009@127.0.0.1:6009"])):
        ctx = Ctx(a, store.config, store.locations, FeatureState(), now=now)
        frag = await forwarding.compile_extension(ctx, "1002", doc, 0)
        assert [g[0].ruri for g in ctx.attempts[frag.entry:]] == expected
    for mode in ("ordered", "simultaneous"):
        ctx = Ctx(a, store.config, store.locations, FeatureState(), now=ny_night)
        only_day = dict(doc, follow_me={"mode": mode, "destinations": [doc["follow_me"]["destinations"][0]]})
        frag = await forwarding.compile_extension(ctx, "1002", only_day, 0)
        assert frag.entry is None and frag.status == 480  # nothing active: nobody to ring


async def test_confirm_marks_only_that_destinations_targets(store):
    a, _ = await _setup(store)
    doc = forwarding.validate({"follow_me": {"mode": "ordered", "destinations": [
        {"to": "1003", "ring": 5}, {"to": "tel:0301234", "ring": 9, "confirm": True}]}})
    ctx = Ctx(a, store.config, store.locations, FeatureState())
    frag = await forwarding.compile_extension(ctx, "1002", doc, 0)
    plan = ctx.plan(frag, "internal", "1002")
    assert [[(t.ruri, t.confirm_for) for t in g] for g in plan.attempts] == [
        [("sip:1003@127.0.0.1:6003", "")], [("sip:0301234@127.0.0.5:5080", "1002")]]
    doc = forwarding.validate({"follow_me": {"mode": "simultaneous", "destinations": [
        {"to": "1003", "confirm": True}, {"to": "1009"}]}})
    ctx = Ctx(a, store.config, store.locations, FeatureState())
    frag = await forwarding.compile_extension(ctx, "1002", doc, 0)
    assert [(t.ruri, t.confirm_for) for t in ctx.attempts[frag.entry]] == [
        ("sip:1003@127.0.0.1:6003", "1002"), ("sip:1009@127.0.0.1:6009", "")]


def test_prompt_text_and_path_are_tenant_scoped(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr("node.media_engine.prompts.synthesize", lambda text, dst: (made.append(text), dst.write_bytes(b"x")))
    p = answer_confirm.prompt_path(tmp_path, 7, "1002", "")
    assert p.parent == tmp_path / "confirm" / "7" and made == ["Call for 1 0 0 2. Press 1 to accept."]
    assert answer_confirm.prompt_path(tmp_path, 7, "1002", "") == p and len(made) == 1  # made once
    assert answer_confirm.prompt_text("1002", "Alice Smith") == "Call for Alice Smith. Press 1 to accept."
    with pytest.raises(ValueError):
        answer_confirm.prompt_path(tmp_path, 7, "../x", "")
