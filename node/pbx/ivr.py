"""IVR / auto attendant: menus as feature objects (kind 'ivr'), run by the node's media engine.

An IVR is named by a number ("800"): dialling it, or a DID of type 'ivr' with that value,
reaches it. Its document (all keys optional except what a menu needs to be useful):

    {"intro": ["welcome"],                 # played once on entry, not interruptible
     "prompt": ["menu"],                   # the menu, interruptible by a key
     "timeout": 5,                         # seconds to wait for a key after the menu
     "digit_timeout": 2,                   # seconds between digits when dialling an extension
     "direct_dial": true,                  # keys may spell an extension number of the tenant
     "attempts": 3,                        # menu plays at most; then "goodbye" and hang up
     "options": {"1": {"type": "extension", "value": "1002", "announce": ["transferring"]},
                 "2": {"type": "ivr", "value": "801"},
                 "9": {"type": "external", "value": "+4930123456"},
                 "0": "1000"},             # a plain string: an internal number (or tel:/+ external)
     "invalid": {"type": "repeat", "announce": ["invalid"]},   # unknown key (this is the default)
     "no_input": {"type": "repeat", "announce": ["no-input"]}, # timeout (this is the default)
     "active": {"weekdays": "mon-fri", "time": "08:00-18:00"},  # open hours (or a list of them)
     "closed": ["closed"],                 # played outside them (this is the default)
     "out_of_hours": "1009"}               # then this destination; left out: hang up

Destination types: 'extension' (any internal number: an extension with its forwarding, a hunt
group, a time switch, another IVR — compiled by node/pbx/dialplan.py as for a dialled call),
'external' (through the outbound routes), 'ivr' (another menu), 'repeat' (the menu again), 'hangup'.
Other features add theirs with ``register_destination`` (voicemail, queue, conference: a
validator for the document and a coroutine that runs it). Each destination may carry
"announce": prompts played (not interruptible) before it runs. Prompt names are the
tenant's recordings or the defaults (node/media_engine/prompts.py).

A transfer that fails (busy, no answer) plays "unavailable" and returns to the menu.

Open hours: "active" is a time condition of node/pbx/time_rules.py (holiday lists included),
judged in the tenant's time zone when the call reaches the menu. Outside it the caller hears
the "closed" prompts and goes to "out_of_hours" (any destination an option may have, a
destination string of node/pbx/destinations.py included), or is hung up on when there is
none: one menu number serves day and night without a time switch in front of it. A menu
without "active" is always open.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Awaitable, Callable

from node.config_rules import ConfigError
from node.pbx import destinations, time_rules
from node.pbx.app_call import AppContext, register_app

log = logging.getLogger("hivepbx.ivr")

KIND = "ivr"
KEYS = "0123456789*#"
_NUMBER = re.compile(r"[0-9]{2,10}\Z")
_EXTERNAL = re.compile(r"\+?[0-9]{2,20}\Z")
_PROMPT = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")
_MAX_PROMPTS = 10
DEFAULT_INVALID = {"type": "repeat", "announce": ["invalid"]}
DEFAULT_NO_INPUT = {"type": "repeat", "announce": ["no-input"]}

#: what a destination does: 'repeat' (play the menu again) or 'done' (the IVR is over)
Outcome = str
DestFn = Callable[[AppContext, dict], Awaitable[Outcome]]
#: type → (validate value → normalised value, run)
DESTINATIONS: dict[str, tuple[Callable[[object], str], DestFn]] = {}
#: destinations that make no sense outside open hours (there is no menu to go back to)
_NOT_OUT_OF_HOURS = ("repeat",)
#: the wall clock open hours are judged by (tests pin it)
clock: Callable[[], float] = time.time


def register_destination(kind: str, validate: Callable[[object], str], run: DestFn) -> None:
    """Let IVR options lead to another feature ('voicemail', 'queue', ...)."""
    DESTINATIONS[kind] = (validate, run)


# ------------------------------------------------------------------ validation
def _prompts(value: object, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > _MAX_PROMPTS:
        raise ConfigError(f"{what} must be a list of up to {_MAX_PROMPTS} prompt names")
    for p in value:
        if not isinstance(p, str) or not _PROMPT.match(p):
            raise ConfigError(f"{what}: prompt name {p!r} must be 1-64 lower-case letters, digits, '-' or '_'")
    return list(value)


def _seconds(doc: dict, key: str, default: float, lo: float, hi: float) -> float:
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"IVR {key} must be a number of seconds between {lo:g} and {hi:g}, not {v!r}")
    return v


def _internal(value: object) -> str:
    if not isinstance(value, str) or not _NUMBER.match(value):
        raise ConfigError(f"internal number {value!r}: use 2 to 10 digits")
    return value


def _external(value: object) -> str:
    v = value.strip().replace(" ", "") if isinstance(value, str) else value
    if isinstance(v, str) and v.lower().startswith("tel:"):
        v = v[4:]
    if not isinstance(v, str) or not _EXTERNAL.match(v):
        raise ConfigError(f"external number {value!r}: use 2 to 20 digits, optionally with a leading +")
    return v


def _uri(value: object) -> str:
    dest = destinations.parse(value, "SIP URI destination")
    if dest.kind != "uri":
        raise ConfigError(f"SIP URI destination {value!r}: write sip:user@IP")
    return dest.value


def _none(value: object) -> str:
    return ""


def destination(value: object, what: str) -> dict:
    """A destination in its normalised dict form (a string is shorthand for a number)."""
    if isinstance(value, str):
        v = value.strip()
        if v.lower().startswith("sip:"):
            value = {"type": "uri", "value": v}
        elif v.lower().startswith("tel:") or v.startswith("+") or len(v) > 10:
            value = {"type": "external", "value": v}
        else:
            value = {"type": "extension", "value": v}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a destination such as {{\"type\": \"extension\", \"value\": \"1002\"}}")
    extra = set(value) - {"type", "value", "announce"}
    if extra:
        raise ConfigError(f"{what}: unknown key(s) {', '.join(sorted(extra))} (allowed: type, value, announce)")
    kind = value.get("type")
    if kind not in DESTINATIONS:
        raise ConfigError(f"{what}: destination type {kind!r} unknown: use one of {', '.join(DESTINATIONS)}")
    validate, _ = DESTINATIONS[kind]
    try:
        v = validate(value.get("value"))
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    out: dict = {"type": kind}
    if v:
        out["value"] = v
    announce = _prompts(value.get("announce"), f"{what} announce")
    if announce:
        out["announce"] = announce
    return out


def validate(doc: object) -> dict:
    """The normalised IVR document, or ConfigError saying what is wrong."""
    if not isinstance(doc, dict):
        raise ConfigError("an IVR is a JSON object (see node/pbx/ivr.py for its keys)")
    allowed = {"intro", "prompt", "timeout", "digit_timeout", "direct_dial", "attempts", "options", "invalid", "no_input",
               "active", "closed", "out_of_hours"}
    extra = set(doc) - allowed
    if extra:
        raise ConfigError(f"unknown IVR key(s) {', '.join(sorted(extra))} (allowed: {', '.join(sorted(allowed))})")
    out: dict = {
        "intro": _prompts(doc.get("intro"), "IVR intro"),
        "prompt": _prompts(doc.get("prompt", ["menu"]), "IVR prompt"),
        "timeout": _seconds(doc, "timeout", 5, 0.5, 60),
        "digit_timeout": _seconds(doc, "digit_timeout", 2, 0.5, 10),
    }
    dd = doc.get("direct_dial", False)
    if not isinstance(dd, bool):
        raise ConfigError(f"IVR direct_dial must be true or false, not {dd!r}")
    out["direct_dial"] = dd
    attempts = doc.get("attempts", 3)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or not 1 <= attempts <= 10:
        raise ConfigError(f"IVR attempts must be a whole number from 1 to 10, not {attempts!r}")
    out["attempts"] = attempts
    options = doc.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError("IVR options must map keys (0-9, *, #) to destinations")
    out["options"] = {}
    for key, dest in options.items():
        if not isinstance(key, str) or len(key) != 1 or key not in KEYS:
            raise ConfigError(f"IVR option key {key!r}: use one of 0-9, * or #")
        out["options"][key] = destination(dest, f"IVR option {key}")
    out["invalid"] = destination(doc.get("invalid", DEFAULT_INVALID), "IVR invalid")
    out["no_input"] = destination(doc.get("no_input", DEFAULT_NO_INPUT), "IVR no_input")
    if not out["options"] and not dd:
        raise ConfigError("an IVR needs options or direct_dial, else no key leads anywhere")
    out.update(_hours(doc))
    return out


def _hours(doc: dict) -> dict:
    """The open-hours keys, normalised; {} for a menu that is always open."""
    if doc.get("active") in (None, {}, []):
        for key in ("closed", "out_of_hours"):
            if doc.get(key) not in (None, [], ""):
                raise ConfigError(f"IVR {key} needs 'active' (the open hours) to ever be used")
        return {}
    try:
        time_rules.parse_when(doc["active"])
    except ConfigError as e:
        raise ConfigError(f"IVR active (open hours): {e}") from None
    out: dict = {"active": doc["active"], "closed": _prompts(doc.get("closed", ["closed"]), "IVR closed")}
    if doc.get("out_of_hours") not in (None, ""):
        dest = destination(doc["out_of_hours"], "IVR out_of_hours")
        if dest["type"] in _NOT_OUT_OF_HOURS:
            raise ConfigError(f"IVR out_of_hours cannot be {dest['type']!r}: outside open hours there is no menu"
                              " (leave it out to hang up)")
        out["out_of_hours"] = dest
    return out


async def is_open(config, tenant, doc: dict, now: float | None = None) -> bool:
    """Whether the menu is within its open hours (always, without 'active'), in the
    tenant's time zone; holiday lists come from the tenant's config (a missing one never holds)."""
    if not doc.get("active"):
        return True
    from node.pbx.time_switch import HOLIDAYS

    conds = time_rules.parse_when(doc["active"])
    holidays: dict[str, time_rules.DateSet] = {}
    for c in conds:
        if c.holidays and c.holidays not in holidays:
            h = await config.get_object(tenant.id, HOLIDAYS, c.holidays)
            holidays[c.holidays] = time_rules.parse_dates(h["dates"]) if h else time_rules.DateSet(frozenset(), frozenset(), ())
    when = time_rules.local(clock() if now is None else now, getattr(tenant, "timezone", "") or "UTC")
    return time_rules.holds(conds, when, holidays)


def name(value: object) -> str:
    """IVRs are reached by dialling their name: a number like an extension's."""
    if not isinstance(value, str) or not _NUMBER.match(value):
        raise ConfigError(f"IVR name {value!r}: use 2 to 10 digits (callers dial it, DIDs point at it)")
    return value


