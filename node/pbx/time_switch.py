"""Time switches (kind ``time_switch``, named by the number that reaches them), holiday
lists (kind ``holidays``) and day/night toggles (kind ``daynight``).

    time_switch "500": {"toggle": "main", "night": "1009",
                        "rules": [{"when": {"holidays": "public"}, "to": "1009"},
                                  {"when": {"weekdays": "mon-fri", "time": "08:00-18:00"},
                                   "caller": {"countries": ["DE"]}, "to": "600"}],
                        "default": "tel:+4930999"}
    holidays "public":  {"dates": ["12-25", "12-26", "2026-04-03"]}
    daynight "main":    {"mode": "night"}

The toggle wins while it says night (an office closing early flips it with a feature code
or ``hivepbx daynight``; the next call sees it). Otherwise the first rule whose ``when``
(node/pbx/time_rules.py, the tenant's time zone) and ``caller`` (node/pbx/screening.py)
hold decides; else ``default``; with no default the caller hears 480 (closed).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from node.config_rules import ConfigError, extension_number
from node.pbx import destinations, screening, time_rules
from node.ports import ConfigStore

if TYPE_CHECKING:
    from node.pbx.dialplan import Ctx, Frag

KIND = "time_switch"
HOLIDAYS = "holidays"
DAYNIGHT = "daynight"
MODES = ("day", "night")
_KEYS = ("rules", "default", "toggle", "night", "name")
MAX_RULES = 100


def validate(doc: object) -> dict:
    if not isinstance(doc, dict):
        raise ConfigError("a time switch must be a JSON object")
    extra = sorted(set(doc) - set(_KEYS))
    if extra:
        raise ConfigError(f"unknown time switch field(s): {', '.join(extra)} (allowed: {', '.join(_KEYS)})")
    rules = doc.get("rules", [])
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise ConfigError(f"time switch rules must be a list of at most {MAX_RULES} rules")
    out_rules = []
    for i, r in enumerate(rules, 1):
        if not isinstance(r, dict) or set(r) - {"when", "caller", "to"} or "to" not in r:
            raise ConfigError(f'time switch rule {i}: use {{"when": {{...}}, "caller": {{...}}, "to": destination}}')
        if "when" not in r and "caller" not in r:
            raise ConfigError(f"time switch rule {i} has neither 'when' nor 'caller': it would always hold")
        e: dict = {"to": str(destinations.parse(r["to"], f"destination of time switch rule {i}"))}
        if "when" in r:
            try:
                time_rules.parse_when(r["when"])
            except ConfigError as err:
                raise ConfigError(f"time switch rule {i}: {err}") from None
            e["when"] = r["when"]
        if "caller" in r:
            e["caller"] = screening.validate_caller_match(r["caller"], f"time switch rule {i} caller")
        out_rules.append(e)
    out: dict = {"rules": out_rules}
    for key in ("default", "night"):
        if doc.get(key) not in (None, ""):
            out[key] = str(destinations.parse(doc[key], f"time switch {key} destination"))
    if doc.get("toggle") not in (None, ""):
        out["toggle"] = toggle_name(doc["toggle"])
        if "night" not in out:
            raise ConfigError("a time switch with a day/night toggle needs a 'night' destination")
    if doc.get("name"):
        if not isinstance(doc["name"], str) or len(doc["name"]) > 64:
            raise ConfigError("time switch name must be text of at most 64 characters")
        out["name"] = doc["name"]
    return out


def toggle_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > 32 or not value.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"day/night toggle name {value!r}: 1-32 letters, digits, '-' or '_'")
    return value.strip()


async def save(config: ConfigStore, tenant_id: int, number: str, doc: object) -> dict:
    number = extension_number(number)
    out = validate(doc)
    for where, dest in [("default", out.get("default")), ("night", out.get("night"))] + [
        (f"rule {i}", r["to"]) for i, r in enumerate(out["rules"], 1)
    ]:
        if dest is None:
            continue
        if dest == number:
            raise ConfigError(f"time switch {number} cannot send a call to itself ({where})")
        await destinations.check(config, tenant_id, dest, f"time switch {where} destination")
    for i, r in enumerate(out["rules"], 1):
        for cond in time_rules.parse_when(r.get("when", {})):
            if cond.holidays and await config.get_object(tenant_id, HOLIDAYS, cond.holidays) is None:
                raise ConfigError(f"time switch rule {i}: no holiday list {cond.holidays!r} in this tenant", 404)
    await config.put_object(tenant_id, KIND, number, out)
    return out


async def save_holidays(config: ConfigStore, tenant_id: int, name: str, doc: object) -> dict:
    if not isinstance(doc, dict) or set(doc) != {"dates"}:
        raise ConfigError('a holiday list must be {"dates": ["YYYY-MM-DD", "MM-DD", "YYYY-MM-DD..YYYY-MM-DD", ...]}')
    time_rules.parse_dates(doc["dates"], f"holiday list {name}")
    await config.put_object(tenant_id, HOLIDAYS, name, {"dates": doc["dates"]})
    return doc


async def set_mode(config: ConfigStore, tenant_id: int, toggle: str, mode: str | None) -> str:
    """Set a day/night toggle (None flips it); the new mode."""
    toggle = toggle_name(toggle)
    if mode is None:
        mode = "day" if await get_mode(config, tenant_id, toggle) == "night" else "night"
    if mode not in MODES:
        raise ConfigError(f"day/night mode {mode!r}: use day or night")
    await config.put_object(tenant_id, DAYNIGHT, toggle, {"mode": mode})
    return mode


async def get_mode(config: ConfigStore, tenant_id: int, toggle: str) -> str:
    doc = await config.get_object(tenant_id, DAYNIGHT, toggle)
    return (doc or {}).get("mode", "day")


async def choose(config: ConfigStore, tenant, doc: dict, caller: str, now: float | None = None) -> str | None:
    """The destination this switch picks for a call now (None: closed)."""
    if doc.get("toggle") and await get_mode(config, tenant.id, doc["toggle"]) == "night":
        return doc["night"]
    when = time_rules.local(time.time() if now is None else now, tenant.timezone or "UTC")
    holidays: dict[str, time_rules.DateSet] = {}
    for rule in doc.get("rules", []):
        conds = time_rules.parse_when(rule.get("when", {}))
        for c in conds:
            if c.holidays and c.holidays not in holidays:
                h = await config.get_object(tenant.id, HOLIDAYS, c.holidays)
                holidays[c.holidays] = time_rules.parse_dates(h["dates"]) if h else time_rules.DateSet(frozenset(), frozenset(), ())
        if not time_rules.holds(conds, when, holidays):
            continue
        if "caller" in rule and not await screening.caller_matches(config, tenant.id, rule["caller"], caller):
            continue
        return rule["to"]
    return doc.get("default")


async def compile_switch(ctx: "Ctx", number: str, doc: dict) -> "Frag":
    from node.pbx.dialplan import Frag

    dest = await choose(ctx.config, ctx.tenant, doc, ctx.caller_number, ctx.now)
    if dest is None:
        return Frag(None, [], 480, "Temporarily Unavailable (closed)")
    return await ctx.dest(dest)
