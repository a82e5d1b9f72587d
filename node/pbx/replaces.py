"""RFC 3891 Replaces: attended transfer and "take over this dialog".

* attended transfer (RFC 5589 §7): the transferor has two calls through the node, one with
  the transferee and one with the target, and sends REFER in one of them whose Refer-To
  carries ``?Replaces=<the other dialog>``. Both calls are bridged by this node, so the
  node joins the two remaining parties itself (no INVITE to anybody): the transferor's two
  dialogs are released and the parties keep their dialogs and relay ports. The two relays
  are chained (each one's transferor-facing leg sends to the other's), so nobody needs a
  re-INVITE; a later re-INVITE of either party moves its media onto the surviving relay.
* INVITE with Replaces from a phone of the tenant: it takes the place of the party of the
  named dialog. A ringing (early) dialog: like pickup, the ringing phones get CANCEL and the
  caller is answered. A confirmed dialog: the replaced party gets BYE.

The dialog is named by Call-ID, to-tag and from-tag; phones disagree on whose view the tags
are written from, so either order is accepted. A dialog of another tenant is never
matched (403), and only a dialog of the REFER's own extension may be replaced by it.

CDRs: each replaced pair ends with ``attended-transfer`` / ``replaced``; the joined parties
get the call's next CDR.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from node.pbx import outgoing
from node.pbx.call import Caller, CallState, Leg
from node.pbx.routing import RoutePlan
from node.sip.errors import SipError
from node.sip.ids import new_tag
from node.sip.message import make_response

log = logging.getLogger("hivepbx.replaces")


@dataclass(frozen=True, slots=True)
class DialogId:
    call_id: str
    to_tag: str
    from_tag: str
    early_only: bool = False


def parse(value: str | None) -> DialogId | None:
    """``callid;to-tag=..;from-tag=..[;early-only]``; None when unreadable."""
    if not value:
        return None
    parts = [p.strip() for p in value.split(";")]
    call_id = parts[0]
    params: dict[str, str] = {}
    for p in parts[1:]:
        name, _, val = p.partition("=")
        params[name.strip().lower()] = val.strip()
    if not call_id or "to-tag" not in params or "from-tag" not in params:
        return None
    return DialogId(call_id, params["to-tag"], params["from-tag"], "early-only" in params)


def find(host, did: DialogId):
    """(call, side, early) of the dialog ``did`` names, or None."""
    for tag, other in ((did.to_tag, did.from_tag), (did.from_tag, did.to_tag)):
        entry = host._dialogs.get((did.call_id, tag))
        if entry is not None and hasattr(entry[0], "legs"):
            call, side = entry
            d = outgoing.dialog_of(call, side)
            if d is not None and d.remote_tag == other:
                return call, side, False
    # early dialogs are not in the dialog table: the caller's INVITE or a ringing fork
    for call in list(host.calls.values()):
        if getattr(call, "state", None) is not CallState.RINGING:
            continue
        if call.invite.call_id == did.call_id and call.a_tag in (did.to_tag, did.from_tag):
            return call, "a", True
        for leg in call.legs:
            if leg.final == 0 and leg.invite is not None and leg.invite.call_id == did.call_id:
                return call, "b", True
    return None


# ------------------------------------------------------------------ INVITE with Replaces
async def on_invite(host, req, txn, flow, tenant, ext) -> bool:
    ep = host.endpoint

    def refuse(status: int, reason: str | None) -> bool:
        ep.send_response(make_response(req, status, reason, to_tag=new_tag()))
        return True

    did = parse(req.get("Replaces"))
    if did is None:
        return refuse(400, "Bad Request (unreadable Replaces)")
    found = find(host, did)
    if found is None:
        return refuse(481, None)  # RFC 3891 §3: no such dialog
    call, side, early = found
    if call.tenant.id != tenant.id:
        log.warning("Replaces from %s@%s names a dialog of another tenant", ext.number, tenant.name)
        return refuse(403, "Forbidden")
    if did.early_only and not early:
        return refuse(486, None)  # RFC 3891 §3: early-only and already confirmed
    if getattr(txn, "tu", None) == "cancelled":
        return refuse(487, None)
    if not req.body or req.content_type != "application/sdp":
        return refuse(488, "Not Acceptable Here (Replaces needs an SDP offer)")
    taker = Caller(ext.number, ext.display_name, tenant.domain, ext)
    try:
        if early:
            if side == "a":
                return refuse(481, None)  # replacing the caller of a ringing call: nothing to take
            from node.pbx import pickup

            pickup.take_ringing(call, req, flow, taker, "replaced")
            return True
        if call.state is not CallState.ANSWERED or call.transfer is not None:
            return refuse(491, "Request Pending (the dialog is being transferred)")
        other = "b" if side == "a" else "a"
        answer = outgoing.relay_answer(call, side, req.body, outgoing.side_sdp(call, other), ep.local_host(flow))
    except SipError as e:
        log.info("Replaces failed: %s", e)
        return refuse(488, None)
    held = outgoing.take_hold(call) == other
    outgoing.release_side(call, side)
    outgoing.accept_on_side(call, side, req, flow, answer)
    outgoing.new_pair(call, outgoing.party_of(call, other),
                      RoutePlan(call.tenant, "internal", ext.number, callee_ext=ext), "replaced", None, side)
    if held:
        outgoing.resume(call, other)
    log.info("dialog of %s replaced by %s", call.invite.call_id, ext.number)
    outgoing.feature_done("replaces", "done")
    return True


# ------------------------------------------------------------------ attended transfer
class ChainedMedia:
    """The media of a joined call: its own relay plus the absorbed call's, closed together."""

    def __init__(self, main, absorbed) -> None:
        self._main = main
        self._absorbed = absorbed

    def __getattr__(self, name):
        return getattr(self._main, name)

    def close(self) -> None:
        self._main.close()
        self._absorbed.close()