async def put(config, tenant_id: int, ivr_name: str, doc: object) -> dict:
    """Validate and store an IVR (the CLI and API go through here). The number must not be
    an extension of the tenant: the IVR would silently take its calls."""
    n = name(ivr_name)
    out = validate(doc)
    taken = await destinations.internal_kind(config, tenant_id, n)
    if taken is not None and taken != KIND:  # replacing the IVR itself is fine
        raise ConfigError(f"{n} is {'an' if taken == 'extension' else 'a'} {taken.replace('_', ' ')} of this tenant:"
                          " pick another number for the IVR", 409)
    await _check_hours(config, tenant_id, n, out)
    await config.put_object(tenant_id, KIND, n, out)
    return out


async def _check_hours(config, tenant_id: int, number: str, doc: dict) -> None:
    """What validation alone cannot see: the holiday lists and the out-of-hours target exist
    in this tenant."""
    from node.pbx.time_switch import HOLIDAYS

    if "active" not in doc:
        return
    for cond in time_rules.parse_when(doc["active"]):
        if cond.holidays and await config.get_object(tenant_id, HOLIDAYS, cond.holidays) is None:
            raise ConfigError(f"IVR active (open hours): no holiday list {cond.holidays!r} in this tenant", 404)
    dest = doc.get("out_of_hours")
    if dest is None:
        return
    if dest["type"] in (KIND, "extension") and dest["value"] == number:
        raise ConfigError(f"IVR out_of_hours cannot be IVR {number} itself (it is closed then too)")
    if dest["type"] == KIND and await config.get_object(tenant_id, KIND, dest["value"]) is None:
        raise ConfigError(f"IVR out_of_hours: no IVR {dest['value']} in this tenant", 404)
    if dest["type"] == "extension":
        await destinations.check(config, tenant_id, dest["value"], "IVR out_of_hours")


