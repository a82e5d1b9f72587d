"""Call forwarding, do-not-disturb and follow-me of one extension (feature object kind
``forwarding``, named by the extension number).

    {"dnd": false,
     "unconditional": "tel:+4930123",          # forward every call, the phones never ring
     "busy": "1009",                           # when the phones answer busy (or DND is on)
     "no_answer": "2000", "no_answer_ring": 15,  # after ring time (seconds)
     "unreachable": "tel:017012345",           # when no phone is registered
                                               # (busy / no_answer / unreachable may be "voicemail":
                                               #  the extension's own mailbox, node/pbx/voicemail.py)
     "follow_me": {"mode": "ordered",          # or "simultaneous"
                   "destinations": [{"to": "1001", "ring": 10},
                                    {"to": "tel:017012345", "ring": 20, "confirm": true,
                                     "active": {"weekdays": "mon-fri", "time": "08:00-20:00"}}]},
     "active": {"weekdays": "mon-fri", "time": "08:00-18:00"}}   # optional: when forwards/follow-me apply

Follow-me replaces the plain ring of the phones (list the extension itself to ring its
phones); when it ends unanswered the no-answer forward applies. A destination with its own
``active`` periods (same syntax as the top-level one, the tenant's time zone) is skipped
outside them. ``"confirm": true`` screens the destination: whoever answers hears "Call for
<extension>. Press 1 to accept" and is bridged only after pressing 1; any other key, 10 s
of silence or a hang-up counts as no answer and the follow-me goes on (node/pbx/answer_confirm.py;
the answered leg still gets its CDR row). DND without a busy forward
answers 486 Busy Here. Outside the ``active`` periods (node/pbx/time_rules.py conditions, the
tenant's time zone) forwards and follow-me are off and the phones just ring; DND holds always.
Forwards chain (an extension forwarded to one that forwards on), up
to the dial plan's depth limit; a loop back to an extension rings its phones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.config_rules import ConfigError, extension_number
from node.pbx import destinations, time_rules
from node.ports import ConfigStore

if TYPE_CHECKING:
    from node.pbx.dialplan import Ctx, Frag

KIND = "forwarding"
#: a busy / no-answer / unreachable forward to the extension's own voicemail
VOICEMAIL = "voicemail"
_DESTS = ("unconditional", "busy", "no_answer", "unreachable")
_KEYS = ("dnd", "no_answer_ring", "follow_me", "active") + _DESTS
MAX_FOLLOW_ME = 10
_FM_KEYS = frozenset(("to", "ring", "confirm", "active"))


def _ring(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 600:
        raise ConfigError(f"{what} must be a whole number of seconds between 1 and 600, not {value!r}")
    return value


def validate(doc: object) -> dict:
    if not isinstance(doc, dict):
        raise ConfigError("forwarding settings must be a JSON object")
    extra = sorted(set(doc) - set(_KEYS))
    if extra:
        raise ConfigError(f"unknown forwarding field(s): {', '.join(extra)} (allowed: {', '.join(_KEYS)})")
    out: dict = {"dnd": doc.get("dnd", False)}
    if not isinstance(out["dnd"], bool):
        raise ConfigError(f"dnd must be true or false, not {out['dnd']!r}")
    for key in _DESTS:
        if doc.get(key) == VOICEMAIL and key != "unconditional":
            out[key] = VOICEMAIL  # the extension's own mailbox (node/pbx/voicemail.py)
        elif doc.get(key) not in (None, ""):
            out[key] = str(destinations.parse(doc[key], f"forward {key.replace('_', ' ')} destination"))
    if "no_answer_ring" in doc:
        out["no_answer_ring"] = _ring(doc["no_answer_ring"], "no_answer_ring")
    if doc.get("active") not in (None, {}, []):
        try:
            time_rules.parse_when(doc["active"])
        except ConfigError as e:
            raise ConfigError(f"forwarding active period: {e}") from None
        out["active"] = doc["active"]
    fm = doc.get("follow_me")
    if fm not in (None, {}):
        if not isinstance(fm, dict) or set(fm) - {"mode", "destinations"}:
            raise ConfigError('follow_me must be {"mode": "ordered"|"simultaneous", "destinations": [...]}')
        mode = fm.get("mode", "ordered")
        if mode not in ("ordered", "simultaneous"):
            raise ConfigError(f"follow_me mode {mode!r}: use ordered or simultaneous")
        dests = fm.get("destinations")
        if not isinstance(dests, list) or not 1 <= len(dests) <= MAX_FOLLOW_ME:
            raise ConfigError(f"follow_me needs a list of 1 to {MAX_FOLLOW_ME} destinations")
        out_d = []
        for i, d in enumerate(dests, 1):
            if isinstance(d, str):
                d = {"to": d}
            if not isinstance(d, dict) or set(d) - _FM_KEYS:
                raise ConfigError(f"follow_me destination {i}: use a destination text or {{\"to\": ..., \"ring\": seconds,"
                                  f" \"confirm\": true|false, \"active\": {{...}}}} (allowed: {', '.join(sorted(_FM_KEYS))})")
            e = {"to": str(destinations.parse(d.get("to"), f"follow_me destination {i}"))}
            if "ring" in d:
                e["ring"] = _ring(d["ring"], f"ring of follow_me destination {i}")
            if "confirm" in d:
                if not isinstance(d["confirm"], bool):
                    raise ConfigError(f"follow_me destination {i}: confirm must be true or false, not {d['confirm']!r}")
                if d["confirm"]:
                    e["confirm"] = True
            if d.get("active") not in (None, {}, []):
                try:
                    time_rules.parse_when(d["active"])
                except ConfigError as err:
                    raise ConfigError(f"follow_me destination {i} active period: {err}") from None
                e["active"] = d["active"]
            out_d.append(e)
        out["follow_me"] = {"mode": mode, "destinations": out_d}
    return out


async def save(config: ConfigStore, tenant_id: int, number: str, doc: object) -> dict:
    number = extension_number(number)
    if await config.get_extension(tenant_id, number) is None:
        raise ConfigError(f"extension {number} does not exist in this tenant", 404)
    out = validate(doc)
    for key in _DESTS:
        if out.get(key) == VOICEMAIL:
            from node.pbx import voicemail

            if await voicemail.load(config, tenant_id, number) is None:
                raise ConfigError(f"extension {number} has no mailbox to forward to", 404)
            continue
        if key in out:
            if out[key] == number:
                raise ConfigError(f"extension {number} cannot forward ({key.replace('_', ' ')}) to itself")
            await destinations.check(config, tenant_id, out[key], f"forward {key.replace('_', ' ')} destination")
    for d in out.get("follow_me", {}).get("destinations", []):
        if d["to"] != number:
            await destinations.check(config, tenant_id, d["to"], "follow_me destination")
    await config.put_object(tenant_id, KIND, number, out)
    return out


async def load(config: ConfigStore, tenant_id: int, number: str) -> dict:
    return await config.get_object(tenant_id, KIND, number) or {}


async def update(config: ConfigStore, tenant_id: int, number: str, **changes) -> dict:
    """Change some settings, keep the others (feature codes, CLI ``fwd set``); a None clears."""
    doc = dict(await load(config, tenant_id, number))
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    return await save(config, tenant_id, number, doc)


def is_plain(doc: dict) -> bool:
    """Nothing to do: the extension's phones just ring."""
    return not any(doc.get(k) for k in ("dnd", "follow_me") + _DESTS)


