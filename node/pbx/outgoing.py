"""Ringing a new party for a call that is already up (transfer target, park recall), and
putting the party that answers into one side of that call.

Why not a second ``Call``: the party already in the call keeps its dialog and its relay
port; only the other side of the bridge changes. Because media is anchored, the remaining
party needs no re-INVITE when its far end changes: the relay just learns the new peer's
address from the new leg's SDP (node/pbx/media.py).

The attempts of a RoutePlan ring one after the other, the targets of one attempt in
parallel; the first 2xx wins and the others are cancelled. A plan with rules (hunt groups,
forwarding, follow-me) is walked by its rules like any call's (node/pbx/attempts.py): each
attempt rings for its own time and its outcome picks the next one. Without rules, the next
attempt rings whenever one failed. Application targets (an extension's voicemail) cannot
take a party here and are skipped; "press 1 to accept" is not asked.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from node.pbx.attempts import AttemptWalker, always_failover
from node.pbx.call import USER_AGENT, Caller, CallState, Leg, _ALLOW
from node.pbx.routing import RoutePlan, Target
from node.sip.dialog import Dialog
from node.sip.errors import SipError
from node.sip.ids import new_branch, new_call_id, new_tag
from node.sip.message import Request, Response, make_response

log = logging.getLogger("hivepbx.outgoing")

#: office call features by outcome (labels from fixed sets: see ``feature_done``)
FEATURE_EVENTS = Counter("hivepbx_call_features", "Transfers, pickups, parks and dialog replacements, by outcome",
                         ["feature", "outcome"])
PARKED = Gauge("hivepbx_parked_calls", "Calls waiting in a park slot on this node")
_FEATURES = {"blind_transfer", "attended_transfer", "semi_attended_transfer", "pickup", "park", "replaces"}


def feature_done(feature: str, outcome: str) -> None:
    """Count one feature event; ``outcome`` is 'done', 'failed', 'refused', 'retrieved', 'timeout', 'recalled'."""
    FEATURE_EVENTS.labels(feature if feature in _FEATURES else "other", outcome).inc()


class _Ignore:
    """TU of requests whose answer does not matter (NOTIFYs to a transferor, BYEs)."""

    def on_sip_response(self, resp, txn) -> None:
        pass

    def on_sip_timeout(self, txn) -> None:
        pass


IGNORE = _Ignore()


class OutLeg:
    """One INVITE of an Outgoing (its transaction's TU)."""

    __slots__ = ("out", "target", "flow", "invite", "txn", "provisional", "final", "cancelled",
                 "cancel_pending", "dialog", "ack")

    def __init__(self, out: "Outgoing", target: Target, flow) -> None:
        self.out = out
        self.target = target
        self.flow = flow
        self.invite: Request | None = None
        self.txn = None
        self.provisional = False
        self.final = 0
        self.cancelled = False
        self.cancel_pending = False
        self.dialog: Dialog | None = None
        self.ack: Request | None = None

    def on_sip_response(self, resp: Response, txn) -> None:
        self.out._response(self, resp)

    def on_sip_timeout(self, txn) -> None:
        if not self.final:
            self.final = 408
            self.out._failed(self)


class Outgoing:
    """Rings ``plan`` on behalf of ``call``: the INVITEs offer ``offer`` (SDP already
    rewritten to the relay port of the side the new party will take), present ``caller``,
    and carry ``extra`` headers. Exactly one of ``on_answer(leg, resp)`` /
    ``on_fail(status, reason)`` is called, unless ``abort()`` came first."""

    def __init__(self, call, plan: RoutePlan, offer: bytes, caller: Caller,
                 on_answer: Callable[[OutLeg, Response], None], on_fail: Callable[[int, str], None],
                 on_ringing: Callable[[], None] | None = None, extra: list[tuple[str, str]] | None = None,
                 ring_timeout: float = 0) -> None:
        self.call = call
        self.host = call.host
        self.plan = plan
        self.offer = offer
        self.caller = caller
        self.on_answer = on_answer
        self.on_fail = on_fail
        self.on_ringing = on_ringing
        self.extra = extra or []
        default_ring = call.tenant.ring_timeout or self.host.cfg.ring_timeout
        #: overall cap; with rules the attempts' own timers govern (the plan's cap, 0 = none)
        self.ring_timeout = ring_timeout or (plan.ring_timeout if plan.rules else default_ring)
        self.legs: list[OutLeg] = []
        self.done = False
        self.winner: OutLeg | None = None
        self._timer = None
        self._rang = False
        self.walker = AttemptWalker(plan, ring=self._ring_target, cancel=self._cancel,
                                    call_later=self.host.loop.call_later, default_ring=default_ring,
                                    on_no_answer=self._on_timeout, failover=always_failover)

    # ------------------------------------------------------------------ driving
    def start(self) -> None:
        if not self.plan.attempts:
            self._finish_fail(self.plan.fail_status or 404, self.plan.fail_reason or "Not Found")
            return
        if self.ring_timeout:
            self._timer = self.host.loop.call_later(self.ring_timeout, self._on_timeout)
        if not self.walker.start() and not self.done:
            self._finish_fail(480, "Temporarily Unavailable")

    def _ring_target(self, target: Target) -> OutLeg | None:
        """Start one target of the current attempt (the walker's ``ring``)."""
        try:
            flow = self.host.flow_for(target)
        except OSError as e:
            log.info("cannot reach %s: %s", target.ruri, e)
            return None
        leg = OutLeg(self, target, flow)
        self.legs.append(leg)
        self._send_invite(leg)
        return leg

    def abort(self) -> None:
        """The call ended or the request was withdrawn: cancel what still rings."""
        if self.done:
            return
        self.done = True
        self._stop_timer()
        for leg in self.legs:
            self._cancel(leg)

    def _on_timeout(self) -> None:
        self._timer = None
        if self.done:
            return
        for leg in self.legs:
            self._cancel(leg)
        self._finish_fail(480, "Temporarily Unavailable (no answer)")

    def _stop_timer(self) -> None:
        self.walker.stop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ SIP
    def _send_invite(self, leg: OutLeg) -> None:
        host, target, call = self.host, leg.target, self.call
        ep = host.endpoint
        sent_by = ep.sent_by(leg.flow)
        local = ep.local_host(leg.flow)
        number = self.caller.number
        if target.kind == "trunk" and target.trunk is not None:
            from_domain = target.trunk.from_domain or target.trunk.host
            ext = self.caller.extension
            if ext is not None and ext.callerid_number:
                number = ext.callerid_number
        else:
            from_domain = call.tenant.domain
        display = self.caller.display.replace('"', "")
        from_value = f'"{display}" <sip:{number}@{from_domain}>' if display else f"<sip:{number}@{from_domain}>"
        contact_host = f"[{local}]" if ":" in local else local
        contact_port = int(sent_by.rsplit(":", 1)[1])
        tparam = ";transport=tcp" if leg.flow.transport == "tcp" else ""
        headers = [
            ("Via", f"SIP/2.0/{leg.flow.via_transport} {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{from_value};tag={new_tag()}"),
            ("To", target.to_value),
            ("Call-ID", new_call_id()),
            ("CSeq", "1 INVITE"),
            ("Contact", f"<sip:{number}@{contact_host}:{contact_port}{tparam}>"),
            ("Allow", _ALLOW),
            ("User-Agent", USER_AGENT),
        ]
        if target.kind == "trunk":
            headers.append(("P-Asserted-Identity", f"<sip:{number}@{from_domain}>"))
        headers.extend(self.extra)
        body = self.offer
        # every fork gets the same relay port: only the winner's answer is applied
        if body:
            headers.append(("Content-Type", "application/sdp"))
        req = Request("INVITE", target.ruri, headers, body)
        leg.invite = req
        leg.txn = ep.send_request(req, leg.flow)
        leg.txn.tu = leg

    def _response(self, leg: OutLeg, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status == 100:
                return
            leg.provisional = True
            if leg.cancel_pending:
                self._send_cancel(leg)
            elif not self._rang and not self.done and self.on_ringing is not None:
                self._rang = True
                self.on_ringing()
            return
        if status < 300:
            if leg.dialog is None:
                leg.dialog = Dialog.as_uac(leg.invite, resp, leg.flow)  # type: ignore[arg-type]
            if leg.ack is None:
                ep = self.host.endpoint
                leg.ack = leg.dialog.create_request("ACK", ep.sent_by(leg.flow), cseq=leg.invite.cseq.seq)  # type: ignore[union-attr]
            self.host.endpoint.send_stateless(leg.ack, leg.flow)
            if self.winner is leg:
                return  # retransmitted 2xx
            leg.final = status
            if self.done or self.winner is not None or self.call.state is CallState.ENDED:
                self._bye(leg)  # a losing fork (§13.2.2.4)
                return
            self.winner = leg
            self.done = True
            self._stop_timer()
            for other in self.legs:
                if other is not leg:
                    self._cancel(other)
            if self.plan.on_answer is not None:
                self.plan.on_answer(leg.target)  # hunt group statistics (circular, least used)
            try:
                self.on_answer(leg, resp)
            except SipError as e:
                log.info("new party's answer unusable: %s", e)
                self._bye(leg)
                self.on_fail(488, "Not Acceptable Here")
            return
        if leg.final:
            return
        leg.final = status
        self._failed(leg)

    def _failed(self, leg: OutLeg) -> None:
        if self.done:
            return
        code = self.walker.leg_failed(leg)
        if code is not None:
            self._finish_fail(code, "")

    def _finish_fail(self, status: int, reason: str) -> None:
        self.done = True
        self._stop_timer()
        self.on_fail(status, reason)

    def _cancel(self, leg: OutLeg) -> None:
        if leg.cancelled or leg.final:
            return
        leg.cancelled = True
        if not leg.provisional:
            leg.cancel_pending = True  # RFC 3261 §9.1: sent when a provisional arrives
            return
        self._send_cancel(leg)

    def _send_cancel(self, leg: OutLeg) -> None:
        leg.cancel_pending = False
        self.call._send_cancel(leg)  # same CANCEL construction as the B2BUA's own forks

    def _bye(self, leg: OutLeg) -> None:
        if leg.dialog is None:
            return
        ep = self.host.endpoint
        t = ep.send_request(leg.dialog.create_request("BYE", ep.sent_by(leg.flow)), leg.flow)
        t.tu = IGNORE


def dialog_of(call, side: str) -> Dialog | None:
    if side == "a":
        return call.a_dialog
    return call.answered_leg.dialog if call.answered_leg is not None else None


def side_sdp(call, side: str) -> bytes:
    """The session description ``side`` last gave for the call (its offer or its answer)."""
    if side == "a":
        return getattr(call, "a_sdp", None) or call.invite.body
    return call.b_sdp or b""


#: a released transferor gets this long to send its own BYE (RFC 5589 §6.1: it usually
#: does right after the final NOTIFY) before the node sends one: no BYE glare
RELEASE_GRACE = 0.5


class Released:
    """The dialog of a party taken out of a call, until it is hung up: its BYE gets 200."""

    #: read by the service for a stray 2xx retransmission (nothing to re-ACK here)
    answered_leg = None

    def __init__(self, call, dialog: Dialog) -> None:
        self.host = call.host
        self.invite = call.invite  # what the service's log binding reads
        self.tenant = call.tenant
        self.dialog = dialog
        self.timer = self.host.loop.call_later(RELEASE_GRACE, self.hang_up)
        self.host.register_dialog(dialog.call_id, dialog.local_tag, self, "released")

    def on_request(self, side: str, req: Request, txn) -> None:
        ep = self.host.endpoint
        if req.method == "ACK":
            return
        if req.method == "BYE":
            ep.send_response(make_response(req, 200, None))
            self._done()
            return
        ep.send_response(make_response(req, 481, None))

    def hang_up(self) -> None:
        self._done()
        d = self.dialog
        ep = self.host.endpoint
        t = ep.send_request(d.create_request("BYE", ep.sent_by(d.flow)), d.flow)
        t.tu = IGNORE

    def _done(self) -> None:
        self.timer.cancel()
        self.host.unregister_dialog(self.dialog.call_id, self.dialog.local_tag)


def release_side(call, side: str, send_bye: bool = True, grace: bool = False) -> None:
    """Take the party on ``side`` out of the call (BYE unless it left already; with
    ``grace``, after RELEASE_GRACE unless it sends its own first)."""
    d = dialog_of(call, side)
    if d is None:
        return
    call.host.unregister_dialog(d.call_id, d.local_tag)
    if send_bye and grace:
        Released(call, d)
    elif send_bye:
        ep = call.host.endpoint
        t = ep.send_request(d.create_request("BYE", ep.sent_by(d.flow)), d.flow)
        t.tu = IGNORE
    if side == "b" and call.answered_leg is not None:
        call.answered_leg.bye_sent = True


def put_on_side(call, side: str, leg: OutLeg, sdp: bytes) -> None:
    """The answered ``leg`` takes ``side`` of the call (whose previous party is released)."""
    assert leg.dialog is not None
    new = Leg(call, leg.target, leg.flow)
    new.invite, new.dialog, new.final, new.ack, new.provisional = leg.invite, leg.dialog, leg.final, leg.ack, True
    if side == "b":
        call.legs.append(new)
        call.answered_leg = new
        call.b_sdp = sdp
    else:
        call.a_sdp = sdp
        call.a_dialog = leg.dialog
        call.a_flow = leg.flow
        call._waiting_ack = False
    call.pending = {"a": None, "b": None}
    call.host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, call, side)


def new_pair(call, caller: Caller, plan: RoutePlan, cause: str, target: Target | None = None,
             new_side: str = "b") -> None:
    """Close the CDR and the busy lamps of the pair that was talking and start a new pair
    on the same call: one CDR per pair of parties, the old one ending with ``cause``."""
    host = call.host
    call.hangup_cause = cause
    host.cdr_recorder.record(call.cdr())
    host._call_state(call, "terminated")
    call.hangup_cause = ""
    now = time.time()
    host.calls.pop(call.id, None)
    call.id = str(uuid.uuid4())
    host.calls[call.id] = call
    old_side = "a" if new_side == "b" else "b"
    callee = target_party(call, plan, target)
    call.caller = caller
    call.plan = plan
    #: who is on which side now (the caller of the CDR need no longer be side a)
    call.parties = {new_side: callee, old_side: caller}
    call.caller_side = old_side
    call.start = now
    call.answer_at = now
    call.disposition = "answered"
    call.sip_code = 200
    call.trunk_name = target.trunk.name if target is not None and target.trunk is not None else ""
    host._call_state(call, "confirmed")


def target_party(call, plan: RoutePlan, target: Target | None) -> Caller:
    ext = plan.callee_ext
    if ext is not None and ext.tenant_id == call.tenant.id and (target is None or target.kind == "extension"):
        return Caller(ext.number, ext.display_name, call.tenant.domain, ext)
    return Caller(plan.callee, "", call.tenant.domain)


def party_of(call, side: str) -> Caller:
    """Who is on ``side`` of the call, as a Caller (to present them to a new party)."""
    parties = getattr(call, "parties", None)
    if parties is not None:
        return parties[side]
    if side == "a":
        return call.caller
    ext = call.plan.callee_ext
    if ext is not None and ext.tenant_id == call.tenant.id:
        return Caller(ext.number, ext.display_name, call.tenant.domain, ext)
    return Caller(call.plan.callee, "", call.tenant.domain)


def accept_on_side(call, side: str, req: Request, flow, answer: bytes) -> None:
    """An incoming INVITE (pickup, park retrieval, Replaces) takes ``side`` of the call: we
    are its UAS and answer it 200 with ``answer`` (already rewritten to the relay)."""
    host = call.host
    ep = host.endpoint
    tag = new_tag()
    tparam = ";transport=tcp" if flow.transport == "tcp" else ""
    contact = f"<sip:pbx@{ep.sent_by(flow)}{tparam}>"
    dialog = Dialog.as_uas(req, tag, flow, contact)
    if side == "b":
        target = Target(kind="extension", ruri=dialog.remote_target, transport=flow.transport,
                        host=flow.remote[0], port=flow.remote[1], to_value=req.get("From") or "")
        leg = Leg(call, target, flow)
        leg.invite, leg.dialog, leg.final, leg.provisional = req, dialog, 200, True
        call.legs.append(leg)
        call.answered_leg = leg
        call.b_sdp = req.body
    else:
        call.a_dialog = dialog
        call.a_flow = flow
        call.a_sdp = req.body
        call._waiting_ack = False
    call.pending = {"a": None, "b": None}
    ok = make_response(req, 200, None, to_tag=tag,
                       headers=[("Contact", contact), ("Allow", _ALLOW), ("Content-Type", "application/sdp")],
                       body=answer)
    ep.send_response(ok)
    AwaitAck(call, side, dialog, ok)


class AwaitAck:
    """Our 2xx to an INVITE a feature answered, retransmitted until its ACK (RFC 3261
    §13.3.1.4: the UAS core's duty, a UDP 2xx is not retransmitted by its transaction).
    Stands in the dialog table for the call until then."""

    #: read by the service for a stray 2xx retransmission (nothing to re-ACK here)
    answered_leg = None

    def __init__(self, call, side: str, dialog: Dialog, resp) -> None:
        host = call.host
        self.call = call
        self.side = side
        self.invite = call.invite  # what the service's log binding reads
        self.tenant = call.tenant
        self.dialog = dialog
        self.resp = resp
        self.interval = host.t1
        self.deadline = host.loop.time() + 64 * host.t1
        self.timer = host.loop.call_later(self.interval if not dialog.flow.reliable else 64 * host.t1, self._tick)
        host.register_dialog(dialog.call_id, dialog.local_tag, self, side)

    def on_request(self, side: str, req: Request, txn) -> None:
        self._done()
        if req.method != "ACK" and self.call.state is CallState.ANSWERED:
            self.call.on_request(side, req, txn)  # the phone has our 2xx: in-dialog as usual

    def _tick(self) -> None:
        host = self.call.host
        if self.call.state is CallState.ENDED:
            self._done()
            return
        if host.loop.time() >= self.deadline:
            log.info("no ACK for the 2xx of a taken-over dialog: hanging up")
            self._done()
            self.call.hangup_both("no-ack")
            return
        host.endpoint.send_response(self.resp)
        self.interval = min(self.interval * 2, host.t2)
        self.timer = host.loop.call_later(self.interval, self._tick)

    def _done(self) -> None:
        self.timer.cancel()
        host = self.call.host
        key = (self.dialog.call_id, self.dialog.local_tag)
        if host._dialogs.get(key, (None,))[0] is self:
            if self.call.state is not CallState.ENDED and dialog_of(self.call, self.side) is self.dialog:
                host.register_dialog(key[0], key[1], self.call, self.side)
            else:
                host.unregister_dialog(*key)


# ------------------------------------------------------------------ held parties
def take_hold(call) -> str | None:
    """Stop the music on hold of ``call`` (node/pbx/hold.py) before its parties change:
    the side that was held, or None. The holder is leaving; its hold must not outlive it."""
    state = getattr(call, "hold", None)
    held = getattr(state, "held_side", None)
    if state is not None:
        try:
            state.stop()
        except Exception:
            log.exception("stopping music on hold failed")
    return held


def resume(call, side: str) -> None:
    """Re-INVITE the party on ``side`` (held by someone who has left) with a sendrecv offer
    at its own relay port: it takes itself off hold and talks to its new far end."""
    d = dialog_of(call, side)
    other = "b" if side == "a" else "a"
    sdp = side_sdp(call, other)
    if d is None or not sdp or call.media is None:
        return
    ep = call.host.endpoint
    from node.sdp.anchoring import rewrite_for_relay

    try:
        ip = call.media.advertise or ep.local_host(d.flow)
        offer = rewrite_for_relay(sdp, ip, call.media.session.leg(side).local_port)
        body = call.media._origins[side].stamp_bytes(offer, ip)
    except Exception as e:
        log.info("cannot resume held party: %s", e)
        return
    for held in (b"a=sendonly", b"a=recvonly", b"a=inactive"):
        body = body.replace(held, b"a=sendrecv")
    req = d.create_request("INVITE", ep.sent_by(d.flow), body=body, content_type="application/sdp",
                           extra=[("Allow", _ALLOW)])
    t = ep.send_request(req, d.flow)
    t.tu = _Resume(call, side, d, req)


class _Resume:
    """TU of a resume re-INVITE: ACK its 2xx and learn where the party now receives."""

    def __init__(self, call, side: str, dialog: Dialog, req: Request) -> None:
        self.call, self.side, self.dialog, self.req = call, side, dialog, req

    def on_sip_response(self, resp: Response, txn) -> None:
        if resp.status < 200:
            return
        if resp.status >= 300:
            log.info("held party refused to resume: %s", resp.status)
            return
        ep = self.call.host.endpoint
        ack = self.dialog.create_request("ACK", ep.sent_by(self.dialog.flow), cseq=self.req.cseq.seq)
        ep.send_stateless(ack, self.dialog.flow)
        self.dialog.update_target(resp)
        if resp.body and self.call.media is not None and self.call.state is CallState.ANSWERED:
            try:
                self.call.media.rewrite(self.side, resp.body, ep.local_host(self.dialog.flow))
            except SipError as e:
                log.info("resumed party's SDP unusable: %s", e)

    def on_sip_timeout(self, txn) -> None:
        log.info("resume re-INVITE timed out")


# ------------------------------------------------------------------ offer meets offer
def codecs_of(sdp: bytes):
    """The G.711 codecs and telephone-event an SDP's audio stream lists, as offer/answer
    codecs (the relay can only carry what both parties have)."""
    from node.sdp.anchoring import relayed_stream
    from node.sdp.offer_answer import Codec
    from node.sdp.parser import parse

    sd = parse(sdp)
    i = relayed_stream(sd)
    out = []
    if i is None:
        return out
    m = sd.media[i]
    for pt in m.payload_types:
        rm = m.rtpmap(pt)
        if rm is None:
            continue
        name = rm.encoding.upper()
        if name in ("PCMU", "PCMA"):
            out.append(Codec(name, rm.clock_rate, rm.channels or 1, static_pt=pt if pt < 96 else None))
        elif name == "TELEPHONE-EVENT" and rm.clock_rate == 8000:
            out.append(Codec("telephone-event", 8000, fmtp=m.fmtp(pt) or "0-15"))
    return out


def relay_answer(call, side: str, offer: bytes, other_sdp: bytes, ip: str) -> bytes:
    """Our answer to ``offer`` from the party on ``side`` when the far end's description is
    ``other_sdp`` (itself an offer: pickup, park retrieval, Replaces): RFC 3264 answer with
    the codecs both have, at the relay port facing ``side``; the relay learns ``side``'s
    address. ``SdpNotAcceptable`` (488) when they have none in common."""
    from node.sdp.offer_answer import answer
    from node.sdp.parser import parse

    call.media.rewrite(side, offer, ip)
    codecs = codecs_of(other_sdp)
    anchor = getattr(call.media, "_main", call.media)  # a joined call's media (node/pbx/replaces.py)
    sd = answer(parse(offer), codecs, call.media.advertise or ip, call.media.session.leg(side).local_port,
                origin=anchor._origins[side])
    return sd.to_bytes()
