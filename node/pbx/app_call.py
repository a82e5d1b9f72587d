"""A call the node answers itself and hands to an application (IVR today; voicemail,
conference, queues later), which may end by bridging the caller to a normal destination.

Theory of operation:

  INVITE ──media endpoint + SDP answer──▶ 200 OK ──ACK──▶ app runs (prompts, digits)
     │                                                    │ app.transfer("1002")
     │                                                    ▼
     │                         B legs INVITEd (our second endpoint's offer), ringback to A
     │                                                    │ first 2xx
     │                                                    ▼
     └──────────── BYE either side ◀─────────── BRIDGED: the two endpoints forward RTP

* We are the UAS of the A leg: the answer comes from our own ``MediaEndpoint`` (G.711 +
  RFC 4733), so no B leg exists while the app runs. A re-INVITE or UPDATE is answered by the
  endpoint (hold moves nothing but our destination); INFO with application/dtmf-relay becomes a
  digit like RFC 4733 and in-band ones.
* A transfer compiles the destination with the tenant's features (node/pbx/dialplan.py:
  hunt groups, forwarding, time switches, outside numbers) and places B legs like ``Call``
  does, following the plan's attempt rules (same ``Leg`` objects, so the service routes their
  responses here unchanged), but offers SDP of a second endpoint of ours; on answer the two
  endpoints are bridged in the media engine. The A leg is never re-INVITEd: phones that
  handle re-INVITEs badly never see one, and the engine stays in the media path (recording,
  a later "press * to return to the menu").
* The application is a coroutine ``run(ctx)`` (``AppContext``); a hang-up cancels it.
  Applications register by kind in ``APPS`` (node/pbx/ivr.py registers 'ivr').
* One CDR per call: answered when the node answered, callee the number dialled (the IVR);
  ``transferred_to`` tells where the caller went (logged, in the span).

Once bridged, the parties use the features of a plain call (node/pbx/call.py), carried out
on the endpoints instead of a relay:

* hold: a party's sendonly/inactive re-INVITE is answered by its endpoint; the bridge stops
  and the other party's endpoint plays the tenant's music on hold (node/pbx/hold.py); the
  resuming re-INVITE bridges the endpoints again. Nobody else is re-INVITEd.
* blind REFER (``AppRefer``, the rules of node/pbx/transfer.py: same tenant, the
  transferor's dial plan and class of service, 202 + NOTIFY sipfrag): the target is rung by
  this call's own transfer machinery (``_ring``) from a new endpoint while the transferee
  hears ringback; on answer the new endpoint replaces the transferor's, the transferor is
  released, the pair gets a new CDR (the old one ends ``blind-transfer``). Failure: the
  transferee goes back to a transferor still in the call, else it is released.
* attended REFER with Replaces naming a plain call's dialog, in either call
  (``attended_join``): the plain call is absorbed; the endpoint that faced the transferor
  and the relay leg that faced it are chained (each sends to the other), so nobody is
  re-INVITEd (unless the target was held: then it gets our endpoint's sendrecv offer).
* park (node/pbx/park.py ``park_app_call``): either party blind-transfers the other to a
  park lot or slot: the transferor is released and its endpoint closed; the parked party
  keeps its own endpoint, which plays the tenant's music on hold, and waits on side a
  (``vacate``). A retriever's INVITE is answered by a new endpoint bridged to the parked
  party's; the timeout recall rings the parker with ``_ring`` from a new endpoint. CDRs as
  for a plain call's park.
* not supported, answered with a clear status: transfer to an application, joining two
  application calls or a ringing call (488), an INVITE with Replaces naming an application
  call's dialog (488, node/pbx/replaces.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from node.model import Cdr
from node.pbx.attempts import AttemptWalker
from node.pbx.call import Caller, CallState, Leg, _best_failure, _disposition
from node.config_rules import ConfigError
from node.pbx import dialplan, hold, outgoing, recording
from node.pbx.transfer import (BlindTransfer, ReferError, check_refer, refuse, require_same_party,
                                require_transferor)
from node.pbx.routing import RoutePlan, app_plan
from node.sip.cancel import build_cancel
from node.sip.dialog import Dialog
from node.sip.errors import SipError
from node.sip.flow import Flow
from node.sip.ids import new_branch, new_call_id, new_tag
from node.sip.message import Request, Response, make_response
from observability import logging as olog
from observability import metrics as M
from observability import tracing as otrace

if TYPE_CHECKING:
    from node.media_engine.endpoint import MediaEndpoint
    from node.media_engine.engine import MediaEngine
    from node.media_engine.prompts import PromptLibrary
    from node.pbx.service import PbxService

log = logging.getLogger("hivepbx.app")

USER_AGENT = "hivepbx"
_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER"
#: a transfer's plan reached an application target (internal status, never sent)
_APP_REACHED = 1
#: an application: ``await run(ctx, name, document)``
AppFn = Callable[["AppContext", str, dict], Awaitable[None]]
#: kind of feature object → application (filled by the application modules on import)
APPS: dict[str, AppFn] = {}


def register_app(kind: str, fn: AppFn) -> None:
    APPS[kind] = fn


class TransferResult:
    __slots__ = ("answered", "status", "number")

    def __init__(self, answered: bool, status: int, number: str) -> None:
        self.answered = answered
        self.status = status
        self.number = number

    def __repr__(self) -> str:
        return f"<TransferResult {self.number} {'answered' if self.answered else self.status}>"


def leg_up(leg) -> bool:
    """Whether the phone of ``leg`` may still have it up (see ``AppContext.open_legs``)."""
    return leg.invite is not None and not leg.bye_sent and (leg.final == 0 or leg.final < 300)


class AppContext:
    """What an application may do with its caller. Every method is safe after a hang-up
    (it returns at once; the app task is being cancelled anyway)."""

    def __init__(self, call: "AppCall") -> None:
        self.call = call
        self.tenant = call.tenant
        self.caller = call.caller
        self.config = call.host.config
        #: why the application was reached (``AppTarget.arg``: voicemail's "busy" / "unavailable")
        self.arg = ""

    @property
    def endpoint(self) -> "MediaEndpoint":
        assert self.call.ep is not None
        return self.call.ep

    def prompt(self, name: str) -> Path | None:
        """The tenant's recording of ``name``, else the default one (None: neither exists)."""
        return self.call.apps.prompts.path(self.tenant.id, name)

    async def play(self, names: list[str], *, interruptible: bool = False) -> str:
        """Play prompts by name; 'finished', 'interrupted' (a key was pressed) or 'stopped'."""
        paths = []
        for n in names:
            p = self.prompt(n)
            if p is None:
                log.warning("prompt %r missing for tenant %s", n, self.tenant.name)
            else:
                paths.append(p)
        return await self.endpoint.play(paths, interruptible=interruptible)

    async def get_digit(self, timeout: float | None) -> str | None:
        return await self.endpoint.get_digit(timeout)

    def flush_digits(self) -> None:
        self.endpoint.flush_digits()

    async def transfer(self, number: str) -> TransferResult:
        """Ring ``number`` (an extension or, through the tenant's routes, an outside number)
        and bridge the caller to whoever answers."""
        return await self.call.transfer(number)

    def open_legs(self) -> list:
        """The legs to phones this call rang that may still be up: no final response yet (a
        CANCEL waits for a provisional one, RFC 3261 §9.1) or answered and not yet hung up."""
        return [leg for leg in self.call.legs if leg_up(leg)]

    def legs_up(self) -> bool:
        return bool(self.open_legs())

    async def run_app(self, kind: str, name: str) -> bool:
        """Go to another application object of this tenant (an IVR's sub-menu): False when
        it does not exist."""
        return await self.call.run_app(kind, name)

    def hangup(self) -> None:
        self.call.hangup_both("app-hangup")