# ------------------------------------------------------------------ running
async def run(ctx: AppContext, ivr_name: str, doc: dict) -> None:
    """One IVR from entry to a final destination (or hang-up)."""
    try:
        doc = validate(doc)
    except ConfigError as e:
        log.warning("IVR %s of tenant %s is invalid (%s): hanging up", ivr_name, ctx.tenant.name, e)
        await ctx.play(["goodbye"])
        return
    if "active" in doc and not await is_open(ctx.config, ctx.tenant, doc):
        log.info("IVR %s of tenant %s is closed now", ivr_name, ctx.tenant.name)
        await ctx.play(doc["closed"])
        if "out_of_hours" in doc and await _go(ctx, doc["out_of_hours"]) == "repeat":
            await ctx.play(["goodbye"])  # the out-of-hours target failed: nothing to go back to
        return
    if doc["intro"]:
        await ctx.play(doc["intro"])
        ctx.flush_digits()  # keys pressed during a non-interruptible intro do not count
    for _ in range(doc["attempts"]):
        how = await ctx.play(doc["prompt"], interruptible=True)
        if how == "stopped":
            return
        digit = await ctx.get_digit(doc["timeout"])
        if digit is None:
            dest = doc["no_input"]
        else:
            dest = await _select(ctx, doc, digit)
        outcome = await _go(ctx, dest)
        if outcome != "repeat":
            return
    await ctx.play(["goodbye"])