def on_attended_refer(call, side: str, req, target) -> None:
    """REFER from ``side`` of ``call`` with Refer-To ...?Replaces=<a dialog of another call>."""
    from node.pbx.transfer import ReferError, transferor_extension

    ep = call.host.endpoint
    host = call.host
    try:
        did = parse(target.replaces)
        if did is None:
            raise ReferError(400, "Bad Request (unreadable Replaces in Refer-To)")
        found = find(host, did)
        if found is None:
            raise ReferError(481, "Call/Transaction Does Not Exist (no dialog to replace)")
        call2, side2, early = found
        if call2.tenant.id != call.tenant.id:
            raise ReferError(403, "Forbidden (the dialog belongs to another tenant)")
        if call2 is call:
            raise ReferError(400, "Bad Request (Replaces names the REFER's own call)")
        if early or call2.state is not CallState.ANSWERED or call2.transfer is not None:
            raise ReferError(403, "Forbidden (only an answered call can be joined)")
        ext = transferor_extension(call, side)
        ext2 = transferor_extension(call2, side2)
        if ext is None or ext2 is None or ext2.number != ext.number:
            raise ReferError(403, "Forbidden (Replaces names a dialog of another party)")
    except ReferError as e:
        log.info("attended REFER refused: %s %s", e.status, e.reason)
        outgoing.feature_done("attended_transfer", "refused")
        ep.send_response(make_response(req, e.status, e.reason))
        return
    ep.send_response(make_response(req, 202, None))
    _notify(call, side, 100, "Trying", False)
    join(call, side, call2, side2)
    _notify_final(call, side)


def _notify(call, side: str, status: int, reason: str, final: bool) -> None:
    from node.pbx.transfer import BlindTransfer

    n = BlindTransfer(call, side, None, "")
    n.notify(status, reason, final)


