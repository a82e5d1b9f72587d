"""Call pickup: answer, from your own phone, a call ringing somewhere else in the tenant.

* group pickup: feature code with action ``pickup`` (e.g. ``*8``): the oldest call ringing
  a member of a pickup group (kind ``pickup_group``, ``{"members": ["1002", "1003"]}``)
  the picker belongs to;
* directed pickup: action ``directed_pickup`` then the extension (e.g. ``**`` → ``**1002``):
  the oldest call ringing that extension, whatever the groups.

The picker's INVITE becomes the answer of the ringing call: the phones that rang get CANCEL,
the caller gets 200 OK, and the picker talks to the caller through the call's relay. Only
calls of the picker's own tenant are ever looked at.

CDRs: the attempt to the rung extension ends with disposition ``cancelled`` and hangup cause
``picked-up``; the caller and the picker get the call's next CDR (new id), answered.
"""

from __future__ import annotations

import logging
import time
import uuid

from node.config_rules import ConfigError
from node.pbx import feature_codes, member_groups, outgoing
from node.pbx.call import Caller, CallState
from node.pbx.routing import RoutePlan
from node.ports import ConfigStore
from node.sip.errors import SipError
from node.sip.ids import new_tag
from node.sip.message import Request, make_response

log = logging.getLogger("hivepbx.pickup")

KIND = "pickup_group"
MAX_MEMBERS = 200


def validate(doc: object) -> dict:
    return member_groups.validate(doc, "pickup group", MAX_MEMBERS)


async def save(config: ConfigStore, tenant_id: int, name: str, doc: object) -> dict:
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise ConfigError("a pickup group needs a name (1-64 characters)")
    out = validate(doc)
    await member_groups.check_members(config, tenant_id, out["members"], "pickup group")
    await config.put_object(tenant_id, KIND, name, out)
    return out


async def wanted(config: ConfigStore, tenant_id: int, picker: str, dialled: str) -> set[str] | None:
    """The extensions whose ringing calls ``picker`` may take by dialling ``dialled``; None
    when ``dialled`` is no pickup code of the tenant."""
    found = feature_codes.match(await config.list_objects(tenant_id, feature_codes.KIND), dialled)
    if found is None:
        return None
    _, doc, rest = found
    action = doc.get("action") if isinstance(doc, dict) else None
    if action == "directed_pickup" and rest:
        return {rest}
    if action == "pickup" and not rest:
        out: set[str] = set()
        for group in (await config.list_objects(tenant_id, KIND)).values():
            members = group.get("members", []) if isinstance(group, dict) else []
            if picker in members:
                out.update(members)
        out.discard(picker)
        return out
    return None


def ringing_extensions(call) -> set[str]:
    """Extensions the call is ringing right now."""
    return {
        leg.target.binding.extension
        for leg in call.legs
        if leg.final == 0 and not leg.cancelled and leg.target.kind == "extension" and leg.target.binding is not None
    }


def find_ringing(calls, tenant_id: int, extensions: set[str]):
    """The oldest call of the tenant ringing one of ``extensions`` (and able to be picked)."""
    best = None
    for call in calls:
        if call.tenant.id != tenant_id or call.state is not CallState.RINGING or not call.invite.body:
            continue
        if ringing_extensions(call) & extensions and (best is None or call.start < best.start):
            best = call
    return best


async def try_pickup(host, req: Request, txn, flow, tenant, picker, dialled: str) -> bool:
    """The INVITE of extension ``picker`` dialling ``dialled``: True when it picked up a call
    (or was answered with an error about it), False to route it normally."""
    if not dialled or dialled[0] not in "*#":
        return False
    exts = await wanted(host.config, tenant.id, picker.number, dialled)
    if not exts:
        return False
    call = find_ringing(host.calls.values(), tenant.id, exts)
    if call is None:
        return False
    if getattr(txn, "tu", None) == "cancelled":
        host.endpoint.send_response(make_response(req, 487, None, to_tag=new_tag()))
        return True
    if not req.body or req.content_type != "application/sdp":
        host.endpoint.send_response(make_response(req, 488, "Not Acceptable Here (pickup needs an SDP offer)",
                                                  to_tag=new_tag()))
        return True
    from node.pbx import reanchor

    taker = Caller(picker.number, picker.display_name, tenant.domain, picker)
    try:
        # a call whose media rtpengine relays moves to the node's relay (node/pbx/reanchor.py)
        await reanchor.local_then(call, lambda: take_ringing(call, req, flow, taker, "picked-up"), ())
    except SipError as e:
        host.endpoint.send_response(make_response(req, 488, None, to_tag=new_tag()))
        log.info("pickup failed: %s", e)
    except reanchor.ReanchorError as e:
        host.endpoint.send_response(make_response(req, e.status if e.status in (481, 491) else 488,
                                                  f"Not Acceptable Here ({e.reason})", to_tag=new_tag()))
        log.info("pickup failed: %s", e)
    return True


def take_ringing(call, req: Request, flow, taker: Caller, cause: str) -> None:
    """Answer the ringing ``call`` with the incoming INVITE ``req`` of ``taker`` (pickup, or
    an INVITE with Replaces of an early dialog): the forks are cancelled, the caller gets
    200 OK, the taker becomes the call's B side."""
    host = call.host
    ep = host.endpoint
    local_taker = ep.local_host(flow)
    local_a = ep.local_host(call.a_flow)
    # two offers meet: each party gets an answer with the codecs both have, at the relay
    # port facing it (SipError: unusable SDP or nothing in common)
    to_taker = outgoing.relay_answer(call, "b", req.body, call.invite.body, local_taker)
    to_caller = outgoing.relay_answer(call, "a", call.invite.body, req.body, local_a)
    for leg in call.legs:
        if leg.final == 0:
            call._cancel_leg(leg)
    # the attempt to the rung extension ends here (its CDR and busy lamps)
    call.hangup_cause = f"{cause}-by-{taker.number}"
    call.disposition = "cancelled"
    call.sip_code = 487
    host.cdr_recorder.record(call.cdr())
    host._call_state(call, "terminated")
    host.calls.pop(call.id, None)
    call.id = str(uuid.uuid4())
    host.calls[call.id] = call
    call.hangup_cause = ""
    call.start = time.time()
    call.plan = RoutePlan(call.tenant, "internal", taker.number, callee_ext=taker.extension)
    call.plan.external = False
    outgoing.accept_on_side(call, "b", req, flow, to_taker)
    call._answer_a(to_caller)
    call.answer_at = time.time()
    call.state = CallState.ANSWERED
    call.disposition = "answered"
    call.sip_code = 200
    call._cancel_ring_timer()
    call._cancel_attempt_timer()
    host.call_answered(call)
    answered_hook = getattr(call, "_media_features_answered", None)  # recording (node/pbx/recording.py)
    if answered_hook is not None:
        answered_hook()
    log.info("call from %s taken by %s (%s)", call.caller.number, taker.number, cause)
    outgoing.feature_done("pickup" if cause == "picked-up" else "replaces", "done")


