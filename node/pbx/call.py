"""One B2BUA call: the caller's leg (A, we are its UAS) and the legs we place (B, we are UAC).

Theory of operation (sippy's good half, without its tuple protocols):

  ROUTING ──INVITE(s) sent──▶ RINGING ──first 2xx──▶ ANSWERED ──BYE either side──▶ ENDED
                                 │  └─all legs failed / ring timeout / A cancelled─▶ ENDED

* A call owns one A leg and, per attempt of its RoutePlan, a group of B legs rung in
  parallel (forking). The first 2xx wins; the other legs are cancelled, and a late 2xx on a
  losing leg is acknowledged and hung up (RFC 3261 §13.2.2.4 for a UAC).
* Each side has its own Call-ID, tags and CSeq space: nothing of one leg leaks into the other.
* Media is anchored: every SDP crossing the bridge is rewritten to the node's relay ports.
* After the answer, any in-dialog request from one side (re-INVITE, UPDATE, INFO, ...) is
  re-issued on the other side and its final response mapped back; BYE ends both.
* The B2BUA answers the 2xx retransmission duty of a UAS itself (RFC 3261 §13.3.1.4).
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from typing import TYPE_CHECKING

from node.model import Cdr
from node.pbx import answer_confirm, hold, recording
from node.pbx.attempts import AttemptWalker, best_failure, outcome, trunk_failover
from node.pbx.routing import RoutePlan, Target
from node.sip.cancel import build_cancel
from node.sip.dialog import Dialog
from node.sip.errors import SipError
from node.sip.flow import Flow
from node.sip.ids import new_branch, new_call_id, new_tag
from node.sip.message import Request, Response, make_response

if TYPE_CHECKING:
    from node.pbx.service import PbxService

log = logging.getLogger("hivepbx.call")

USER_AGENT = "hivepbx"
_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY, MESSAGE"


class CallState(enum.Enum):
    ROUTING = "routing"
    RINGING = "ringing"
    ANSWERED = "answered"
    ENDED = "ended"


class Caller:
    """Who is calling, as presented to the callee."""

    __slots__ = ("number", "display", "domain", "extension")

    def __init__(self, number: str, display: str, domain: str, extension=None) -> None:
        self.number = number
        self.display = display
        self.domain = domain
        self.extension = extension


class Leg:
    """One B leg (we are its UAC)."""

    __slots__ = (
        "call", "target", "flow", "invite", "txn", "dialog", "provisional", "final", "cancel_pending",
        "cancelled", "auth_tried", "ack", "bye_sent", "screen",
    )

    def __init__(self, call: "Call", target: Target, flow: Flow) -> None:
        self.call = call
        self.target = target
        self.flow = flow
        self.invite: Request | None = None
        self.txn = None
        self.dialog: Dialog | None = None
        self.provisional = False
        self.final = 0
        self.cancel_pending = False
        self.cancelled = False
        self.auth_tried = False
        self.ack: Request | None = None
        self.bye_sent = False
        #: "press 1 to accept" in progress on this leg (node/pbx/answer_confirm.py)
        self.screen = None


class Forwarded:
    """Context of an in-dialog request re-issued on the other side (stored in txn.tu)."""

    __slots__ = ("call", "from_side", "server_txn", "request", "answer")

    def __init__(self, call: "Call", from_side: str, server_txn, request: Request) -> None:
        self.call = call
        self.from_side = from_side
        self.server_txn = server_txn
        self.request = request
        #: an awaited anchor's rewrite of the 2xx SDP: None, _REWRITING, or (SDP in, SDP out),
        #: so a retransmitted 2xx is forwarded again without asking the relay twice
        self.answer: object = None


#: ``Forwarded.answer`` while the relay works on the first 2xx
_REWRITING = object()

#: an ended call's cycles are broken this many T1 later: its last transactions (a BYE's
#: Timer F then K, a server BYE's Timer J) are over by 64 T1 plus T4
RELEASE_AFTER_T1 = 80


class Call:
    def __init__(
        self,
        host: "PbxService",
        invite: Request,
        txn,
        flow: Flow,
        plan: RoutePlan,
        caller: Caller,
        media,
    ) -> None:
        self.host = host
        self.id = str(uuid.uuid4())
        self.invite = invite
        self.txn = txn
        self.a_flow = flow
        self.plan = plan
        self.tenant = plan.tenant
        self.caller = caller
        self.media = media
        self.state = CallState.ROUTING
        self.a_tag = new_tag()
        self.a_dialog: Dialog | None = None
        self.a_final: Response | None = None
        self.legs: list[Leg] = []
        #: which attempt of the plan rings (node/pbx/attempts.py); set when routing starts
        self.walker: AttemptWalker | None = None
        self.answered_leg: Leg | None = None
        self.ringing_sent = False
        self.start = time.time()
        self.answer_at: float | None = None
        self.sip_code = 0
        self.hangup_cause = ""
        self.disposition = "failed"
        self.trunk_name = ""
        self._ring_timer = None
        self._retrans_timer = None
        self._retrans_interval = 0.0
        self._retrans_deadline = 0.0
        self._waiting_ack = False
        self.late_offer = not invite.body
        #: OpenTelemetry span covering the call (set by the service)
        self.span = None
        #: counted against the tenant's max external calls (released when it ends)
        self.counts_external = False
        #: requests forwarded and not yet answered, per side they were sent to
        self.pending: dict[str, Forwarded | None] = {"a": None, "b": None}
        #: the SDP the answering side gave (a transfer offers it to the new party)
        self.b_sdp = b""
        #: a transfer in progress (node/pbx/transfer.py), told about BYEs and the call's end
        self.transfer = None
        #: the side of the party the CDR calls the caller (a transfer can move it to b)
        self.caller_side = "a"

    # ------------------------------------------------------------------ start
    def start_routing(self) -> None:
        if self.plan.fail_status or not self.plan.attempts:
            self.sip_code = self.plan.fail_status or 404
            self.fail_a(self.sip_code, self.plan.fail_reason or None)
            return
        self.state = CallState.RINGING
        ring = self.tenant.ring_timeout or self.host.cfg.ring_timeout
        if self.plan.rules:
            ring = self.plan.ring_timeout  # the attempts' own timers govern
        if ring:
            self._ring_timer = self.host.loop.call_later(ring, self._on_ring_timeout)
        self.walker = AttemptWalker(
            self.plan, ring=self._ring_target, cancel=self._cancel_leg, call_later=self.host.loop.call_later,
            default_ring=self.tenant.ring_timeout or self.host.cfg.ring_timeout,
            on_no_answer=self._on_ring_timeout, on_app=self._to_application, failover=trunk_failover,
        )
        if not self.walker.start() and self.state is CallState.RINGING:
            self.fail_a(best_failure(l.final for l in self.legs), None)

    def _ring_target(self, target: Target) -> Leg | None:
        """Start one target of the current attempt (the walker's ``ring``)."""
        try:
            flow = self.host.flow_for(target)
        except OSError as e:
            log.info("cannot reach %s: %s", target.ruri, e)
            return None
        leg = Leg(self, target, flow)
        self.legs.append(leg)
        if target.confirm_for and answer_confirm.ring(self, leg):
            return leg  # "press 1 to accept": its INVITE leaves once its media endpoint is open
        self._send_invite(leg)
        return leg

    def _to_application(self, target: Target) -> bool:
        """The plan reached an application (voicemail after busy / no answer): the node
        answers the caller itself (node/pbx/app_call.py ``AppRuntime.take_over``), which
        keeps this call's id and start (one CDR); this call ends without one of its own."""
        apps = self.host.apps
        if apps is None:
            return False
        for leg in self.legs:
            if leg.final == 0:
                self._cancel_leg(leg)
            if leg.screen is not None:
                leg.screen.call_ended()
        self._cancel_ring_timer()
        self._cancel_attempt_timer()
        self.state = CallState.ENDED
        if self.media is not None:
            self.media.close()
        if self.span is not None:
            self.span.end()
        apps.take_over(self.host, self, target.app)
        return True

    def _cancel_attempt_timer(self) -> None:
        """Answered or over: the walk through the plan's attempts stops."""
        if self.walker is not None:
            self.walker.stop()

    def _send_invite(self, leg: Leg, auth_header: tuple[str, str] | None = None) -> None:
        host = self.host
        target = leg.target
        sent_by = host.endpoint.sent_by(leg.flow)
        local = host.endpoint.local_host(leg.flow)
        if leg.invite is None:
            call_id = new_call_id()
            from_tag = new_tag()
            cseq = 1
        else:
            call_id = leg.invite.call_id
            from_tag = leg.invite.from_.tag or new_tag()
            cseq = leg.invite.cseq.seq + 1
        caller = self.caller
        if target.kind == "trunk" and target.trunk is not None:
            trunk = target.trunk
            from_domain = trunk.from_domain or trunk.host
            number = caller.number
            ext = caller.extension
            if ext is not None and ext.callerid_number:
                number = ext.callerid_number
            number = self.plan.caller_number or number
        else:
            from_domain = self.tenant.domain
            number = caller.number
        display = caller.display.replace('"', "")
        from_value = f'"{display}" <sip:{number}@{from_domain}>' if display else f"<sip:{number}@{from_domain}>"
        contact_user = number
        if self.plan.privacy:
            # RFC 3323: the callee learns nothing; the carrier still gets P-Asserted-Identity
            from_value, contact_user = '"Anonymous" <sip:anonymous@anonymous.invalid>', "anonymous"
        contact_host = f"[{local}]" if ":" in local else local
        contact_port = int(sent_by.rsplit(":", 1)[1])
        tparam = ";transport=tcp" if leg.flow.transport == "tcp" else ""
        mf = self.invite.max_forwards
        headers = [
            ("Via", f"SIP/2.0/{leg.flow.via_transport} {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", str(max(0, (70 if mf is None else mf) - 1))),
            ("From", f"{from_value};tag={from_tag}"),
            ("To", target.to_value),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", f"<sip:{contact_user}@{contact_host}:{contact_port}{tparam}>"),
            ("Allow", _ALLOW),
            ("User-Agent", USER_AGENT),
        ]
        if target.kind == "trunk":
            headers.append(("P-Asserted-Identity", f"<sip:{number}@{from_domain}>"))
        if self.plan.privacy:
            headers.append(("Privacy", "id"))
        headers.extend(self.plan.extra_headers)
        if auth_header is not None:
            headers.append(auth_header)
        body = b""
        if leg.screen is not None:  # "press 1 to accept": it talks to our endpoint first
            body = leg.screen.offer(local)
            headers.append(("Content-Type", "application/sdp"))
        elif self.invite.body and self.media is not None:
            # every fork and attempt offers the same: an external relay's answer was awaited
            # once, when the anchor opened (node/pbx/media_rtpengine.py)
            body = self.media.initial_offer(self.invite.body, local)
            headers.append(("Content-Type", "application/sdp"))
        req = Request("INVITE", target.ruri, headers, body)
        leg.invite = req
        leg.txn = host.endpoint.send_request(req, leg.flow)
        leg.txn.tu = leg
        if target.kind == "trunk" and target.trunk is not None:
            self.trunk_name = target.trunk.name

    # ------------------------------------------------------------------ B leg responses
    def on_leg_response(self, leg: Leg, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status == 100:
                return
            leg.provisional = True
            if leg.cancel_pending:
                self._send_cancel(leg)
                return
            if self.state is CallState.RINGING and leg.final == 0:
                self._forward_provisional(leg, resp)
            return
        if status < 300:
            if leg.screen is not None and leg.screen.on_2xx(resp):
                return  # answered, but the callee must accept first
            self._on_leg_2xx(leg, resp)
            return
        # final failure of this leg
        if leg.final:
            return
        leg.final = status
        if (
            status in (401, 407)
            and not leg.auth_tried
            and not leg.cancelled
            and self.state is CallState.RINGING
            and leg.target.trunk is not None
            and leg.target.trunk.username
        ):
            header = self.host.trunk_credentials(leg.target.trunk, resp, leg.invite)
            if header is not None:
                leg.auth_tried = True
                leg.final = 0
                leg.provisional = False
                self._send_invite(leg, header)
                return
        self._leg_failed(leg, status, resp.reason)

    def on_leg_timeout(self, leg: Leg) -> None:
        if leg.final:
            return
        leg.final = 408
        self._leg_failed(leg, 408, "Request Timeout")

    def _leg_failed(self, leg: Leg, status: int, reason: str) -> None:
        if leg.screen is not None:
            leg.screen.close()  # never answered: its media endpoint is not needed
        if self.state is not CallState.RINGING or self.walker is None:
            return
        code = self.walker.leg_failed(leg)
        if code is None:
            return  # forks still ringing, or the next attempt rings
        self.sip_code = code
        self.fail_a(code, reason if code == status and not self.plan.rules else None)

    def _awaits_media(self) -> bool:
        """The anchor asks an external relay (rtpengine): its rewrites are awaited in a task."""
        return getattr(self.media, "needs_await", False)

    def _forward_provisional(self, leg: Leg, resp: Response) -> None:
        body = b""
        if resp.body and self.media is not None and resp.content_type == "application/sdp" and leg.screen is None:
            if self._awaits_media():
                self.host._spawn(self._forward_provisional_async(leg, resp))
                return
            try:
                body = self.media.rewrite("b", resp.body, self.host.endpoint.local_host(self.a_flow))
            except SipError:
                body = b""
        self._send_provisional(resp, body)

    async def _forward_provisional_async(self, leg: Leg, resp: Response) -> None:
        try:
            body = await self.media.rewrite_async("b", resp.body, self.host.endpoint.local_host(self.a_flow))
        except SipError:
            body = b""
        if self.state is CallState.RINGING and leg.final == 0:
            self._send_provisional(resp, body)

    def _send_provisional(self, resp: Response, body: bytes) -> None:
        headers = [("Contact", self._a_contact()), ("Allow", _ALLOW)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        if self.ringing_sent and not body:
            return
        self.ringing_sent = True
        out = make_response(self.invite, resp.status if resp.status in (180, 181, 182, 183) else 180,
                            None, to_tag=self.a_tag, headers=headers, body=body)
        self.host.endpoint.send_response(out)

    def _on_leg_2xx(self, leg: Leg, resp: Response) -> None:
        if leg.dialog is None:
            leg.dialog = Dialog.as_uac(leg.invite, resp, leg.flow)  # type: ignore[arg-type]
        if self.state is not CallState.RINGING or leg.cancelled or (
            self.answered_leg is not None and self.answered_leg is not leg
        ):
            # a losing fork or a call already over: ACK and hang up that leg (§13.2.2.4)
            if leg.ack is None:
                self._ack_leg(leg, b"")
                self._bye_leg(leg)
            elif leg.ack is not None:
                self.host.endpoint.send_stateless(leg.ack, leg.flow)
            return
        if self.answered_leg is leg:
            # retransmitted 2xx: the ACK got lost
            if leg.ack is not None:
                self.host.endpoint.send_stateless(leg.ack, leg.flow)
            return
        self.answered_leg = leg
        self.b_sdp = resp.body
        leg.final = resp.status
        self.host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, self, "b")
        for other in self.legs:
            if other is not leg and other.final == 0:
                self._cancel_leg(other)
        body = b""
        if resp.body and self.media is not None:
            local_a = self.host.endpoint.local_host(self.a_flow)
            if self._awaits_media():
                if not self.late_offer:
                    self._ack_leg(leg, b"")  # B stops retransmitting; A's 200 waits for the relay
                # the cancelled forks' 487s and the ring timers must not end the call meanwhile
                self._cancel_ring_timer()
                self._cancel_attempt_timer()
                self.host._spawn(self._on_leg_2xx_async(leg, resp.body, local_a))
                return
            try:
                body = self.media.rewrite("b", resp.body, local_a)
            except SipError as e:
                log.info("bad SDP in 2xx from callee: %s", e)
                self._ack_leg(leg, b"")
                self._bye_leg(leg)
                self.sip_code = 488
                self.fail_a(488, "Not Acceptable Here")
                return
        self._answered(leg, body)

    async def _on_leg_2xx_async(self, leg: Leg, sdp: bytes, local_a: str) -> None:
        """The callee's 2xx once the relay rewrote its SDP. Its retransmissions meanwhile
        find ``answered_leg`` set and are only ACKed; a CANCEL, ring timeout or shutdown
        meanwhile ends the call, and then this leg is hung up too."""
        try:
            body = await self.media.rewrite_async("b", sdp, local_a)
        except SipError as e:
            if self.state is CallState.RINGING:
                log.info("SDP in 2xx from callee not relayed: %s", e)
                if leg.ack is None:
                    self._ack_leg(leg, b"")
                self._bye_leg(leg)
                self.sip_code = e.status_hint if e.status_hint >= 400 else 488
                self.fail_a(self.sip_code, None)
                return
            body = b""
        if self.state is not CallState.RINGING:
            if leg.ack is None:
                self._ack_leg(leg, b"")
            self._bye_leg(leg)
            return
        self._answered(leg, body)

    def _answered(self, leg: Leg, body: bytes) -> None:
        if not self.late_offer and leg.ack is None:
            self._ack_leg(leg, b"")
        self._answer_a(body)
        self.answer_at = time.time()
        self.state = CallState.ANSWERED
        self.disposition = "answered"
        self.sip_code = 200
        self._cancel_ring_timer()
        self._cancel_attempt_timer()
        self.host.call_answered(self)
        self._media_features_answered()

    def _answer_a(self, body: bytes) -> None:
        contact = self._a_contact()
        headers = [("Contact", contact), ("Allow", _ALLOW)]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        resp = make_response(self.invite, 200, None, to_tag=self.a_tag, headers=headers, body=body)
        self.a_final = resp
        self.a_dialog = Dialog.as_uas(self.invite, self.a_tag, self.a_flow, contact)
        self.host.register_dialog(self.a_dialog.call_id, self.a_tag, self, "a")
        self.host.endpoint.send_response(resp)
        self._start_2xx_retransmission()

    def _a_contact(self) -> str:
        ep = self.host.endpoint
        sent_by = ep.sent_by(self.a_flow)
        tparam = ";transport=tcp" if self.a_flow.transport == "tcp" else ""
        return f"<sip:{self.plan.callee or 'pbx'}@{sent_by}{tparam}>"

    # 2xx retransmission to A until its ACK (RFC 3261 §13.3.1.4)
    def _start_2xx_retransmission(self) -> None:
        self._waiting_ack = True
        if self.a_flow.reliable:
            self._retrans_deadline = self.host.loop.time() + 64 * self.host.t1
            self._retrans_timer = self.host.loop.call_later(64 * self.host.t1, self._on_retrans)
            return
        self._retrans_interval = self.host.t1
        self._retrans_deadline = self.host.loop.time() + 64 * self.host.t1
        self._retrans_timer = self.host.loop.call_later(self._retrans_interval, self._on_retrans)

    def _on_retrans(self) -> None:
        self._retrans_timer = None
        if not self._waiting_ack or self.state is CallState.ENDED:
            return
        if self.host.loop.time() >= self._retrans_deadline:
            log.info("no ACK for 2xx: ending call")
            self._waiting_ack = False
            self.hangup_both("no-ack")
            return
        if self.a_final is not None:
            self.host.endpoint.send_response(self.a_final)
        self._retrans_interval = min(self._retrans_interval * 2, self.host.t2)
        self._retrans_timer = self.host.loop.call_later(self._retrans_interval, self._on_retrans)

    # ------------------------------------------------------------------ A side events
    def on_cancel(self) -> None:
        """A sent CANCEL for its INVITE (the 200 to the CANCEL is already sent)."""
        if self.state in (CallState.ROUTING, CallState.RINGING):
            for leg in self.legs:
                if leg.final == 0:
                    self._cancel_leg(leg)
            self.sip_code = 487
            self.hangup_cause = "caller-cancel"
            self.disposition = "cancelled"
            self._final_a(487, None)

    def _on_ring_timeout(self) -> None:
        self._ring_timer = None
        if self.state is not CallState.RINGING:
            return
        for leg in self.legs:
            if leg.final == 0:
                self._cancel_leg(leg)
        self.sip_code = 480
        self.hangup_cause = "ring-timeout"
        self.disposition = "no-answer"
        self._final_a(480, "Temporarily Unavailable (no answer)")

    def fail_a(self, status: int, reason: str | None, headers: list[tuple[str, str]] | None = None) -> None:
        self.disposition = _disposition(status)
        self.sip_code = status
        if not self.hangup_cause:
            self.hangup_cause = f"sip-{status}"
        self._final_a(status, reason, headers)

    def _final_a(self, status: int, reason: str | None, headers: list[tuple[str, str]] | None = None) -> None:
        if self.state is CallState.ENDED or self.state is CallState.ANSWERED:
            return
        resp = make_response(self.invite, status, reason, to_tag=self.a_tag, headers=headers)
        self.host.endpoint.send_response(resp)
        self.end()

    # ------------------------------------------------------------------ in-dialog traffic
    def on_request(self, side: str, req: Request, txn) -> None:
        method = req.method
        dialog = self.a_dialog if side == "a" else (self.answered_leg.dialog if self.answered_leg else None)
        if method == "ACK":
            self._on_ack(side, req)
            return
        if dialog is None or self.state is not CallState.ANSWERED:
            self.host.endpoint.send_response(make_response(req, 481, None))
            return
        if not dialog.accepts(req):
            self.host.endpoint.send_response(make_response(req, 500, "Server Internal Error (CSeq out of order)"))
            return
        if method == "REFER":
            from node.pbx import transfer

            # a call whose media rtpengine relays is moved to the node's relay first
            # (node/pbx/reanchor.py, awaited by the transfer)
            transfer.on_refer(self, side, req)
            return
        if method == "BYE":
            if self.transfer is not None and self.transfer.on_bye(side, req):
                return
            self.host.endpoint.send_response(make_response(req, 200, None))
            self.hangup_cause = "caller-bye" if side == self.caller_side else "callee-bye"
            self._bye_side("b" if side == "a" else "a")
            self.end()
            return
        other = "b" if side == "a" else "a"
        if self.pending[other] is not None and method == "INVITE":
            # RFC 3261 §14.2: a re-INVITE crossing one in progress
            self.host.endpoint.send_response(make_response(req, 491, None))
            return
        if method == "INVITE":
            dialog.update_target(req)
        self._forward_in_dialog(side, req, txn)

    def _forward_in_dialog(self, side: str, req: Request, txn) -> None:
        other = "b" if side == "a" else "a"
        odialog = self.a_dialog if other == "a" else self.answered_leg.dialog  # type: ignore[union-attr]
        assert odialog is not None
        ep = self.host.endpoint
        body = req.body
        ctype = req.get("Content-Type")
        if body and req.content_type == "application/sdp" and self.media is not None:
            if self._awaits_media():
                fwd = Forwarded(self, side, txn, req)
                self.pending[other] = fwd  # a crossing re-INVITE gets its 491 meanwhile
                self.host._spawn(self._forward_in_dialog_async(fwd, ep.local_host(odialog.flow)))
                return
            try:
                body = self.media.rewrite(side, body, ep.local_host(odialog.flow))
            except SipError as e:
                ep.send_response(make_response(req, e.status_hint if e.status_hint >= 400 else 488, None))
                return
        self._send_in_dialog(Forwarded(self, side, txn, req), body)

    async def _forward_in_dialog_async(self, fwd: Forwarded, local_ip: str) -> None:
        req, other = fwd.request, "b" if fwd.from_side == "a" else "a"
        ep = self.host.endpoint
        try:
            body = await self.media.rewrite_async(fwd.from_side, req.body, local_ip,
                                                  offer=True if req.method in ("INVITE", "UPDATE") else None)
        except SipError as e:
            if self.pending.get(other) is fwd:
                self.pending[other] = None
            ep.send_response(make_response(req, e.status_hint if e.status_hint >= 400 else 488, None))
            return
        if self.state is not CallState.ANSWERED or self.pending.get(other) is not fwd:
            ep.send_response(make_response(req, 481, None))  # the call ended meanwhile
            return
        self._send_in_dialog(fwd, body)

    def _send_in_dialog(self, fwd: Forwarded, body: bytes) -> None:
        req, other = fwd.request, "b" if fwd.from_side == "a" else "a"
        odialog = self.a_dialog if other == "a" else self.answered_leg.dialog  # type: ignore[union-attr]
        assert odialog is not None
        ep = self.host.endpoint
        ctype = req.get("Content-Type")
        extra = []
        for name in ("Event", "Subscription-State", "Content-Disposition", "Info-Package", "Refer-To"):
            v = req.get(name)
            if v is not None:
                extra.append((name, v))
        if req.method == "INVITE":
            extra.append(("Allow", _ALLOW))
        out = odialog.create_request(req.method, ep.sent_by(odialog.flow), body=body, content_type=ctype if body else None, extra=extra)
        self.pending[other] = fwd
        t = ep.send_request(out, odialog.flow)
        t.tu = fwd

    def on_forwarded_response(self, fwd: Forwarded, resp: Response) -> None:
        if resp.status < 200:
            return
        other = "b" if fwd.from_side == "a" else "a"
        if self.pending.get(other) is fwd:
            self.pending[other] = None
        if self.state is not CallState.ANSWERED:
            return
        ep = self.host.endpoint
        req = fwd.request
        odialog = self.a_dialog if other == "a" else self.answered_leg.dialog  # type: ignore[union-attr]
        body = b""
        headers: list[tuple[str, str]] = []
        if req.method == "INVITE" and 200 <= resp.status < 300 and odialog is not None:
            odialog.update_target(resp)
            # ACK the side that answered right away: the offer was in the re-INVITE
            ack = odialog.create_request("ACK", ep.sent_by(odialog.flow), cseq=resp.cseq.seq)
            ep.send_stateless(ack, odialog.flow)
        if resp.body and resp.content_type == "application/sdp" and self.media is not None:
            side_dialog = self.a_dialog if fwd.from_side == "a" else self.answered_leg.dialog  # type: ignore[union-attr]
            if self._awaits_media():
                if fwd.answer is _REWRITING:
                    return  # a retransmitted 2xx (its ACK re-sent above): the first is with the relay
                if isinstance(fwd.answer, tuple) and fwd.answer[0] == resp.body:
                    self._send_forwarded_response(fwd, resp, fwd.answer[1], [("Content-Type", "application/sdp")])
                    return
                fwd.answer = _REWRITING
                self.host._spawn(self._forward_response_async(fwd, resp, ep.local_host(side_dialog.flow)))  # type: ignore[union-attr]
                return
            try:
                body = self.media.rewrite(other, resp.body, ep.local_host(side_dialog.flow))  # type: ignore[union-attr]
                headers.append(("Content-Type", "application/sdp"))
            except SipError:
                body = b""
        elif resp.body:
            body = resp.body
            ct = resp.get("Content-Type")
            if ct:
                headers.append(("Content-Type", ct))
        self._send_forwarded_response(fwd, resp, body, headers)

    async def _forward_response_async(self, fwd: Forwarded, resp: Response, local_ip: str) -> None:
        other = "b" if fwd.from_side == "a" else "a"
        headers: list[tuple[str, str]] = []
        try:
            body = await self.media.rewrite_async(other, resp.body, local_ip)
            headers.append(("Content-Type", "application/sdp"))
            fwd.answer = (resp.body, body)
        except SipError as e:
            log.info("SDP of a forwarded response not relayed: %s", e)
            body = b""
            fwd.answer = None
        if self.state is not CallState.ANSWERED:
            return
        self._send_forwarded_response(fwd, resp, body, headers)

    def _send_forwarded_response(self, fwd: Forwarded, resp: Response, body: bytes,
                                 headers: list[tuple[str, str]]) -> None:
        req, ep = fwd.request, self.host.endpoint
        if req.method == "INVITE" and 200 <= resp.status < 300:
            headers.append(("Contact", self._a_contact() if fwd.from_side == "a" else self._b_contact()))
        out = make_response(req, resp.status, resp.reason, headers=headers, body=body)
        ep.send_response(out)
        if req.method in ("INVITE", "UPDATE") and 200 <= resp.status < 300 and req.body and resp.body:
            self._media_offer_answered(fwd.from_side, req.body, resp.body)

    def on_forwarded_timeout(self, fwd: Forwarded) -> None:
        other = "b" if fwd.from_side == "a" else "a"
        if self.pending.get(other) is fwd:
            self.pending[other] = None
        if self.state is CallState.ANSWERED:
            self.host.endpoint.send_response(make_response(fwd.request, 408, None))
            if fwd.request.method in ("INVITE", "BYE"):
                self.hangup_both("timeout")

    def _b_contact(self) -> str:
        leg = self.answered_leg
        assert leg is not None and leg.invite is not None
        return leg.invite.get("Contact") or ""

    def _on_ack(self, side: str, req: Request) -> None:
        if side != "a":
            return  # ACKs from B for its re-INVITEs answers: nothing to do
        if self._waiting_ack and req.cseq.seq == self.invite.cseq.seq:
            self._waiting_ack = False
            if self._retrans_timer is not None:
                self._retrans_timer.cancel()
                self._retrans_timer = None
            leg = self.answered_leg
            if self.late_offer and leg is not None and leg.ack is None:
                body = b""
                if req.body and self.media is not None:
                    if self._awaits_media():
                        self.host._spawn(self._ack_late_answer(leg, req.body))
                        return
                    try:
                        body = self.media.rewrite("a", req.body, self.host.endpoint.local_host(leg.flow))
                    except SipError:
                        body = b""
                self._ack_leg(leg, body)

    async def _ack_late_answer(self, leg: Leg, sdp: bytes) -> None:
        """A's answer (in its ACK) to the callee's offer, once the relay rewrote it."""
        try:
            body = await self.media.rewrite_async("a", sdp, self.host.endpoint.local_host(leg.flow))
        except SipError:
            body = b""
        if leg.ack is None:
            self._ack_leg(leg, body)

    # ------------------------------------------------------------------ B leg helpers
    def _ack_leg(self, leg: Leg, body: bytes) -> None:
        assert leg.dialog is not None and leg.invite is not None
        ep = self.host.endpoint
        ack = leg.dialog.create_request(
            "ACK", ep.sent_by(leg.flow), body=body, content_type="application/sdp" if body else None,
            cseq=leg.invite.cseq.seq,
        )
        leg.ack = ack
        ep.send_stateless(ack, leg.flow)

    def _bye_leg(self, leg: Leg) -> None:
        if leg.bye_sent or leg.dialog is None:
            return
        leg.bye_sent = True
        ep = self.host.endpoint
        bye = leg.dialog.create_request("BYE", ep.sent_by(leg.flow))
        ep.send_request(bye, leg.flow)

    def _cancel_leg(self, leg: Leg) -> None:
        if leg.cancelled or leg.final:
            return
        leg.cancelled = True
        if not leg.provisional:
            # RFC 3261 §9.1: CANCEL only after a provisional; sent when one arrives
            leg.cancel_pending = True
            return
        self._send_cancel(leg)

    def _send_cancel(self, leg: Leg) -> None:
        inv = leg.invite
        assert inv is not None
        leg.cancel_pending = False
        self.host.endpoint.send_request(build_cancel(inv), leg.flow)

    def _bye_side(self, side: str) -> None:
        if side == "b":
            if self.answered_leg is not None:
                self._bye_leg(self.answered_leg)
            return
        if self.a_dialog is not None:
            ep = self.host.endpoint
            bye = self.a_dialog.create_request("BYE", ep.sent_by(self.a_dialog.flow))
            ep.send_request(bye, self.a_dialog.flow)

    def hangup_both(self, cause: str) -> None:
        if self.state is CallState.ENDED:
            return
        if self.state is not CallState.ANSWERED:
            for leg in self.legs:
                if leg.final == 0:
                    self._cancel_leg(leg)
            self.hangup_cause = cause
            self.fail_a(503 if cause == "shutdown" else 408, None)
            return
        self.hangup_cause = self.hangup_cause or cause
        self._bye_side("a")
        self._bye_side("b")
        self.end()

    # ------------------------------------------------------------------ end
    def _cancel_ring_timer(self) -> None:
        if self._ring_timer is not None:
            self._ring_timer.cancel()
            self._ring_timer = None

    def end(self) -> None:
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        if self.transfer is not None:
            self.transfer.abort()
        self._cancel_ring_timer()
        self._cancel_attempt_timer()
        if self._retrans_timer is not None:
            self._retrans_timer.cancel()
            self._retrans_timer = None
        self._media_features_ended()
        if self.media is not None:
            self.media.close()
        self.host.call_ended(self)
        self.walker = None  # stopped: nothing rings any more (its bound methods point back here)
        self.host.loop.call_later(RELEASE_AFTER_T1 * self.host.t1, self._release)

    def _release(self) -> None:
        """Break the call's reference cycles (legs, transactions, walker, forwarded requests)
        once its transactions are surely over, so reference counting frees it: the garbage
        collector would otherwise find ~80 objects per call, long promoted to its oldest
        generation."""
        for leg in self.legs:
            if leg.call is self:  # not a leg another call adopted (node/pbx/replaces.py)
                leg.txn = None
                leg.screen = None
        self.legs = []
        self.answered_leg = None
        self.walker = None
        self.txn = None
        self.transfer = None
        self.pending = {"a": None, "b": None}

    # ------------------------------------------------------------------ media features
    # (music on hold: node/pbx/hold.py; call recording: node/pbx/recording.py)
    def _media_features_answered(self) -> None:
        if self.media is not None:
            recording.on_answered(self)

    def _media_offer_answered(self, offerer: str, offer: bytes, answer: bytes) -> None:
        if self.media is not None:
            hold.on_offer_answered(self, offerer, offer, answer)

    def _media_features_ended(self) -> None:
        for leg in self.legs:
            if leg.screen is not None:
                leg.screen.call_ended()
        if getattr(self, "hold", None) is not None:
            hold.on_call_ended(self)
        if getattr(self, "recorder", None) is not None:
            recording.on_call_ended(self)

    def cdr(self) -> Cdr:
        return Cdr(
            id=self.id,
            tenant_id=self.tenant.id,
            call_id=self.invite.call_id,
            caller=self.caller.number,
            caller_name=self.caller.display,
            callee=self.plan.callee,
            direction=self.plan.direction,
            start=self.start,
            answer=self.answer_at,
            end=time.time(),
            trunk=self.trunk_name,
            disposition=self.disposition,
            sip_code=self.sip_code,
            hangup_cause=self.hangup_cause or ("normal" if self.answer_at else ""),
        )

    @property
    def dialogs(self) -> list[tuple[str, str]]:
        out = []
        if self.a_dialog is not None:
            out.append((self.a_dialog.call_id, self.a_dialog.local_tag))
        for leg in self.legs:
            if leg.dialog is not None:
                out.append((leg.dialog.call_id, leg.dialog.local_tag))
        return out


#: kept under their old names for the modules that import them from here
_best_failure = best_failure
_outcome = outcome


def _disposition(status: int) -> str:
    if status in (486, 600):
        return "busy"
    if status == 480:
        return "no-answer"
    if status == 487:
        return "cancelled"
    if status in (403, 404, 603, 488, 484, 420):
        return "rejected"
    return "failed"
