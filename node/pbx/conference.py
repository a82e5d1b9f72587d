"""Conference rooms: feature objects (kind 'conference') named by the room number, mixed by
the node's media engine (node/media_engine/conference.py: one mix-minus per member).

A room is reached by dialling its number, through a DID of type 'conference', or from an
IVR option {"type": "conference", "value": "700"}. Its document (all keys optional):

    {"admin_pin": "9999",      # PINs: 2-12 digits, all different; the PIN entered decides
     "talker_pin": "1111",     # the role. No PIN at all = everybody enters as a talker.
     "listener_pin": "2222",   # listeners hear the room but are muted (never mixed in)
     "max_members": 10,        # 2-500; the next caller hears "conf-full" (admins always enter)
     "entry_tone": true,       # everybody hears a rising beep when somebody enters,
     "exit_tone": true,        # a falling one when somebody leaves
     "end_on_admin_exit": false}  # the last admin leaving ends the conference for all

Roles live with the call, not the endpoint: muting a listener means its received audio never
reaches the mixer (its jitter buffer is removed), so no mixing work is spent on it either.
PIN entry: "conf-pin" prompt, digits then '#' (or a pause), three tries, "conf-bad-pin".
A room exists only while somebody is in it, per node (the rooms of a tenant are not shared
between nodes: a clustered deployment routes one room's DID to one node).
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import Counter, Gauge

from node.config_rules import ConfigError
from node.media.tones import sine
from node.media_engine.conference import Conference
from node.pbx import destinations
from node.pbx.app_call import AppContext, register_app

if TYPE_CHECKING:
    from node.media_engine.endpoint import MediaEndpoint
    from node.media_engine.engine import MediaEngine

log = logging.getLogger("hivepbx.conference")

KIND = "conference"
ROLES = ("admin", "talker", "listener")
_NUMBER = re.compile(r"[0-9]{2,10}\Z")
_PIN = re.compile(r"[0-9]{2,12}\Z")
_KEYS = {"admin_pin", "talker_pin", "listener_pin", "max_members", "entry_tone", "exit_tone", "end_on_admin_exit"}
PIN_TRIES = 3
PIN_TIMEOUT = 8.0  # seconds for the first key after the prompt
DIGIT_TIMEOUT = 3.0  # between keys
CONF_MEMBERS = Gauge("hivepbx_conference_members", "Callers in conference rooms on this node")
CONF_REFUSED = Counter("hivepbx_conference_refused", "Callers kept out of a room", ["reason"])
_REFUSED_FULL, _REFUSED_PIN = CONF_REFUSED.labels("full"), CONF_REFUSED.labels("pin")
#: rising / falling two-note beeps (8 kHz int16)
ENTRY_TONE = np.concatenate([sine((660.0,), 1200, 0.2), sine((880.0,), 1200, 0.2)])
EXIT_TONE = np.concatenate([sine((880.0,), 1200, 0.2), sine((660.0,), 1200, 0.2)])


# ------------------------------------------------------------------ configuration
def name(value: object) -> str:
    if not isinstance(value, str) or not _NUMBER.match(value):
        raise ConfigError(f"conference room {value!r}: use 2 to 10 digits (callers dial it, DIDs point at it)")
    return value


def validate(doc: object) -> dict:
    """The normalised room document, or ConfigError saying what is wrong."""
    if not isinstance(doc, dict):
        raise ConfigError("a conference room is a JSON object (see node/pbx/conference.py for its keys)")
    extra = set(doc) - _KEYS
    if extra:
        raise ConfigError(f"unknown conference key(s) {', '.join(sorted(extra))} (allowed: {', '.join(sorted(_KEYS))})")
    out: dict = {}
    for role in ROLES:
        pin = doc.get(f"{role}_pin")
        if pin is None or pin == "":
            continue
        if not isinstance(pin, str) or not _PIN.match(pin):
            raise ConfigError(f"conference {role}_pin must be 2 to 12 digits (as text), not {pin!r}")
        out[f"{role}_pin"] = pin
    pins = [out[k] for k in out]
    if len(set(pins)) != len(pins):
        raise ConfigError("conference PINs must differ: the PIN entered decides the role")
    mx = doc.get("max_members", 50)
    if isinstance(mx, bool) or not isinstance(mx, int) or not 2 <= mx <= 500:
        raise ConfigError(f"conference max_members must be a whole number from 2 to 500, not {mx!r}")
    out["max_members"] = mx
    for key, default in (("entry_tone", True), ("exit_tone", True), ("end_on_admin_exit", False)):
        v = doc.get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"conference {key} must be true or false, not {v!r}")
        out[key] = v
    return out


async def put(config, tenant_id: int, room: str, doc: object) -> dict:
    """Validate and store a room (CLI and API). The number must be free in the tenant."""
    n = name(room)
    out = validate(doc)
    taken = await destinations.internal_kind(config, tenant_id, n)
    if taken is not None and taken != KIND:
        raise ConfigError(f"{n} is {'an' if taken == 'extension' else 'a'} {taken.replace('_', ' ')} of this tenant:"
                          " pick another number for the conference", 409)
    await config.put_object(tenant_id, KIND, n, out)
    return out


def role_for(doc: dict, pin: str | None) -> str | None:
    """The role a PIN gives (None: refused). A room without PINs makes everybody a talker."""
    if not any(f"{r}_pin" in doc for r in ROLES):
        return "talker"
    for r in ROLES:
        if pin is not None and doc.get(f"{r}_pin") == pin:
            return r
    return None


# ------------------------------------------------------------------ rooms in progress
class Member:
    __slots__ = ("ctx", "ep", "role")

    def __init__(self, ctx: AppContext | None, ep: "MediaEndpoint", role: str) -> None:
        self.ctx = ctx
        self.ep = ep
        self.role = role


class Room:
    """One conference in progress: the engine's mix plus who is in it with which role."""

    def __init__(self, engine: "MediaEngine", tenant_id: int, number: str) -> None:
        self.tenant_id = tenant_id
        self.number = number
        self.mix = Conference(engine, f"{tenant_id}/{number}")
        self.members: list[Member] = []

    def count(self) -> int:
        return len(self.members)

    def join(self, member: Member, doc: dict) -> None:
        if doc.get("entry_tone", True) and self.members:
            self.mix.overlay(ENTRY_TONE)
        self.mix.add(member.ep)
        if member.role == "listener":
            member.ep.jitter = None  # muted: nothing it says reaches the mix
        self.members.append(member)
        CONF_MEMBERS.inc()

    def leave(self, member: Member, doc: dict) -> None:
        if member not in self.members:
            return
        self.members.remove(member)
        CONF_MEMBERS.dec()
        self.mix.remove(member.ep)
        if self.members and doc.get("exit_tone", True):
            self.mix.overlay(EXIT_TONE)

    def set_role(self, member: Member, role: str) -> None:
        """Mute (listener) or unmute (talker/admin) a member in place."""
        from node.media.jitter import JitterBuffer

        member.role = role
        member.ep.jitter = None if role == "listener" else (member.ep.jitter or JitterBuffer())