async def compile_extension(ctx: "Ctx", number: str, doc: dict, ring: float) -> "Frag":
    from node.pbx.dialplan import Frag

    if doc.get("dnd"):
        if doc.get("busy"):
            return await _dest(ctx, number, doc["busy"], "busy")
        return Frag(None, [], 486, "Busy Here (do not disturb)")
    if doc.get("active") and not time_rules.holds(
        time_rules.parse_when(doc["active"]), time_rules.local(ctx.now, ctx.tenant.timezone or "UTC")
    ):
        doc = {}  # outside the active periods: just the phones
    if doc.get("unconditional"):
        return await ctx.dest(doc["unconditional"])
    na_ring = doc.get("no_answer_ring", 0) if doc.get("no_answer") else 0
    fm = doc.get("follow_me")
    if fm:
        frag = await _follow_me(ctx, number, fm)
    else:
        targets = await ctx.phones(number)
        if not targets:
            if doc.get("unreachable"):
                return await _dest(ctx, number, doc["unreachable"], "unavailable")
            return Frag(None, [], 480, "Temporarily Unavailable (not registered)")
        frag = ctx.add(targets, na_ring or ring)
    # only the phones' (or follow-me's) own busy / no answer is forwarded, not that of the
    # destination forwarded to
    nexts = {}
    if doc.get("busy"):
        nexts["busy"] = await _dest(ctx, number, doc["busy"], "busy")
    if doc.get("no_answer"):
        nexts["noanswer"] = await _dest(ctx, number, doc["no_answer"], "unavailable")
    return ctx.branches(frag, nexts)


async def _dest(ctx: "Ctx", number: str, value: str, greeting: str) -> "Frag":
    if value == VOICEMAIL:
        from node.pbx import voicemail

        return voicemail.app_attempt(ctx, number, greeting)
    return await ctx.dest(value)


def _now_active(ctx: "Ctx", entry: dict) -> bool:
    when = entry.get("active")
    if not when:
        return True
    return time_rules.holds(time_rules.parse_when(when), time_rules.local(ctx.now, ctx.tenant.timezone or "UTC"))


def _confirm(ctx: "Ctx", number: str, entry: dict, first: int) -> None:
    """Mark the targets of the attempts compiled for ``entry`` (from ``first`` on) as screened."""
    if entry.get("confirm"):
        for attempt in ctx.attempts[first:]:
            for t in attempt:
                t.confirm_for = number


async def _follow_me(ctx: "Ctx", number: str, fm: dict) -> "Frag":
    from node.pbx.dialplan import Frag

    entries = [e for e in fm["destinations"] if _now_active(ctx, e)]
    if fm["mode"] == "simultaneous":
        targets = []
        for e in entries:
            found = await ctx.member_targets(e["to"], f"followme:{number}:{e['to']}")
            if e.get("confirm"):
                for t in found:
                    t.confirm_for = number
            targets += found
        if not targets:
            return Frag(None, [], 480, "Temporarily Unavailable (no follow-me destination reachable)")
        return ctx.add(targets, max((e.get("ring", 0) for e in entries), default=0))
    frags = []
    for e in entries:
        first = len(ctx.attempts)
        if e["to"] == number:
            targets = await ctx.phones(number)
            if targets:
                frags.append(ctx.add(targets, e.get("ring", 0)))
                _confirm(ctx, number, e, first)
            continue
        # a follow-me step is one stop of a list: its own voicemail must not end the list
        ctx.list_depth = getattr(ctx, "list_depth", 0) + 1
        try:
            f = await ctx.dest(e["to"], e.get("ring", 0))
        finally:
            ctx.list_depth -= 1
        if f.entry is not None:
            frags.append(f)
            _confirm(ctx, number, e, first)
    if not frags:
        return Frag(None, [], 480, "Temporarily Unavailable (no follow-me destination reachable)")
    # any way one destination ends (busy, no answer, failure), the next one rings
    return ctx.seq(frags)
