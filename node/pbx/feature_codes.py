"""Feature codes a tenant defines for its extensions (kind ``feature_codes``, named by the
code). Two tenants may give the same code different meanings: codes are looked up only in
the caller's own tenant.

    "*78": {"action": "dnd_on"}         "*79": {"action": "dnd_off"}     "*76": {"action": "dnd_toggle"}
    "*72": {"action": "forward_set", "type": "unconditional"}   # dial *72<number>
    "*73": {"action": "forward_clear", "type": "unconditional"}  # or "all"
    "*33": {"action": "daynight_toggle", "toggle": "main"}      # also daynight_day / daynight_night
    "*67": {"action": "hide_callerid"}                            # dial *67<number>: this call anonymous

How the node answers: when the action is done, the node answers the call itself (200 OK,
node/pbx/app_call.py), plays a short confirmation beep (1 kHz) and hangs up. Where no media
application runtime is running, done is a final ``603 Decline`` whose reason phrase says what
was done ("Done: DND on"): a 6xx so that nothing else tries the request. Either way, a code
that needs a number and got none is ``484 Address Incomplete``, an unknown code or
destination ``404``: refusals never answer. The CDR keeps the outcome.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from node.config_rules import ConfigError
from node.pbx import destinations, forwarding, screening, time_switch
from node.ports import ConfigStore

log = logging.getLogger("hivepbx.features")

KIND = "feature_codes"
#: how long the confirmation beep lasts, seconds
BEEP_SECONDS = 0.6
_CODE = re.compile(r"[*#][0-9*#]{1,7}")
ACTIONS = {
    # action: (takes a number after the code, needs 'type', needs 'toggle')
    "dnd_on": (False, False, False),
    "dnd_off": (False, False, False),
    "dnd_toggle": (False, False, False),
    "forward_set": (True, True, False),
    "forward_clear": (False, True, False),
    "daynight_toggle": (False, False, True),
    "daynight_day": (False, False, True),
    "daynight_night": (False, False, True),
    "hide_callerid": (True, False, False),
    # node/pbx/speed_dial.py, node/pbx/pickup.py, node/pbx/paging.py: dial the code then an index / extension
    "speed_dial": (True, False, False),
    "pickup": (False, False, False),
    "directed_pickup": (True, False, False),
    "page": (True, False, False),
}
FORWARD_TYPES = ("unconditional", "busy", "no_answer", "unreachable")
DONE_STATUS = 603
#: actions that are an application the node answers with (the voicemail menu): action → fn
APPLICATIONS: dict = {}


def register_application(action: str, fn) -> None:
    """A code whose action is a dialogue with the caller (``await fn(ctx, code, doc)``)
    instead of a beep: answered by the node like a done feature call."""
    ACTIONS[action] = (False, False, False)
    APPLICATIONS[action] = fn


def code(value: object) -> str:
    if not isinstance(value, str) or not _CODE.fullmatch(value.strip()):
        raise ConfigError(f"feature code {value!r}: '*' or '#' then 1-7 digits, '*' or '#' (e.g. *72)")
    return value.strip()


def validate(code_text: object, doc: object) -> tuple[str, dict]:
    c = code(code_text)
    if not isinstance(doc, dict) or doc.get("action") not in ACTIONS:
        raise ConfigError(f"feature code {c}: action must be one of {', '.join(ACTIONS)}")
    action = doc["action"]
    _, needs_type, needs_toggle = ACTIONS[action]
    allowed = {"action"} | ({"type"} if needs_type else set()) | ({"toggle"} if needs_toggle else set())
    extra = sorted(set(doc) - allowed)
    if extra:
        raise ConfigError(f"feature code {c} ({action}): unknown field(s) {', '.join(extra)}")
    out = {"action": action}
    if needs_type:
        t = doc.get("type")
        types = FORWARD_TYPES + (("all",) if action == "forward_clear" else ())
        if t not in types:
            raise ConfigError(f"feature code {c} ({action}): type must be one of {', '.join(types)}")
        out["type"] = t
    if needs_toggle:
        out["toggle"] = time_switch.toggle_name(doc.get("toggle"))
    return c, out


async def save(config: ConfigStore, tenant_id: int, code_text: str, doc: object) -> dict:
    c, out = validate(code_text, doc)
    codes = await config.list_objects(tenant_id, KIND)
    for other, odoc in codes.items():
        # a code that takes a number must not be a prefix of another code (or the other way)
        if other != c and (other.startswith(c) or c.startswith(other)):
            takes = ACTIONS[out["action"]][0] if other.startswith(c) else ACTIONS.get(odoc.get("action"), (False,))[0]
            if takes:
                raise ConfigError(f"feature code {c} clashes with {other}: one would swallow the other", 409)
    await config.put_object(tenant_id, KIND, c, out)
    return out


@dataclass(frozen=True, slots=True)
class Outcome:
    """A feature call's answer (``status``/``reason``), or the number to go on dialling."""

    status: int = 0
    reason: str = ""
    #: hide_callerid: dial this number anonymously
    dial: str = ""
    privacy: bool = False
    #: the code that matched
    code: str = ""
    #: a call feature the dialled number goes on to ('page': call it with auto-answer)
    feature: str = ""