async def _select(ctx: AppContext, doc: dict, first: str) -> dict:
    """The destination the caller's keys choose: an option, or an extension dialled directly."""
    if not doc["direct_dial"] or not first.isdigit():
        return doc["options"].get(first, doc["invalid"])
    keys = first
    while len(keys) < 10:
        d = await ctx.get_digit(doc["digit_timeout"])
        if d is None or d == "#":
            break
        keys += d
    if len(keys) == 1:
        return doc["options"].get(keys, doc["invalid"])
    if await ctx.config.get_extension(ctx.tenant.id, keys) is not None:
        return {"type": "extension", "value": keys, "announce": ["transferring"]}
    return doc["invalid"]


async def _go(ctx: AppContext, dest: dict) -> Outcome:
    if dest.get("announce"):
        await ctx.play(dest["announce"])
    _, run_dest = DESTINATIONS[dest["type"]]
    return await run_dest(ctx, dest)


async def _repeat(ctx: AppContext, dest: dict) -> Outcome:
    return "repeat"


async def _hangup(ctx: AppContext, dest: dict) -> Outcome:
    return "done"


async def _transfer(ctx: AppContext, dest: dict) -> Outcome:
    value = dest["value"]
    if dest["type"] == "external" and not value.startswith("+"):
        value = "tel:" + value  # digits alone would mean an internal number
    result = await ctx.transfer(value)
    if result.answered or ctx.call.answered_leg is not None:
        return "done"
    if result.status == 200:
        return "done"  # it was another application, and that one has finished
    if result.status == 487:
        return "done"  # the caller hung up while it rang
    log.info("IVR transfer to %s failed: %s", dest["value"], result.status)
    await ctx.play(["unavailable"])
    return "repeat"


async def _submenu(ctx: AppContext, dest: dict) -> Outcome:
    if not await ctx.run_app(KIND, dest["value"]):
        await ctx.play(["invalid"])
        return "repeat"
    return "done"


register_destination("extension", _internal, _transfer)
register_destination("external", _external, _transfer)
register_destination("uri", _uri, _transfer)
register_destination("ivr", _internal, _submenu)
register_destination("repeat", _none, _repeat)
register_destination("hangup", _none, _hangup)
register_app(KIND, run)
