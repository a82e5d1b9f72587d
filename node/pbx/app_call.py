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
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable

from node.model import Cdr
from node.pbx.call import Caller, CallState, Leg, _best_failure, _disposition, _outcome
from node.config_rules import ConfigError
from node.pbx import dialplan
from node.pbx.routing import RoutePlan, app_plan
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
_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"
_RETRY_STATUSES = frozenset((408, 500, 502, 503, 504))
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
        self._xfer_attempt = -1
        self._xfer_plan: RoutePlan | None = None
        self._attempt_first = 0
        self._attempt_timer: asyncio.TimerHandle | None = None
        #: answering a ringing Call's caller (``AppRuntime.take_over``): already counted
        self.taken_over = False
        #: a transfer reached an application target (an extension's voicemail)
        self._xfer_app = None

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
            ep_.send_response(make_response(req, 200, None))
            self.hangup_cause = "caller-bye" if side == "a" else "callee-bye"
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
        if method in ("OPTIONS", "INFO", "NOTIFY"):
            ep_.send_response(make_response(req, 200, None, headers=[("Allow", _ALLOW)]))
            return
        ep_.send_response(make_response(req, 501, None, headers=[("Allow", _ALLOW)]))

    _offered_in_2xx = False

    def _answer_in_dialog(self, side: str, req: Request, ep, dialog: Dialog) -> None:
        local = self._sdp_ip(dialog.flow)
        headers = [("Contact", self._contact() if side == "a" else dialog.local_contact), ("Allow", _ALLOW)]
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
        self._xfer_plan = plan
        self._xfer_attempt = -1
        fut = self._xfer = self.host.loop.create_future()
        # plans with rules (hunt groups, forwarding) time each attempt; their overall cap may be 0
        ring = plan.ring_timeout if plan.rules else (self.tenant.ring_timeout or self.host.cfg.ring_timeout)
        timer = self.host.loop.call_later(ring, self._on_xfer_timeout) if ring else None
        self.legs = []
        if not self._next_attempt():
            self._xfer_done(_best_failure([l.final for l in self.legs] or [404]))
        try:
            status = await fut
        finally:
            if timer is not None:
                timer.cancel()
            self._cancel_attempt_timer()
            self._xfer = None
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

    def _next_attempt(self) -> bool:
        plan = self._xfer_plan
        assert plan is not None
        self._xfer_attempt += 1
        if self._xfer_attempt >= len(plan.attempts):
            return False
        self._attempt_first = len(self.legs)
        for target in plan.attempts[self._xfer_attempt]:
            if target.app is not None:
                for leg in self.legs:
                    if leg.final == 0:
                        self._cancel_leg(leg)
                self._xfer_app = target.app
                self._xfer_done(_APP_REACHED)
                return True
            try:
                flow = self.host.flow_for(target)
            except OSError as e:
                log.info("cannot reach %s: %s", target.ruri, e)
                continue
            leg = Leg(self, target, flow)  # type: ignore[arg-type]
            self.legs.append(leg)
            self._send_invite(leg)
        if not any(l.final == 0 for l in self.legs[self._attempt_first:]):
            if plan.rules:
                return self._goto_attempt(plan.rules[self._xfer_attempt].on_fail)
            return self._next_attempt()
        self._arm_attempt_timer()
        return True

    # attempts with rules (the same semantics as Call: each attempt rings for its time, and
    # how it ended — busy, no answer, failed — says which attempt comes next)
    def _arm_attempt_timer(self) -> None:
        plan = self._xfer_plan
        if plan is None or not plan.rules:
            return
        rule = plan.rules[self._xfer_attempt]
        ring = rule.ring or self.tenant.ring_timeout or self.host.cfg.ring_timeout
        self._cancel_attempt_timer()
        self._attempt_timer = self.host.loop.call_later(ring, self._on_attempt_timeout)

    def _cancel_attempt_timer(self) -> None:
        if self._attempt_timer is not None:
            self._attempt_timer.cancel()
            self._attempt_timer = None

    def _goto_attempt(self, idx: int | None) -> bool:
        if idx is None or idx <= self._xfer_attempt:
            return False
        self._cancel_attempt_timer()
        self._xfer_attempt = idx - 1
        return self._next_attempt()

    def _on_attempt_timeout(self) -> None:
        self._attempt_timer = None
        plan = self._xfer_plan
        if self._xfer is None or plan is None:
            return
        for leg in self.legs[self._attempt_first:]:
            if leg.final == 0:
                self._cancel_leg(leg)
        if not self._goto_attempt(plan.rules[self._xfer_attempt].on_noanswer):
            self._on_xfer_timeout()

    def _send_invite(self, leg: Leg, auth_header: tuple[str, str] | None = None) -> None:
        host, target = self.host, leg.target
        sent_by = host.endpoint.sent_by(leg.flow)
        local = host.endpoint.local_host(leg.flow)
        if leg.invite is None:
            call_id, from_tag, cseq = new_call_id(), new_tag(), 1
        else:
            call_id, from_tag, cseq = leg.invite.call_id, leg.invite.from_.tag or new_tag(), leg.invite.cseq.seq + 1
        caller = self.caller
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
        assert self.b_ep is not None
        body = self.b_ep.offer(self._sdp_ip(leg.flow))
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
        plan = self._xfer_plan
        if self._xfer is None or plan is None:
            return
        if plan.rules:
            current = self.legs[self._attempt_first:]
            if leg not in current or any(l.final == 0 for l in current):
                return  # a cancelled fork of an earlier attempt, or forks still ringing
            codes = [l.final for l in current]
            if not self._goto_attempt(plan.rules[self._xfer_attempt].next_for(_outcome(codes))):
                self._xfer_done(_best_failure(codes))
            return
        if any(l.final == 0 for l in self.legs):
            return
        codes = [l.final for l in self.legs]
        trunks = [l for l in self.legs if l.target.kind == "trunk"]
        if trunks and all(l.final in _RETRY_STATUSES for l in trunks) and self._next_attempt():
            return
        self._xfer_done(_best_failure(codes))

    def _on_leg_2xx(self, leg: Leg, resp: Response) -> None:
        if leg.dialog is None:
            leg.dialog = Dialog.as_uac(leg.invite, resp, leg.flow)  # type: ignore[arg-type]
        if self.answered_leg is leg:
            if leg.ack is not None:
                self.host.endpoint.send_stateless(leg.ack, leg.flow)  # our ACK got lost
            return
        if self._xfer is None or leg.cancelled or self.answered_leg is not None or self.state is not CallState.ANSWERED:
            # a losing fork, or the caller left meanwhile: ACK and hang up that leg
            if leg.ack is None:
                self._ack_leg(leg)
                self._bye_leg(leg)
            return
        assert self.b_ep is not None and self.ep is not None
        try:
            self.b_ep.accept_answer(resp.body)
        except SipError as e:
            log.info("bad SDP in 2xx from transfer target: %s", e)
            leg.final = 488
            self._ack_leg(leg)
            self._bye_leg(leg)
            self._leg_failed(leg)
            return
        leg.final = resp.status
        self.answered_leg = leg
        self.host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, self, "b")  # type: ignore[arg-type]
        self._ack_leg(leg)
        for other in self.legs:
            if other is not leg and other.final == 0:
                self._cancel_leg(other)
        self._cancel_attempt_timer()
        self.ep.bridge(self.b_ep)
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
        headers = [("Via", inv.get("Via") or ""), ("Max-Forwards", "70"), ("From", inv.get("From") or ""),
                   ("To", inv.get("To") or ""), ("Call-ID", inv.call_id), ("CSeq", f"{inv.cseq.seq} CANCEL")]
        self.host.endpoint.send_request(Request("CANCEL", inv.uri_text, headers), leg.flow)

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
        for ep in (self.ep, self.b_ep):
            if ep is not None:
                ep.close()
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