def match(codes: dict[str, dict], dialled: str) -> tuple[str, dict, str] | None:
    """(code, document, digits after it) of the longest code ``dialled`` starts with."""
    for c in sorted(codes, key=len, reverse=True):
        if dialled.startswith(c):
            return c, codes[c], dialled[len(c):]
    return None


async def handle(config: ConfigStore, tenant_id: int, ext: str, dialled: str) -> Outcome | None:
    """Run the feature code ``dialled`` by extension ``ext``; None if it is not one."""
    if not dialled or dialled[0] not in "*#":
        return None
    found = match(await config.list_objects(tenant_id, KIND), dialled)
    if found is None:
        return Outcome(404, "Not Found (no such feature code)")
    c, doc, rest = found
    try:
        c, doc = validate(c, doc)
    except ConfigError as e:  # written around save(): say so rather than fail the INVITE
        log.warning("tenant %s: feature code %s is misconfigured: %s", tenant_id, c, e)
        return Outcome(500, f"Server Internal Error (feature code {c} misconfigured)")
    action = doc["action"]
    takes_number = ACTIONS[action][0]
    if rest and not takes_number:
        return Outcome(404, f"Not Found (feature code {c} takes no number)")
    if takes_number and not rest:
        return Outcome(484, f"Address Incomplete (dial {c} then a number)")
    try:
        out = await _run(config, tenant_id, ext, action, doc, rest)
        return Outcome(out.status, out.reason, out.dial, out.privacy, c, out.feature)
    except ConfigError as e:
        return Outcome(e.status_hint if e.status_hint in (403, 404, 409) else 484, _phrase(str(e)))


async def _run(config: ConfigStore, tenant_id: int, ext: str, action: str, doc: dict, rest: str) -> Outcome:
    if action in APPLICATIONS:
        return Outcome(DONE_STATUS, f"Done: {action.replace('_', ' ')}")
    if action == "hide_callerid":
        return Outcome(dial=rest, privacy=True)
    if action == "speed_dial":
        from node.pbx import speed_dial

        number = await speed_dial.lookup(config, tenant_id, ext, rest)
        if number is None:
            return Outcome(404, f"Not Found (no speed dial {rest})")
        return Outcome(dial=number)
    if action == "page":
        return Outcome(dial=rest, feature="page")
    if action in ("pickup", "directed_pickup"):
        # a ringing call is picked up before the dial plan runs (node/pbx/pickup.py): none was
        return Outcome(480, "Temporarily Unavailable (no ringing call to pick up)")
    if action.startswith("dnd_"):
        current = bool((await forwarding.load(config, tenant_id, ext)).get("dnd"))
        on = {"dnd_on": True, "dnd_off": False}.get(action, not current)
        await forwarding.update(config, tenant_id, ext, dnd=on)
        return Outcome(DONE_STATUS, f"Done: DND {'on' if on else 'off'}")
    if action == "forward_set":
        dest = destinations.parse(rest, "forward destination")
        if dest.kind == "internal" and await destinations.internal_kind(config, tenant_id, dest.value) is None:
            dest = destinations.parse("tel:" + rest)  # not one of ours: an outside number
        if dest.kind != "internal":
            # a phone may only forward where it may dial itself (no toll fraud through a forward)
            why_not = await screening.check_dial(config, tenant_id, ext, dest.value, internal=False)
            if why_not is not None:
                return Outcome(403, f"Forbidden ({why_not})")
        await forwarding.update(config, tenant_id, ext, **{doc["type"]: str(dest)})
        return Outcome(DONE_STATUS, f"Done: forward {doc['type'].replace('_', ' ')} to {dest}")
    if action == "forward_clear":
        types = FORWARD_TYPES if doc["type"] == "all" else (doc["type"],)
        await forwarding.update(config, tenant_id, ext, **{t: None for t in types})
        return Outcome(DONE_STATUS, f"Done: forward {doc['type'].replace('_', ' ')} cleared")
    if action.startswith("daynight_"):
        mode = {"daynight_day": "day", "daynight_night": "night"}.get(action)
        mode = await time_switch.set_mode(config, tenant_id, doc["toggle"], mode)
        return Outcome(DONE_STATUS, f"Done: {doc['toggle']} is {mode}")
    raise ConfigError(f"unknown feature code action {action!r}")


async def confirm(ctx, code: str, doc: dict) -> None:
    """The application a done feature call runs (node/pbx/app_call.py): a beep, then the
    node hangs up."""
    fn = APPLICATIONS.get(doc.get("action"))
    if fn is not None:
        await fn(ctx, code, doc)
        return
    ctx.endpoint.tone("beep")
    await asyncio.sleep(BEEP_SECONDS)
    ctx.endpoint.stop_output()


def application_ready() -> bool:
    """Whether feature calls can be answered by the confirmation application."""
    try:
        from node.pbx import app_call
    except ImportError:
        return False
    if app_call.APPS.get(KIND) is not confirm:
        app_call.register_app(KIND, confirm)
    return True


def _phrase(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:120]