_ROOMS: "weakref.WeakKeyDictionary[MediaEngine, dict[tuple[int, str], Room]]" = weakref.WeakKeyDictionary()


def rooms(engine: "MediaEngine") -> dict[tuple[int, str], Room]:
    """The rooms in progress on this node's engine, by (tenant id, number)."""
    d = _ROOMS.get(engine)
    if d is None:
        d = _ROOMS[engine] = {}
    return d


def room_of(engine: "MediaEngine", tenant_id: int, number: str) -> Room:
    d = rooms(engine)
    r = d.get((tenant_id, number))
    if r is None:
        r = d[(tenant_id, number)] = Room(engine, tenant_id, number)
    return r


# ------------------------------------------------------------------ running
async def _ask_pin(ctx: AppContext, doc: dict) -> str | None:
    for _ in range(PIN_TRIES):
        ctx.flush_digits()
        await ctx.play(["conf-pin"], interruptible=True)
        keys = ""
        d = await ctx.get_digit(PIN_TIMEOUT)
        while d is not None and d != "#" and len(keys) < 12:
            keys += d
            d = await ctx.get_digit(DIGIT_TIMEOUT)
        role = role_for(doc, keys) if keys else None
        if role is not None:
            return role
        await ctx.play(["conf-bad-pin"])
    return None


async def run(ctx: AppContext, room: str, doc: dict) -> None:
    """One caller in a room, from PIN entry until it hangs up (or an admin ends the room)."""
    try:
        doc = validate(doc)
    except ConfigError as e:
        log.warning("conference %s of tenant %s is invalid (%s)", room, ctx.tenant.name, e)
        await ctx.play(["goodbye"])
        return
    role = role_for(doc, None)
    if role is None:
        role = await _ask_pin(ctx, doc)
        if role is None:
            _REFUSED_PIN.inc()
            await ctx.play(["goodbye"])
            return
    engine = ctx.call.apps.engine
    r = room_of(engine, ctx.tenant.id, room)
    if role != "admin" and r.count() >= doc["max_members"]:
        if not r.members:
            rooms(engine).pop((ctx.tenant.id, room), None)
        log.info("conference %s of tenant %s is full (%d)", room, ctx.tenant.name, r.count())
        _REFUSED_FULL.inc()
        await ctx.play(["conf-full"])
        return
    ep = ctx.endpoint
    member = Member(ctx, ep, role)
    r.join(member, doc)
    log.info("%s joined conference %s of tenant %s as %s (%d in the room)", ctx.caller.number, room,
             ctx.tenant.name, role, r.count())
    try:
        while not ep.closed:
            await asyncio.sleep(1.0)  # the call's end cancels this task; closed covers the rest
    finally:
        r.leave(member, doc)
        if not r.members:
            rooms(engine).pop((ctx.tenant.id, room), None)
        elif role == "admin" and doc["end_on_admin_exit"] and not any(m.role == "admin" for m in r.members):
            for m in list(r.members):
                if m.ctx is not None:
                    m.ctx.hangup()


async def _conference_destination(ctx: AppContext, dest: dict) -> str:
    if not await ctx.run_app(KIND, dest["value"]):
        await ctx.play(["invalid"])
        return "repeat"
    return "done"


def _validate_room(value: object) -> str:
    return name(value)


register_app(KIND, run)


def _register_ivr_destination() -> None:
    from node.pbx import ivr

    ivr.register_destination(KIND, _validate_room, _conference_destination)


_register_ivr_destination()