class AppRuntime:
    """Per node: the media engine and prompts applications use. ``PbxService.apps``."""

    def __init__(self, engine: "MediaEngine", prompts: "PromptLibrary", advertise: str | None = None) -> None:
        self.engine = engine
        self.prompts = prompts
        self.advertise = advertise

    def start(self, host: "PbxService", req: Request, txn, flow: Flow, plan: RoutePlan, caller: Caller) -> None:
        call = AppCall(host, self, req, txn, flow, plan, caller)
        host._spawn(call.setup())

    def take_over(self, host: "PbxService", call, app) -> None:
        """A ringing ``Call`` whose plan reached an application (``Target.app``: voicemail
        after busy / no answer): answer its caller here. The application call keeps the
        call's id, start and to-tag (one CDR, the early dialog's tag) and its external-call
        slot; busy lamps see the ringing call end and the application call begin."""
        plan = RoutePlan(call.tenant, call.plan.direction, call.plan.callee, external=call.plan.external, app=app)
        ac = AppCall(host, self, call.invite, call.txn, call.a_flow, plan, call.caller)
        ac.id, ac.start, ac.a_tag = call.id, call.start, call.a_tag
        ac.counts_external, call.counts_external = call.counts_external, False
        ac.taken_over = True
        host.calls[ac.id] = ac
        call.txn.tu = None  # a CANCEL from now on marks the transaction; setup answers 487
        host._call_state(call, "terminated")
        host._spawn(ac.setup())