def _notify_final(call, side: str) -> None:
    # the transferor's dialog is on its way out (Released): NOTIFY on it before the BYE
    d = getattr(call, "_xfer_old_dialog", None)
    if d is None:
        return
    ep = call.host.endpoint
    req = d.create_request("NOTIFY", ep.sent_by(d.flow), body=b"SIP/2.0 200 OK\r\n",
                           content_type="message/sipfrag;version=2.0",
                           extra=[("Event", "refer"), ("Subscription-State", "terminated;reason=noresource")])
    t = ep.send_request(req, d.flow)
    t.tu = outgoing.IGNORE
    call._xfer_old_dialog = None


def join(call, side: str, call2, side2: str) -> None:
    """Bridge the party on the other side of ``call`` with the one on the other side of
    ``call2``; the parties on ``side`` / ``side2`` (the transferor) are released, ``call2``
    is absorbed into ``call``."""
    host = call.host
    other = "b" if side == "a" else "a"
    other2 = "b" if side2 == "a" else "a"
    held = outgoing.take_hold(call) == other, outgoing.take_hold(call2) == other2
    target = outgoing.party_of(call2, other2)
    transferee = outgoing.party_of(call, "b" if side == "a" else "a")
    # the transferor's dialogs: released (NOTIFY first on the REFER's one)
    call._xfer_old_dialog = outgoing.dialog_of(call, side)
    outgoing.release_side(call, side, grace=True)
    outgoing.release_side(call2, side2, grace=True)
    # the target's dialog moves into ``call`` on the transferor's side
    d2 = outgoing.dialog_of(call2, other2)
    assert d2 is not None
    host.unregister_dialog(d2.call_id, d2.local_tag)
    if side == "b":
        if other2 == "b":
            leg = call2.answered_leg
        else:
            leg = Leg(call, call2.answered_leg.target, d2.flow)
            leg.dialog, leg.final, leg.provisional, leg.invite = d2, 200, True, call2.invite
        leg.call = call
        call.legs.append(leg)
        call.answered_leg = leg
        call.b_sdp = outgoing.side_sdp(call2, other2)
    else:
        call.a_sdp = outgoing.side_sdp(call2, other2)
        call.a_dialog = d2
        call.a_flow = d2.flow
        call._waiting_ack = False
    call.pending = {"a": None, "b": None}
    host.register_dialog(d2.call_id, d2.local_tag, call, side)
    # media: chain the two relays through their transferor-facing legs
    l1, l2 = call.media.session.leg(side), call2.media.session.leg(side2)
    ip1 = call.media.advertise or host.endpoint.local_host(call.a_flow)
    ip2 = call2.media.advertise or host.endpoint.local_host(call2.a_flow)
    l1.set_remote(ip2, l2.local_port)
    l2.set_remote(ip1, l1.local_port)
    # call2 ends without BYEs: its pair's CDR, its lamps; its relay lives on in the chain
    call2.hangup_cause = "attended-transfer"
    host.cdr_recorder.record(call2.cdr())
    call2.state = CallState.ENDED
    host.calls.pop(call2.id, None)
    for key in call2.dialogs:
        if key != (d2.call_id, d2.local_tag):
            host.unregister_dialog(*key)
    host._call_state(call2, "terminated")
    if call2.counts_external:
        call2.counts_external = False
        host._external[call2.tenant.id] = max(0, host._external.get(call2.tenant.id, 1) - 1)
    call.media = ChainedMedia(call.media, call2.media)
    plan = RoutePlan(call.tenant, "internal", target.number, callee_ext=target.extension)
    outgoing.new_pair(call, transferee, plan, "attended-transfer", None, side)
    # parties the transferor held are taken off hold; their media then moves onto one relay
    if held[0]:
        outgoing.resume(call, other)
    if held[1]:
        outgoing.resume(call, side)
    log.info("attended transfer: %s joined with %s", transferee.number, target.number)
    outgoing.feature_done("attended_transfer", "done")