class AppCall:
    #: node/pbx/replaces.py hands attended REFERs naming one of our dialogs to ``attended_refer_into``
    joins_attended = True
    #: an attended join waits for the plain call's media to leave rtpengine (``join_attended``)
    _joining = False

    def __init__(self, host: "PbxService", apps: AppRuntime, invite: Request, txn, flow: Flow,
                 plan: RoutePlan, caller: Caller) -> None:
        self.host = host
        self.apps = apps
        self.id = str(uuid.uuid4())
        self.invite = invite
        self.txn = txn
        self.a_flow = flow
        self.plan = plan
        self.tenant = plan.tenant
        self.caller = caller
        self.state = CallState.ROUTING
        self.a_tag = new_tag()
        self.a_dialog: Dialog | None = None
        self.ep: MediaEndpoint | None = None
        self.b_ep: MediaEndpoint | None = None
        self.legs: list[Leg] = []
        self.answered_leg: Leg | None = None
        self.late_offer = not invite.body
        self.start = time.time()
        self.answer_at: float | None = None
        self.sip_code = 0
        self.hangup_cause = ""
        self.disposition = "failed"
        self.trunk_name = ""
        self.transferred_to = ""
        self.span = None
        self.counts_external = False
        self.app_task: asyncio.Task | None = None
        self._depth = 0
        # 2xx retransmission to A (§13.3.1.4), for the INVITE and any re-INVITE we answer
        self._a_final: Response | None = None
        self._ack_cseq = 0
        self._retrans_timer: asyncio.TimerHandle | None = None
        self._retrans_interval = 0.0
        self._retrans_deadline = 0.0
        # the transfer in progress
        self._xfer: asyncio.Future | None = None
        self._xfer_plan: RoutePlan | None = None
        #: the transfer's walk through its plan's attempts (node/pbx/attempts.py)
        self._walker: AttemptWalker | None = None
        #: answering a ringing Call's caller (``AppRuntime.take_over``): already counted
        self.taken_over = False
        #: a transfer reached an application target (an extension's voicemail)
        self._xfer_app = None
        #: a REFER of a bridged party being carried out (``AppRefer``)
        self._refer: AppRefer | None = None
        #: the side whose party put the other on hold (the other hears music), or None
        self.held_by: str | None = None
        #: relays of plain calls joined into this one by an attended transfer (closed with it)
        self._absorbed: list = []
        #: who is on which side once parties changed (``outgoing.new_pair``)
        self.parties: dict[str, Caller] | None = None
        self.caller_side = "a"
        #: the park slot holding this call (node/pbx/park.py ``AppParked``), or None
        self._parked = None

    # ------------------------------------------------------------------ answer
    async def setup(self) -> None:
        host, req, txn = self.host, self.invite, self.txn
        with olog.bind(call_id=req.call_id, tenant=self.tenant.name):
            if req.body and req.content_type != "application/sdp":
                self._reject(415, None, [("Accept", "application/sdp")])
                return
            plan = self.plan
            if plan.external and not self.taken_over:
                limit = self.tenant.max_calls
                if limit and host._external.get(self.tenant.id, 0) >= limit:
                    self.hangup_cause = "tenant-call-limit"
                    self._reject(503, "Service Unavailable (tenant call limit reached)", [("Retry-After", "30")])
                    return
                host._external[self.tenant.id] = host._external.get(self.tenant.id, 0) + 1
                self.counts_external = True
            try:
                self.ep = await self.apps.engine.open_endpoint(req.call_id, self.tenant.name)
            except SipError as e:
                log.warning("no media endpoint for application call: %s", e.reason)
                self._reject(503, None, [("Retry-After", "5")])
                return
            if getattr(txn, "tu", None) == "cancelled":
                self.hangup_cause = "caller-cancel"
                self._reject(487, None)
                return
            local = self._sdp_ip(self.a_flow)
            try:
                body = self.ep.offer(local) if self.late_offer else self.ep.answer(req.body, local)
            except SipError as e:
                self._reject(e.status_hint if 400 <= e.status_hint < 500 else 488, _clean(e.reason))
                return
            txn.tu = self
            host.calls[self.id] = self
            if not self.taken_over:
                M.call_started()
            if otrace.enabled():
                self.span = otrace.tracer().start_span("call", attributes={
                    "hivepbx.tenant": self.tenant.name, "hivepbx.direction": plan.direction,
                    "hivepbx.caller": self.caller.number, "hivepbx.callee": plan.callee,
                    "hivepbx.app": f"{plan.app.kind}:{plan.app.name}", "sip.call_id": req.call_id})
            self.a_dialog = Dialog.as_uas(req, self.a_tag, self.a_flow, self._contact())
            host.register_dialog(self.a_dialog.call_id, self.a_tag, self, "a")
            resp = make_response(req, 200, None, to_tag=self.a_tag, body=body,
                                 headers=[("Contact", self._contact()), ("Allow", _ALLOW),
                                          ("Content-Type", "application/sdp")])
            self._send_2xx(req, resp)
            self.state = CallState.ANSWERED
            self.answer_at = time.time()
            self.disposition = "answered"
            self.sip_code = 200
            host.call_answered(self)  # type: ignore[arg-type]
            log.info("application %s %s answered call from %s", plan.app.kind, plan.app.name, self.caller.number)
            self.app_task = host.loop.create_task(self._run_app_task())

    def _reject(self, status: int, reason: str | None, headers=None) -> None:
        """Refused before answering: one CDR like any refused call."""
        if self.ep is not None:
            self.ep.close()
            self.ep = None
        if getattr(self.txn, "tu", None) == "cancelled":
            status, reason = 487, None
            self.hangup_cause = self.hangup_cause or "caller-cancel"
        self.host.endpoint.send_response(make_response(self.invite, status, reason, to_tag=self.a_tag, headers=headers))
        self.sip_code = status
        self.disposition = _disposition(status)
        self.hangup_cause = self.hangup_cause or f"sip-{status}"
        self.host.calls[self.id] = self
        if not self.taken_over:
            M.call_started()
        self.state = CallState.ENDED
        self.host.call_ended(self)  # type: ignore[arg-type]

    async def _run_app_task(self) -> None:
        app = self.plan.app
        assert app is not None
        try:
            await self.run_app(app.kind, app.name, app.arg)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("application %s %s failed", app.kind, app.name)
        if self.state is CallState.ANSWERED and self.answered_leg is None:
            self.hangup_cause = self.hangup_cause or "app-done"
            self.hangup_both("app-done")

    async def run_app(self, kind: str, name: str, arg: str = "") -> bool:
        fn = APPS.get(kind)
        doc = await self.host.config.get_object(self.tenant.id, kind, name) if fn is not None else None
        if fn is None or doc is None:
            log.warning("no %s %r in tenant %s", kind, name, self.tenant.name)
            return False
        self._depth += 1
        try:
            if self._depth > 16:
                log.warning("application nesting too deep at %s %s", kind, name)
                return False
            ctx = AppContext(self)
            ctx.arg = arg
            await fn(ctx, name, doc)
            return True
        finally:
            self._depth -= 1

    # ------------------------------------------------------------------ 2xx to A until ACK
    def _send_2xx(self, req: Request, resp: Response) -> None:
        self._a_final = resp
        self._ack_cseq = req.cseq.seq
        self.host.endpoint.send_response(resp)
        loop = self.host.loop
        t1 = self.host.t1
        self._retrans_deadline = loop.time() + 64 * t1
        self._retrans_interval = t1
        if self._retrans_timer is not None:
            self._retrans_timer.cancel()
        delay = 64 * t1 if self.a_flow.reliable else t1
        self._retrans_timer = loop.call_later(delay, self._on_retrans)

    def _on_retrans(self) -> None:
        self._retrans_timer = None
        if self._a_final is None or self.state is CallState.ENDED:
            return
        loop = self.host.loop
        if loop.time() >= self._retrans_deadline:
            log.info("no ACK for 2xx: ending application call")
            self._a_final = None
            self.hangup_both("no-ack")
            return
        self.host.endpoint.send_response(self._a_final)
        self._retrans_interval = min(self._retrans_interval * 2, self.host.t2)
        self._retrans_timer = loop.call_later(self._retrans_interval, self._on_retrans)

    # ------------------------------------------------------------------ in-dialog requests
    def on_request(self, side: str, req: Request, txn) -> None:
        ep_ = self.host.endpoint
        method = req.method
        if method == "ACK":
            if side == "a" and self._a_final is not None and req.cseq.seq == self._ack_cseq:
                self._a_final = None
                if self._retrans_timer is not None:
                    self._retrans_timer.cancel()
                    self._retrans_timer = None
                if req.body and self.ep is not None and (self.late_offer or self._offered_in_2xx):
                    try:
                        self.ep.accept_answer(req.body)
                    except SipError as e:
                        log.info("bad SDP in ACK: %s", e)
                self._offered_in_2xx = False
            return
        dialog = self.a_dialog if side == "a" else (self.answered_leg.dialog if self.answered_leg else None)
        if dialog is None or self.state is not CallState.ANSWERED:
            ep_.send_response(make_response(req, 481, None))
            return
        if not dialog.accepts(req):
            ep_.send_response(make_response(req, 500, "Server Internal Error (CSeq out of order)"))
            return
        if method == "BYE":
            refer = self._refer
            if refer is not None and refer.on_bye(side, req):
                return  # the transferor leaving while its transfer runs
            ep_.send_response(make_response(req, 200, None))
            self.hangup_cause = "caller-bye" if side == self.caller_side else "callee-bye"
            self._bye_side("b" if side == "a" else "a")
            self.end()
            return
        ep = self.ep if side == "a" else self.b_ep
        if method in ("INVITE", "UPDATE"):
            if method == "INVITE" and side == "a" and self._a_final is not None:
                ep_.send_response(make_response(req, 491, None))  # our 2xx is not ACKed yet
                return
            dialog.update_target(req)
            self._answer_in_dialog(side, req, ep, dialog)
            return
        if method == "INFO" and side == "a":
            digit = _info_digit(req)
            if digit is not None and self.ep is not None:
                self.ep.deliver_digit(digit, "sip-info")
            ep_.send_response(make_response(req, 200, None))
            return
        if method == "REFER":
            self._on_refer(side, req)
            return
        if method in ("OPTIONS", "INFO", "NOTIFY"):
            ep_.send_response(make_response(req, 200, None, headers=[("Allow", _ALLOW)]))
            return
        ep_.send_response(make_response(req, 501, None, headers=[("Allow", _ALLOW)]))

    _offered_in_2xx = False

    def _answer_in_dialog(self, side: str, req: Request, ep, dialog: Dialog) -> None:
        local = self._sdp_ip(dialog.flow)
        headers = [("Contact", dialog.local_contact or self._contact()), ("Allow", _ALLOW)]
        body = b""
        if ep is not None:
            try:
                if req.body and req.content_type == "application/sdp":
                    body = ep.answer(req.body, local)
                elif req.method == "INVITE":
                    body = ep.offer(local)  # offerless re-INVITE: the ACK carries the answer
                    self._offered_in_2xx = side == "a"
            except SipError as e:
                self.host.endpoint.send_response(make_response(req, 488, _clean(e.reason)))
                return
        if body:
            headers.append(("Content-Type", "application/sdp"))
        resp = make_response(req, 200, None, headers=headers, body=body)
        if req.method == "INVITE" and side == "a":
            self._send_2xx(req, resp)
        else:
            self.host.endpoint.send_response(resp)
        if req.body and body:
            self._hold_changed(side, req.body)

    # ------------------------------------------------------------------ hold (music on hold)
    def _hold_changed(self, side: str, offer: bytes) -> None:
        """A bridged party's re-INVITE / UPDATE was answered: a hold offer stops the bridge and
        the other party hears the tenant's music from its own endpoint (same port, no
        re-INVITE of it); the resuming offer bridges the two endpoints again."""
        if self.answered_leg is None or self.ep is None or self.b_ep is None or self._refer is not None:
            return
        is_hold = hold.is_hold_offer(offer)
        if is_hold is None:
            return
        held_ep = self.b_ep if side == "a" else self.ep
        if is_hold:
            if self.held_by == side:
                return  # a refreshed hold offer
            self.held_by = side
            self.ep.unbridge()
            self._play_music(held_ep)
            hold.HOLDS.inc()
            if self.span is not None:
                self.span.add_event("music-on-hold", {"hivepbx.held_side": "b" if side == "a" else "a"})
            log.info("application call: side %s holds, music to the other", side)
        elif self.held_by == side:
            self.held_by = None
            self.ep.bridge(self.b_ep)
            log.info("application call resumed: bridged again")

    def _play_music(self, ep) -> None:
        try:
            ep.listen(hold.moh_source(self.apps.engine, self.host.cfg.data_dir, self.tenant.id))
        except Exception as e:  # music is a nicety: a missing file must not break the call
            log.warning("no music on hold: %s", e)
            ep.tone("ringback")

    def _restore_media(self) -> None:
        """Bridge the two endpoints again, or music to the held one when a side holds."""
        if self.ep is None or self.b_ep is None:
            return
        self.ep.bridge(self.b_ep)
        if self.held_by is not None:
            self.ep.unbridge()
            self._play_music(self.b_ep if self.held_by == "a" else self.ep)

    # ------------------------------------------------------------------ transfer (B legs)
    async def transfer(self, number: str) -> TransferResult:
        if self.state is not CallState.ANSWERED or self.answered_leg is not None or self._xfer is not None:
            return TransferResult(False, 481, number)
        plan = await self._plan_for(number)
        if plan.app is not None:
            # another application (an IVR's number): run it here, no B leg needed
            ok = await self.run_app(plan.app.kind, plan.app.name)
            return TransferResult(False, 200 if ok else 404, number)
        if plan.fail_status or not plan.attempts:
            return TransferResult(False, plan.fail_status or 404, number)
        try:
            self.b_ep = await self.apps.engine.open_endpoint(self.invite.call_id, self.tenant.name)
        except SipError as e:
            log.warning("no media endpoint for transfer: %s", e.reason)
            return TransferResult(False, 503, number)
        assert self.ep is not None
        self.ep.tone("ringback")
        self.legs = []
        status = await self._ring(plan)
        app, self._xfer_app = self._xfer_app, None
        if app is not None:
            # the destination's plan ended in an application (its voicemail): run it here
            self.ep.stop_output()
            if self.b_ep is not None:
                self.b_ep.close()
                self.b_ep = None
            ok = await self.run_app(app.kind, app.name, app.arg)
            return TransferResult(False, 200 if ok else 404, number)
        if status == 200:
            self.transferred_to = number
            log.info("application call transferred to %s", number)
            if self.span is not None:
                self.span.set_attribute("hivepbx.transferred_to", number)
            return TransferResult(True, 200, number)
        self.ep.stop_output()
        if self.b_ep is not None:
            self.b_ep.close()
            self.b_ep = None
        return TransferResult(False, status, number)

    async def _ring(self, plan: RoutePlan) -> int:
        """Ring ``plan``'s attempts with B legs offering ``_offer_ep``; the first final outcome
        (200: answered and bridged; _APP_REACHED; else the failure status)."""
        self._xfer_plan = plan
        fut = self._xfer = self.host.loop.create_future()
        # plans with rules (hunt groups, forwarding) time each attempt; their overall cap may be 0
        ring = plan.ring_timeout if plan.rules else (self.tenant.ring_timeout or self.host.cfg.ring_timeout)
        timer = self.host.loop.call_later(ring, self._on_xfer_timeout) if ring else None
        self._walker = AttemptWalker(
            plan, ring=self._ring_target, cancel=self._cancel_leg, call_later=self.host.loop.call_later,
            default_ring=self.tenant.ring_timeout or self.host.cfg.ring_timeout,
            on_no_answer=self._on_xfer_timeout, on_app=self._reach_app,
        )
        if not self._walker.start():
            self._xfer_done(_best_failure([l.final for l in self.legs if l is not self.answered_leg] or [404]))
        try:
            return await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._cancel_attempt_timer()
            self._xfer = None

    def _xfer_done(self, status: int) -> None:
        if self._xfer is not None and not self._xfer.done():
            self._xfer.set_result(status)

    async def _plan_for(self, number: str) -> RoutePlan:
        """Where ``number`` (an internal number, tel:/+ outside number or sip: URI) leads in this
        tenant: an application, or the tenant's call features (hunt groups, forwarding, time
        switches) compiled by the dialplan exactly as for a call to that number."""
        host = self.host
        app = await app_plan(self.tenant, "internal", number, host.config)
        if app is not None:
            return app
        ctx = dialplan.Ctx(self.tenant, host.config, host.locations, host.features, self.caller.number)
        try:
            frag = await ctx.dest(number)
        except ConfigError as e:
            plan = RoutePlan(self.tenant, "internal", number)
            plan.fail_status, plan.fail_reason = 404, str(e)
            return plan
        ext = await host.config.get_extension(self.tenant.id, number) if number.isdigit() else None
        return ctx.plan(frag, "internal", number, ext)

    def _ring_target(self, target) -> Leg | None:
        """Start one target of the transfer's current attempt (the walker's ``ring``)."""
        try:
            flow = self.host.flow_for(target)
        except OSError as e:
            log.info("cannot reach %s: %s", target.ruri, e)
            return None
        leg = Leg(self, target, flow)  # type: ignore[arg-type]
        self.legs.append(leg)
        self._send_invite(leg)
        return leg

    def _reach_app(self, target) -> bool:
        """The transfer's plan reached an application (the extension's voicemail)."""
        for leg in self.legs:
            if leg.final == 0:
                self._cancel_leg(leg)
        self._xfer_app = target.app
        self._xfer_done(_APP_REACHED)
        return True

    def _cancel_attempt_timer(self) -> None:
        if self._walker is not None:
            self._walker.stop()

    def _send_invite(self, leg: Leg, auth_header: tuple[str, str] | None = None) -> None:
        host, target = self.host, leg.target
        sent_by = host.endpoint.sent_by(leg.flow)
        local = host.endpoint.local_host(leg.flow)
        if leg.invite is None:
            call_id, from_tag, cseq = new_call_id(), new_tag(), 1
        else:
            call_id, from_tag, cseq = leg.invite.call_id, leg.invite.from_.tag or new_tag(), leg.invite.cseq.seq + 1
        caller = self._refer.presenting if self._refer is not None else self.caller
        number = caller.number
        from_domain = self.tenant.domain
        if target.kind == "trunk" and target.trunk is not None:
            from_domain = target.trunk.from_domain or target.trunk.host
            if caller.extension is not None and caller.extension.callerid_number:
                number = caller.extension.callerid_number
            self.trunk_name = target.trunk.name
        display = caller.display.replace('"', "")
        from_value = f'"{display}" <sip:{number}@{from_domain}>' if display else f"<sip:{number}@{from_domain}>"
        contact_host = f"[{local}]" if ":" in local else local
        contact_port = int(sent_by.rsplit(":", 1)[1])
        tparam = ";transport=tcp" if leg.flow.transport == "tcp" else ""
        offer_ep = self._refer.new_ep if self._refer is not None else self.b_ep
        assert offer_ep is not None
        body = offer_ep.offer(self._sdp_ip(leg.flow))
        headers = [
            ("Via", f"SIP/2.0/{leg.flow.via_transport} {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "69"),
            ("From", f"{from_value};tag={from_tag}"),
            ("To", target.to_value),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} INVITE"),
            ("Contact", f"<sip:{number}@{contact_host}:{contact_port}{tparam}>"),
            ("Allow", _ALLOW),
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/sdp"),
        ]
        if target.kind == "trunk":
            headers.append(("P-Asserted-Identity", f"<sip:{number}@{from_domain}>"))
        if self._refer is not None:
            headers.append(("Referred-By", f"<sip:{self._refer.ext.number}@{self.tenant.domain}>"))
        if auth_header is not None:
            headers.append(auth_header)
        req = Request("INVITE", target.ruri, headers, body)
        leg.invite = req
        leg.txn = host.endpoint.send_request(req, leg.flow)
        leg.txn.tu = leg

    def on_leg_response(self, leg: Leg, resp: Response) -> None:
        status = resp.status
        if status < 200:
            if status > 100:
                leg.provisional = True
                if leg.cancel_pending:
                    self._send_cancel(leg)
                elif status == 180 and self._refer is not None and not self._refer.rang:
                    self._refer.rang = True
                    self._refer.notify(180, "Ringing")
            return
        if status < 300:
            self._on_leg_2xx(leg, resp)
            return
        if leg.final:
            return
        leg.final = status
        if (status in (401, 407) and not leg.auth_tried and not leg.cancelled and self._xfer is not None
                and leg.target.trunk is not None and leg.target.trunk.username):
            header = self.host.trunk_credentials(leg.target.trunk, resp, leg.invite)
            if header is not None:
                leg.auth_tried, leg.final, leg.provisional = True, 0, False
                self._send_invite(leg, header)
                return
        self._leg_failed(leg)

    def on_leg_timeout(self, leg: Leg) -> None:
        if not leg.final:
            leg.final = 408
            self._leg_failed(leg)

    def _leg_failed(self, leg: Leg) -> None:
        if self._xfer is None or self._walker is None:
            return
        code = self._walker.leg_failed(leg)
        if code is not None:
            self._xfer_done(code)

    def _on_leg_2xx(self, leg: Leg, resp: Response) -> None:
        if leg.dialog is None:
            leg.dialog = Dialog.as_uac(leg.invite, resp, leg.flow)  # type: ignore[arg-type]
        if self.answered_leg is leg or (leg.ack is not None and leg.dialog is self.a_dialog):
            if leg.ack is not None:
                self.host.endpoint.send_stateless(leg.ack, leg.flow)  # our ACK got lost
            return
        refer = self._refer
        if (self._xfer is None or self._xfer.done() or leg.cancelled or self.state is not CallState.ANSWERED
                or (self.answered_leg is not None and refer is None)):
            # a losing fork, or the caller left meanwhile: ACK and hang up that leg
            if leg.ack is None:
                self._ack_leg(leg)
                self._bye_leg(leg)
            return
        new_ep = refer.new_ep if refer is not None else self.b_ep
        assert new_ep is not None and self.ep is not None
        try:
            new_ep.accept_answer(resp.body)
        except SipError as e:
            log.info("bad SDP in 2xx from transfer target: %s", e)
            leg.final = 488
            self._ack_leg(leg)
            self._bye_leg(leg)
            self._leg_failed(leg)
            return
        leg.final = resp.status
        self._ack_leg(leg)
        for other in self.legs:
            if other is not leg and other.final == 0:
                self._cancel_leg(other)
        self._cancel_attempt_timer()
        if refer is not None:
            self._refer_answered(refer, leg)
            self._xfer_done(200)
            return
        self.answered_leg = leg
        self.host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, self, "b")  # type: ignore[arg-type]
        self.ep.bridge(self.b_ep)
        recording.on_app_bridged(self)  # the answering extension's recording policy
        if self._xfer_plan is not None and self._xfer_plan.on_answer is not None:
            self._xfer_plan.on_answer(leg.target)  # hunt group statistics
        self._xfer_done(200)

    def _on_xfer_timeout(self) -> None:
        for leg in self.legs:
            if leg.final == 0:
                self._cancel_leg(leg)
        self._xfer_done(480)

    def _ack_leg(self, leg: Leg) -> None:
        assert leg.dialog is not None and leg.invite is not None
        ep = self.host.endpoint
        leg.ack = leg.dialog.create_request("ACK", ep.sent_by(leg.flow), cseq=leg.invite.cseq.seq)
        ep.send_stateless(leg.ack, leg.flow)

    def _bye_leg(self, leg: Leg) -> None:
        if leg.bye_sent or leg.dialog is None:
            return
        leg.bye_sent = True
        ep = self.host.endpoint
        ep.send_request(leg.dialog.create_request("BYE", ep.sent_by(leg.flow)), leg.flow)

    def _cancel_leg(self, leg: Leg) -> None:
        if leg.cancelled or leg.final:
            return
        leg.cancelled = True
        if not leg.provisional:
            leg.cancel_pending = True  # RFC 3261 §9.1: CANCEL once a provisional came
            return
        self._send_cancel(leg)

    def _send_cancel(self, leg: Leg) -> None:
        inv = leg.invite
        assert inv is not None
        leg.cancel_pending = False
        self.host.endpoint.send_request(build_cancel(inv), leg.flow)

    # ------------------------------------------------------------------ REFER of a bridged party
    def _on_refer(self, side: str, req: Request) -> None:
        """REFER from a bridged party (RFC 3515, answered by the node as transfer.py does for
        plain calls): blind, or attended with Replaces. Checked asynchronously (the
        transferor's extension is looked up), answered 202 or refused from the task."""
        if self.answered_leg is None or self._xfer is not None:
            self.host.endpoint.send_response(make_response(
                req, 491 if self._xfer is not None else 403,
                "Request Pending (a transfer is in progress)" if self._xfer is not None
                else "Forbidden (the application call is not bridged to anybody)"))
            return
        self.host._spawn(self._refer_task(side, req))

    async def _refer_task(self, side: str, req: Request) -> None:
        ep = self.host.endpoint
        try:
            target = check_refer(self, req, self._refer is not None or self._xfer is not None or self._joining)
            ext = require_transferor(await self.party_extension(side))
            if self.state is not CallState.ANSWERED or self._refer is not None or self.answered_leg is None:
                raise ReferError(481, "Call/Transaction Does Not Exist (the call changed meanwhile)")
            if target.replaces:
                from node.pbx import replaces

                call2, side2, early = replaces.referred_dialog(self.host, target.replaces)
                check_attended(self, side, call2, side2, early, ext)
                require_same_party(ext, await party_extension(call2, side2))
                ep.send_response(make_response(req, 202, None))
                await join_attended(self, side, call2, side2, refer_call=self, refer_side=side)
                return
        except ReferError as e:
            refuse(self.host, req, e, "blind_transfer", "REFER on application call")
            return
        refer = AppRefer(self, side, ext, target.number)
        self._refer = refer
        refer.accept(req)
        await refer.run()

    async def party_extension(self, side: str):
        """The extension of this tenant on ``side`` (the transferor must be one), else None."""
        if self.parties is not None:
            ext = self.parties[side].extension
        elif side == "a":
            ext = self.caller.extension
        else:
            leg = self.answered_leg
            plan = self._xfer_plan
            if leg is None or leg.target.kind != "extension":
                return None
            number = leg.target.member or (plan.callee_ext.number if plan is not None and plan.callee_ext else "")
            if not number and plan is not None:
                number = plan.callee
            ext = await self.host.config.get_extension(self.tenant.id, number) if number.isdigit() else None
        return ext if ext is not None and ext.tenant_id == self.tenant.id else None

    def _party(self, side: str) -> Caller:
        if self.parties is not None:
            return self.parties[side]
        if side == "a":
            return self.caller
        plan = self._xfer_plan
        if plan is not None:
            return outgoing.target_party(self, plan, self.answered_leg.target if self.answered_leg else None)
        return Caller(self.transferred_to, "", self.tenant.domain)

    def _refer_answered(self, refer: "AppRefer", leg: Leg) -> None:
        """The refer target answered: it takes the transferor's side, its endpoint the
        transferor's; the transferee's endpoint (and dialog) stay."""
        side = refer.side
        refer.notify(200, "OK", final=True)
        assert leg.dialog is not None and refer.new_ep is not None
        self.host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, self, side)  # type: ignore[arg-type]
        if getattr(self, "recorder", None) is not None:
            recording.on_call_ended(self)  # the recording of the old pair ends with it
        old_dialog = outgoing.dialog_of(self, side)
        if old_dialog is not None:
            self.host.unregister_dialog(old_dialog.call_id, old_dialog.local_tag)
            if not refer.transferor_gone:
                outgoing.Released(self, old_dialog)  # BYE after a grace unless the phone sends one
        if side == "b":
            self._drop_answered_leg()
            self.answered_leg = leg
            old_ep, self.b_ep = self.b_ep, refer.new_ep
        else:
            self.a_dialog = leg.dialog
            self.a_flow = leg.flow
            self._a_final = None
            if self._retrans_timer is not None:
                self._retrans_timer.cancel()
                self._retrans_timer = None
            old_ep, self.ep = self.ep, refer.new_ep
        refer.new_ep = None
        if old_ep is not None:
            old_ep.close()
        self.held_by = None  # the holder has left: the transferee talks to the target at once
        self._restore_media()
        self._refer = None
        transferee = refer.presenting  # taken before the new plan replaced the old one
        assert self._xfer_plan is not None
        outgoing.new_pair(self, transferee, self._xfer_plan, "blind-transfer", leg.target, side)
        self.transferred_to = refer.number
        if self.span is not None:
            self.span.add_event("blind-transfer", {"hivepbx.transferred_to": refer.number,
                                                   "hivepbx.transferor": refer.ext.number})
        recording.on_app_bridged(self)
        log.info("application call: %s transferred %s to %s", refer.ext.number, transferee.number, refer.number)
        outgoing.feature_done("blind_transfer", "done")

    def _drop_answered_leg(self) -> None:
        """Side b's leg leaves the call (its party was released or replaced: no BYE of ours)."""
        old, self.answered_leg = self.answered_leg, None
        if old is not None:
            old.bye_sent = True
            if old in self.legs:
                self.legs.remove(old)

    def vacate(self, side: str) -> None:
        """``side``'s party was released: drop its dialog and close its endpoint. The party
        left ends up on side a (its dialog, its endpoint), side b empty, so a call waiting
        with one party (node/pbx/park.py ``AppParked``) always has it there, whoever parked."""
        if side == "b":
            self._drop_answered_leg()
            if self.b_ep is not None:
                self.b_ep.close()
                self.b_ep = None
            return
        leg, self.answered_leg = self.answered_leg, None
        assert leg is not None and leg.dialog is not None
        if leg in self.legs:
            self.legs.remove(leg)  # its dialog is side a's now (``dialogs``; a 2xx retransmission is re-ACKed)
        old_ep, self.ep, self.b_ep = self.ep, self.b_ep, None
        if old_ep is not None:
            old_ep.close()
        self.a_dialog, self.a_flow = leg.dialog, leg.flow
        self._a_final = None
        if self._retrans_timer is not None:
            self._retrans_timer.cancel()
            self._retrans_timer = None
        self.host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, self, "a")  # type: ignore[arg-type]

    # ------------------------------------------------------------------ ending
    def _bye_side(self, side: str) -> None:
        if side == "b":
            if self.answered_leg is not None:
                self._bye_leg(self.answered_leg)
            return
        if self.a_dialog is not None:
            ep = self.host.endpoint
            ep.send_request(self.a_dialog.create_request("BYE", ep.sent_by(self.a_dialog.flow)), self.a_dialog.flow)

    def hangup_both(self, cause: str) -> None:
        if self.state is CallState.ENDED:
            return
        self.hangup_cause = self.hangup_cause or cause
        if self.state is CallState.ANSWERED:
            self._bye_side("a")
            self._bye_side("b")
        self.end()

    def on_cancel(self) -> None:
        """CANCEL after our 200 OK: nothing to cancel (RFC 3261 §9.2)."""

    def end(self) -> None:
        if self.state is CallState.ENDED:
            return
        self.state = CallState.ENDED
        for leg in self.legs:
            if leg.final == 0:
                self._cancel_leg(leg)
        self._xfer_done(487)
        self._cancel_attempt_timer()
        if self._retrans_timer is not None:
            self._retrans_timer.cancel()
            self._retrans_timer = None
        task = self.app_task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if getattr(self, "recorder", None) is not None:
            recording.on_call_ended(self)
        if self._parked is not None:
            self._parked.leave()
        refer, self._refer = self._refer, None
        if refer is not None and refer.new_ep is not None:
            refer.new_ep.close()
            refer.new_ep = None
        for ep in (self.ep, self.b_ep):
            if ep is not None:
                ep.close()
        for media in self._absorbed:
            media.close()
        self._absorbed = []
        self.host.call_ended(self)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ helpers
    def _sdp_ip(self, flow: Flow) -> str:
        return self.apps.advertise or self.host.endpoint.local_host(flow)

    def _contact(self) -> str:
        sent_by = self.host.endpoint.sent_by(self.a_flow)
        tparam = ";transport=tcp" if self.a_flow.transport == "tcp" else ""
        return f"<sip:{self.plan.callee or 'app'}@{sent_by}{tparam}>"

    def cdr(self) -> Cdr:
        return Cdr(
            id=self.id, tenant_id=self.tenant.id, call_id=self.invite.call_id, caller=self.caller.number,
            caller_name=self.caller.display, callee=self.plan.callee, direction=self.plan.direction,
            start=self.start, answer=self.answer_at, end=time.time(), trunk=self.trunk_name,
            disposition=self.disposition, sip_code=self.sip_code,
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


class AppRefer(BlindTransfer):
    """A blind REFER of a bridged application call's party (``BlindTransfer`` gives the
    NOTIFYs, RFC 3515 §2.4.4). The target is rung by the call's own transfer machinery
    (``AppCall._ring``) from a new endpoint; the transferee hears ringback meanwhile."""

    def __init__(self, call: AppCall, side: str, ext, number: str) -> None:
        super().__init__(call, side, ext, number)
        self.new_ep: MediaEndpoint | None = None
        self.rang = False
        #: who the target sees calling: the transferee (From of the new INVITE)
        self.presenting = call._party(self.other)

    async def run(self) -> None:
        call: AppCall = self.call
        host = call.host
        from node.pbx import park

        try:
            found = await park.find(host.config, call.tenant.id, self.number)
            if found is not None:
                return await park.park_app_call(self, found)
            plan = await dialplan.plan_outgoing(call.tenant, self.ext, self.number, host.config,
                                                host.locations, host.features)
        except Exception:
            log.exception("transfer routing failed")
            return self.failed(500, "Server Internal Error")
        if self.aborted or call.state is not CallState.ANSWERED:
            return
        if plan.app is not None:
            return self.failed(488, "Not Acceptable Here (transfer to an application is not supported)")
        if plan.fail_status or not plan.attempts:
            return self.failed(plan.fail_status or 404, plan.fail_reason or "Not Found")
        try:
            self.new_ep = await call.apps.engine.open_endpoint(call.invite.call_id, call.tenant.name)
        except SipError as e:
            log.warning("no media endpoint for transfer: %s", e.reason)
            return self.failed(503, "Service Unavailable (no media port)")
        if self.aborted or call.state is not CallState.ANSWERED:
            self.new_ep.close()
            self.new_ep = None
            return
        # the transferee hears ringback (not the transferor) while the target rings
        transferee_ep = call.ep if self.other == "a" else call.b_ep
        if transferee_ep is not None:
            transferee_ep.unbridge()
            transferee_ep.tone("ringback")
        for leg in [l for l in call.legs if l is not call.answered_leg and l.final]:
            call.legs.remove(leg)  # the failed forks of earlier transfers
        status = await call._ring(plan)
        if status == 200 or self.aborted or call.state is not CallState.ANSWERED:
            return
        self.failed(status, _REASONS.get(status, "Failed"))

    def failed(self, status: int, reason: str) -> None:
        call: AppCall = self.call
        log.info("transfer to %s failed: %s %s", self.number, status, reason)
        outgoing.feature_done("blind_transfer", "failed")
        self.notify(status, reason, final=True)
        if self.new_ep is not None:
            self.new_ep.close()
            self.new_ep = None
        if call._refer is self:
            call._refer = None
        if call.state is not CallState.ANSWERED:
            return
        if self.transferor_gone:
            # nobody left to take the call back: release the transferee (as transfer.py)
            call.hangup_cause = f"transfer-failed-{status}"
            call._bye_side(self.other)
            call.end()
            return
        call._restore_media()  # back to the transferor (music if it holds the transferee)

    def on_bye(self, side: str, req: Request) -> bool:
        if side != self.side:
            self.abort()
            return False
        call: AppCall = self.call
        call.host.endpoint.send_response(make_response(req, 200, None))
        self.transferor_gone = True
        d = outgoing.dialog_of(call, side)
        if d is not None:
            call.host.unregister_dialog(d.call_id, d.local_tag)
        if side == "b" and call.answered_leg is not None:
            call.answered_leg.bye_sent = True
        return True

    def abort(self) -> None:
        self.aborted = True


_REASONS = {404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable", 486: "Busy Here",
            487: "Request Terminated", 600: "Busy Everywhere", 603: "Decline"}


# ------------------------------------------------------------------ attended transfer (RFC 5589 §7)
async def party_extension(call, side: str):
    """The extension on ``side`` of an application call or a plain call."""
    if isinstance(call, AppCall):
        return await call.party_extension(side)
    from node.pbx.transfer import transferor_extension

    return transferor_extension(call, side)


def check_attended(call, side: str, call2, side2: str, early: bool, ext) -> None:
    """ReferError unless the REFER's call and the named dialog's call can be joined here:
    one application call (the survivor) and one answered plain call on the node's relay."""
    from node.pbx import reanchor

    if call2.tenant.id != call.tenant.id:
        raise ReferError(403, "Forbidden (the dialog belongs to another tenant)")
    if call2 is call:
        raise ReferError(400, "Bad Request (Replaces names the REFER's own call)")
    apps = [c for c in (call, call2) if isinstance(c, AppCall)]
    plain = [c for c in (call, call2) if not isinstance(c, AppCall)]
    if len(apps) != 1:
        raise ReferError(488, "Not Acceptable Here (joining two application calls is not supported)")
    app, other = apps[0], plain[0]
    if early:
        raise ReferError(488, "Not Acceptable Here (transfer of an application call to a ringing call is not supported)")
    if app._joining:
        raise ReferError(491, "Request Pending (a transfer is in progress)")
    if app.state is not CallState.ANSWERED or app.answered_leg is None or app._refer is not None or app._xfer is not None:
        raise ReferError(403, "Forbidden (only a bridged call can be joined)")
    if other.state is not CallState.ANSWERED or other.transfer is not None or getattr(other, "reanchor", None):
        raise ReferError(403, "Forbidden (only an answered call can be joined)")
    # rtpengine's media is moved to the node's relay first (``join_attended``)
    if not reanchor.needed(other) and getattr(getattr(other, "media", None), "session", None) is None:
        raise ReferError(488, "Not Acceptable Here (joining an application call to a call the node does not relay)")
    require_transferor(ext)


async def join_attended(call, side: str, call2, side2: str, *, refer_call, refer_side: str) -> None:
    """``attended_join`` after a 202. When rtpengine relays the plain call, its party that
    stays first moves to the node's relay (node/pbx/reanchor.py; the transferor leaves, so
    it is not re-INVITEd); a refusal, or a call that changed meanwhile, is the REFER's final
    NOTIFY and both calls go on unchanged."""
    from node.pbx import reanchor, replaces

    app, plain, pside = (call, call2, side2) if isinstance(call, AppCall) else (call2, call, side)
    if not reanchor.needed(plain):
        attended_join(call, side, call2, side2, refer_call=refer_call, refer_side=refer_side)
        return
    replaces._notify(refer_call, refer_side, 100, "Trying", False)
    move = reanchor.Reanchor(plain, ("b" if pside == "a" else "a",))
    joined = False

    def join() -> None:
        nonlocal joined
        attended_join(call, side, call2, side2, refer_call=refer_call, refer_side=refer_side, trying=False)
        joined = True

    app._joining = True
    try:
        await move.prepare()
        if not _still_joinable(app, plain):
            await move.rollback()
            raise reanchor.ReanchorError(481, "Call/Transaction Does Not Exist (a call changed meanwhile)")
        app._joining = False
        await move.commit(join)
    except reanchor.ReanchorError as e:
        log.info("attended transfer of an application call failed: %s %s", e.status, e.reason)
        outgoing.feature_done("attended_transfer", "failed")
        if refer_call.state is CallState.ANSWERED:
            replaces._notify(refer_call, refer_side, e.status, e.reason, True)
    except Exception:  # no relay ports, ...: the move was undone; the transferor still hears why
        log.exception("attended transfer of an application call failed")
        if joined:
            return  # only deleting rtpengine's session failed: the parties talk already
        outgoing.feature_done("attended_transfer", "failed")
        if refer_call.state is CallState.ANSWERED:
            replaces._notify(refer_call, refer_side, 500, "Server Internal Error (moving the call's media)", True)
    finally:
        app._joining = False


def _still_joinable(app: AppCall, plain) -> bool:
    """After an await: both calls are still as ``check_attended`` found them."""
    return (app.state is CallState.ANSWERED and app.answered_leg is not None and app._refer is None
            and app._xfer is None and plain.state is CallState.ANSWERED and plain.transfer is None)


def attended_join(call, side: str, call2, side2: str, *, refer_call, refer_side: str, trying: bool = True) -> None:
    """Join the party left on the application call with the one left on the plain call; the
    transferor's two dialogs are released (the REFER's one after a final NOTIFY), the plain
    call is absorbed into the application call. Media: the application call's endpoint that
    faced the transferor is chained with the plain call's relay leg that faced it (each sends
    to the other), so nobody is re-INVITEd unless it was held."""
    from node.pbx import replaces

    if isinstance(call, AppCall):
        app, aside, plain, pside = call, side, call2, side2
    else:
        app, aside, plain, pside = call2, side2, call, side
    host = app.host
    aother, pother = ("b" if aside == "a" else "a"), ("b" if pside == "a" else "a")
    plain_held = outgoing.take_hold(plain) == pother
    target = outgoing.party_of(plain, pother)
    transferee = app._party(aother)
    # NOTIFY 200 on the REFER's dialog, then both transferor dialogs are released
    if trying:
        replaces._notify(refer_call, refer_side, 100, "Trying", False)
    refer_call._xfer_old_dialog = outgoing.dialog_of(refer_call, refer_side)
    replaces._notify_final(refer_call, refer_side)
    if getattr(app, "recorder", None) is not None:
        recording.on_call_ended(app)
    d_app = outgoing.dialog_of(app, aside)
    if d_app is not None:
        host.unregister_dialog(d_app.call_id, d_app.local_tag)
        outgoing.Released(app, d_app)
    outgoing.release_side(plain, pside, grace=True)
    # the target's dialog moves into the application call, on the transferor's side
    d2 = outgoing.dialog_of(plain, pother)
    assert d2 is not None
    host.unregister_dialog(d2.call_id, d2.local_tag)
    if aside == "b":
        app._drop_answered_leg()
        src = plain.answered_leg if pother == "b" else None
        leg = Leg(app, src.target if src is not None else plain.answered_leg.target, d2.flow)  # type: ignore[arg-type]
        leg.dialog, leg.final, leg.provisional = d2, 200, True
        leg.invite = src.invite if src is not None else plain.invite
        leg.ack = getattr(src, "ack", None)
        app.legs.append(leg)
        app.answered_leg = leg
        ep_t = app.b_ep
    else:
        app.a_dialog = d2
        app.a_flow = d2.flow
        app._a_final = None
        ep_t = app.ep
    host.register_dialog(d2.call_id, d2.local_tag, app, aside)  # type: ignore[arg-type]
    # media: chain the endpoint that faced the transferor with the relay leg that did
    assert ep_t is not None
    leg2 = plain.media.session.leg(pside)
    relay_ip = plain.media.advertise or host.endpoint.local_host(plain.a_flow)
    ep_t.set_remote(relay_ip, leg2.local_port)
    leg2.set_remote(app._sdp_ip(d2.flow), ep_t.local_port)
    app._absorbed.append(plain.media)
    plain.media = None
    replaces.end_absorbed(plain, d2)
    app.held_by = None
    app._restore_media()
    plan = RoutePlan(app.tenant, "internal", target.number, callee_ext=target.extension)
    outgoing.new_pair(app, transferee, plan, "attended-transfer", None, aside)
    app.transferred_to = target.number
    recording.on_app_bridged(app)
    if plain_held:
        _reinvite_from_endpoint(app, aside, ep_t)
    log.info("attended transfer of an application call: %s joined with %s", transferee.number, target.number)
    outgoing.feature_done("attended_transfer", "done")


async def attended_refer_into(call, side: str, req: Request, app: "AppCall", app_side: str, early: bool) -> None:
    """An attended REFER in a plain call whose Replaces names a dialog of application call
    ``app`` (node/pbx/replaces.py hands it here)."""
    try:
        ext = await party_extension(call, side)
        check_attended(call, side, app, app_side, early, ext)
        require_same_party(ext, await app.party_extension(app_side))
        if call.state is not CallState.ANSWERED or app.state is not CallState.ANSWERED:
            raise ReferError(481, "Call/Transaction Does Not Exist (a call ended meanwhile)")
    except ReferError as e:
        refuse(call.host, req, e, "attended_transfer", "attended REFER")
        return
    call.host.endpoint.send_response(make_response(req, 202, None))
    await join_attended(call, side, app, app_side, refer_call=call, refer_side=side)


def _reinvite_from_endpoint(call: AppCall, side: str, ep) -> None:
    """Take a party the transferor held off hold: a sendrecv offer of the endpoint that now
    faces it (its media then comes straight to that endpoint)."""
    d = outgoing.dialog_of(call, side)
    if d is None:
        return
    sender = call.host.endpoint
    req = d.create_request("INVITE", sender.sent_by(d.flow), body=ep.offer(call._sdp_ip(d.flow)),
                           content_type="application/sdp", extra=[("Allow", _ALLOW)])
    t = sender.send_request(req, d.flow)
    t.tu = _EndpointReInvite(call, d, req, ep)


class _EndpointReInvite:
    """TU of a re-INVITE offering an engine endpoint: ACK the 2xx, take its answer."""

    def __init__(self, call: AppCall, dialog: Dialog, req: Request, ep) -> None:
        self.call, self.dialog, self.req, self.ep = call, dialog, req, ep

    def on_sip_response(self, resp: Response, txn) -> None:
        if resp.status < 200:
            return
        if resp.status >= 300:
            log.info("re-INVITE of a joined party refused: %s", resp.status)
            return
        sender = self.call.host.endpoint
        sender.send_stateless(self.dialog.create_request("ACK", sender.sent_by(self.dialog.flow),
                                                         cseq=self.req.cseq.seq), self.dialog.flow)
        self.dialog.update_target(resp)
        if resp.body and not self.ep.closed:
            try:
                self.ep.accept_answer(resp.body)
            except SipError as e:
                log.info("joined party's SDP unusable: %s", e)

    def on_sip_timeout(self, txn) -> None:
        log.info("re-INVITE of a joined party timed out")


def _info_digit(req: Request) -> str | None:
    """The key of an INFO application/dtmf-relay ("Signal=5") or application/dtmf body."""
    ctype = (req.content_type or "").lower()
    text = req.body.decode("utf-8", "replace") if req.body else ""
    if ctype == "application/dtmf-relay":
        for line in text.splitlines():
            k, _, v = line.partition("=")
            if k.strip().lower() == "signal":
                v = v.strip().upper()
                return v if len(v) == 1 and v in "0123456789*#ABCD" else None
    elif ctype == "application/dtmf":
        v = text.strip().upper()
        return v if len(v) == 1 and v in "0123456789*#ABCD" else None
    return None


def _clean(reason: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in reason)[:120]
