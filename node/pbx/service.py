"""The PBX as a transaction user: routes each SIP event to the registrar or to a call.

Theory of operation: the endpoint delivers transaction events synchronously. Responses
and in-dialog requests are handled at once (their context hangs off ``txn.tu`` or the
dialog table, no lookups in a store). A new REGISTER or INVITE needs the tenant's
configuration, so it is handled in a task; whatever arrives for it meanwhile (a CANCEL)
finds its server transaction marked and the task honours that when it resumes.
"""

from __future__ import annotations

import asyncio
import logging
import time

from node.pbx.authn import Authenticator, AuthOutcome
from node.pbx.cdr import CdrRecorder
from node.pbx.call import Call, Caller, CallState, Forwarded, Leg
from node.pbx import dialplan
from node.pbx.registrar import Registrar
from node.pbx.subscriptions import LineStates, SubscriptionServer
from node.pbx.routing import RoutePlan, Target
from node.ports import CdrStore, ConfigStore, LocationStore
from node.runtime.config import NodeConfig
from node.sip.errors import SipError
from node.sip.flow import Flow
from node.sip.ids import new_tag, stateless_tag
from node.sip.message import Request, Response, make_response
from node.sip.transaction import (
    RequestReceived,
    ResponseReceived,
    TransactionTimedOut,
)
from node.transport.endpoint import SipEndpoint
from observability import logging as olog
from observability import metrics as M
from observability import tracing as otrace

log = logging.getLogger("hivepbx.pbx")

_SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(("replaces",))  # RFC 3891: node/pbx/replaces.py
_ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, REFER, NOTIFY, MESSAGE, REGISTER, SUBSCRIBE"
#: what a store that cannot be reached raises (a backend's own errors subclass these)
_STORE_DOWN = (ConnectionError, TimeoutError)
_IN_DIALOG_ONLY = frozenset(("BYE", "INFO", "UPDATE", "PRACK", "NOTIFY", "REFER"))


class PbxService:
    def __init__(
        self,
        cfg: NodeConfig,
        endpoint: SipEndpoint,
        config: ConfigStore,
        locations: LocationStore,
        cdrs: CdrStore,
        auth: Authenticator,
        media_factory,
        t1: float = 0.5,
        t2: float = 4.0,
    ) -> None:
        self.cfg = cfg
        self._trusted_sbcs = frozenset(getattr(cfg, "trusted_sbcs", ()))
        self.endpoint = endpoint
        self.config = config
        self.locations = locations
        self.cdrs = cdrs
        self.auth = auth
        self.media_factory = media_factory
        self.loop = asyncio.get_event_loop()
        self.t1 = t1
        self.t2 = t2
        self.registrar = Registrar(
            config, locations, auth,
            min_expires=cfg.min_expires, max_expires=cfg.max_expires,
            default_expires=cfg.default_expires, node_id=cfg.node_id, metrics=M,
        )
        self.calls: dict[str, Call] = {}
        self._dialogs: dict[tuple[str, str], tuple[Call, str]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._external: dict[int, int] = {}
        self.draining = False
        self.cdr_recorder = CdrRecorder(cdrs, interval=getattr(cdrs, "batch_interval", 0.05))
        #: what call features remember between calls (hunt group statistics)
        self.features = dialplan.FeatureState(lambda: self.apps is not None)
        #: applications the node answers itself (IVR ...): node.pbx.app_call.AppRuntime, set by the runtime
        self.apps = None
        #: told (call, 'early' | 'confirmed' | 'terminated') as calls progress (busy lamps, ...)
        self.call_listeners: list = []
        self.subscriptions = SubscriptionServer(endpoint, config, auth, self.loop)
        self.line_states = LineStates(self.subscriptions, config)
        self.call_listeners.append(self.line_states.on_call_state)
        # every phone's first REGISTER is answered without a transaction (see _answer_statelessly)
        endpoint.layer.stateless_responder = self._answer_statelessly

    # ------------------------------------------------------------------ event entry
    def on_event(self, ev) -> None:
        if type(ev) is ResponseReceived:
            self._on_response(ev.response, ev.transaction)
        elif type(ev) is RequestReceived:
            self._on_request(ev.request, ev.flow, ev.transaction)
        elif type(ev) is TransactionTimedOut:
            tu = getattr(ev.transaction, "tu", None)
            if isinstance(tu, Leg):
                tu.call.on_leg_timeout(tu)
            elif isinstance(tu, Forwarded):
                tu.call.on_forwarded_timeout(tu)
            elif tu is not None and hasattr(tu, "on_sip_timeout"):
                tu.on_sip_timeout(ev.transaction)

    def _on_response(self, resp: Response, txn) -> None:
        M.sip_response_in(resp.status)
        tu = getattr(txn, "tu", None) if txn is not None else None
        if isinstance(tu, Leg):
            tu.call.on_leg_response(tu, resp)
            return
        if isinstance(tu, Forwarded):
            tu.call.on_forwarded_response(tu, resp)
            return
        if tu is not None and hasattr(tu, "on_sip_response"):
            # other clients of the PBX (trunk registrations, ...) own their transactions
            tu.on_sip_response(resp, txn)
            return
        if txn is None and 200 <= resp.status < 300 and resp.cseq.method == "INVITE":
            # a 2xx retransmission after the transaction ended: re-ACK it (§13.2.2.4)
            entry = self._dialogs.get((resp.call_id, resp.from_.tag or ""))
            if entry is not None:
                call, _ = entry
                leg = call.answered_leg
                if leg is not None and leg.ack is not None:
                    self.endpoint.send_stateless(leg.ack, leg.flow)

    def _on_request(self, req: Request, flow: Flow, txn) -> None:
        method = req.method
        M.sip_request_in(method)
        try:
            to_tag = req.to.tag
        except SipError as e:
            if method != "ACK":
                self.endpoint.send_response(make_response(req, e.status_hint, _clean(e.reason)))
            return
        if method == "ACK":
            if to_tag:
                entry = self._dialogs.get((req.call_id, to_tag))
                if entry is not None:
                    entry[0].on_request(entry[1], req, None)
            return
        if method == "CANCEL":
            self._on_cancel(req, txn)
            return
        unsupported = self._unsupported(req)
        if unsupported:
            # RFC 3261 §8.2.2.3
            self.endpoint.send_response(
                make_response(req, 420, None, to_tag=new_tag(), headers=[("Unsupported", ", ".join(unsupported))])
            )
            return
        mf = self._max_forwards(req)
        if mf is not None and mf <= 0 and method != "OPTIONS":
            self.endpoint.send_response(make_response(req, 483, None, to_tag=new_tag()))
            return
        if to_tag:
            entry = self._dialogs.get((req.call_id, to_tag))
            if entry is None:
                if not self.subscriptions.in_dialog(req, txn):
                    self.endpoint.send_response(make_response(req, 481, None))
                return
            call, side = entry
            with olog.bind(call_id=call.invite.call_id, tenant=call.tenant.name):
                call.on_request(side, req, txn)
            return
        if method == "INVITE":
            if self.draining:
                self.endpoint.send_response(
                    make_response(req, 503, None, to_tag=new_tag(), headers=[("Retry-After", "5")])
                )
                return
            self._spawn(self._new_invite(req, flow, txn))
        elif method == "REGISTER":
            # with credentials (the usual case here: _answer_statelessly took the others), no tag is drawn
            challenge = None if req.get("Authorization") is not None else self.registrar.challenge(req, new_tag(), time.time())
            if challenge is not None:
                self.endpoint.send_response(challenge)
            else:
                self._spawn(self._register(req, flow))
        elif method == "OPTIONS":
            self.endpoint.send_response(
                make_response(req, 200, None, to_tag=new_tag(), headers=[("Allow", _ALLOW), ("Accept", "application/sdp")])
            )
        elif method in _IN_DIALOG_ONLY:
            self.endpoint.send_response(make_response(req, 481, None, to_tag=new_tag()))
        elif method == "SUBSCRIBE":
            self._spawn(self.subscriptions.handle_subscribe(req, flow))
        elif method in ("PUBLISH", "MESSAGE"):
            self.endpoint.send_response(make_response(req, 405, None, to_tag=new_tag(), headers=[("Allow", _ALLOW)]))
        else:
            self.endpoint.send_response(make_response(req, 501, None, to_tag=new_tag(), headers=[("Allow", _ALLOW)]))

    @staticmethod
    def _max_forwards(req: Request) -> int | None:
        try:
            return req.max_forwards
        except SipError:
            return None

    @staticmethod
    def _unsupported(req: Request) -> list[str]:
        vals = req.get_all("Require")
        if not vals or req.method == "ACK":
            return []
        return [v for v in vals if v.lower() not in _SUPPORTED_EXTENSIONS]

    def _spawn(self, coro) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("request handler failed", exc_info=task.exception())

    # ------------------------------------------------------------------ REGISTER
    def _answer_statelessly(self, req: Request, flow: Flow) -> Response | None:
        """The transaction layer's stateless responder (Kamailio's sl): a REGISTER without
        credentials, half of the registrar's load, gets its 401 with no server transaction,
        timer or task; a retransmission of it gets the same 401 again, with the same To tag
        (RFC 3261 §8.2.7). Anything else returns None and takes the full path (so a Require,
        Max-Forwards 0 or a To tag gets the answer ``_on_request`` gives it)."""
        if req.method != "REGISTER":
            return None
        via = frm = call_id = cseq = None
        for n, v in req.headers:
            if n == "Authorization" or n == "Require":
                return None
            if n == "Via":
                if via is None:
                    via = v
            elif n == "From":
                frm = v
            elif n == "Call-ID":
                call_id = v
            elif n == "CSeq":
                cseq = v
        mf = req.max_forwards
        if (mf is not None and mf <= 0) or req.to.tag is not None:
            return None
        challenge = self.registrar.challenge(req, stateless_tag(via, frm, call_id, cseq), time.time())  # type: ignore[arg-type]
        if challenge is not None:
            M.sip_request_in("REGISTER")
        return challenge

    async def _register(self, req: Request, flow: Flow) -> None:
        span = otrace.tracer().start_span("sip.register") if otrace.enabled() else None
        try:
            resp = await self.registrar.handle(req, flow, new_tag())
        except _STORE_DOWN as e:
            # the location store is unreachable (etcd down): the phone should retry, maybe
            # through another node, not believe it is registered
            log.warning("REGISTER not stored: %s", e)
            resp = make_response(req, 503, "Service Unavailable (registration store unreachable)",
                                 to_tag=new_tag(), headers=[("Retry-After", "5")])
        except Exception:
            log.exception("registrar failed")
            resp = make_response(req, 500, None, to_tag=new_tag())
        if span is not None:
            span.set_attribute("sip.call_id", req.call_id)
            span.set_attribute("sip.to", req.get("To") or "")
            span.set_attribute("sip.status_code", resp.status)
            span.end()
        self.endpoint.send_response(resp)
        if resp.status == 200:
            M.registrations_changed()

    # ------------------------------------------------------------------ INVITE
    def _on_cancel(self, req: Request, txn) -> None:
        inv_txn = self.endpoint.layer.find_invite_server(req)
        if inv_txn is None:
            self.endpoint.send_response(make_response(req, 481, None))
            return
        self.endpoint.send_response(make_response(req, 200, None))
        tu = getattr(inv_txn, "tu", None)
        if isinstance(tu, Call):
            tu.on_cancel()
        else:
            # still routing: the INVITE task sees this and answers 487
            inv_txn.tu = "cancelled"

    async def _new_invite(self, req: Request, flow: Flow, txn) -> None:
        try:
            if otrace.enabled():
                with otrace.tracer().start_as_current_span("call.route") as span:
                    span.set_attribute("sip.call_id", req.call_id)
                    span.set_attribute("sip.request_uri", req.uri_text)
                    await self._route_invite(req, flow, txn)
            else:
                await self._route_invite(req, flow, txn)
        except SipError as e:
            self._fail(req, txn, e.status_hint, _clean(e.reason))
        except _STORE_DOWN as e:
            log.warning("INVITE not routed: %s", e)
            self._fail(req, txn, 503, "Service Unavailable (configuration store unreachable)")
        except Exception:
            log.exception("INVITE handling failed")
            self._fail(req, txn, 500, None)

    def _fail(self, req: Request, txn, status: int, reason: str | None) -> None:
        call = getattr(txn, "tu", None)
        if isinstance(call, Call):
            if call.state is CallState.ROUTING:
                call.fail_a(status, reason)
            return
        self._reject(req, txn, status, reason)

    def _reject(self, req: Request, txn, status: int, reason: str | None, headers=None) -> None:
        if getattr(txn, "tu", None) == "cancelled":
            status, reason = 487, None
        if isinstance(getattr(txn, "tu", None), Call):
            return
        self.endpoint.send_response(make_response(req, status, reason, to_tag=new_tag(), headers=headers))

    def _source_host(self, req: Request, flow: Flow) -> str:
        """Where a request really came from: behind a trusted SBC its X-Hive-Source header
        (``transport:host:port``, put there by the SBC, which strips any from outside), else
        the packet's source. Nobody else's header is believed."""
        host = flow.remote[0]
        if host not in self._trusted_sbcs:
            return host
        v = req.get("X-Hive-Source")
        if not v:
            return host
        _, _, hp = v.partition(":")
        src = hp[1:hp.find("]")] if hp.startswith("[") else hp.rpartition(":")[0]
        return src or host

    async def _route_invite(self, req: Request, flow: Flow, txn) -> None:
        now = time.time()
        dialled = req.uri.user_unescaped or ""
        if not dialled:
            self._reject(req, txn, 404, "Not Found (no user in Request-URI)")
            return
        plan: RoutePlan | None = None
        caller: Caller
        trunks = await self.config.trunks_by_address(self._source_host(req, flow))
        if trunks:
            plan = await dialplan.plan_inbound(trunks, dialled, req.from_.uri.user_unescaped or "anonymous",
                                               self.config, self.locations, self.features)
            if plan is None:
                M.call_attempt("rejected")
                self._reject(req, txn, 404, "Not Found")
                return
            frm = req.from_
            caller = Caller(frm.uri.user_unescaped or "anonymous", frm.display or "", plan.tenant.domain)
        else:
            domain = req.from_.uri.host_bare
            tenant = await self.config.tenant_by_domain(domain)
            user = req.from_.uri.user_unescaped or ""
            ext = await self.config.get_extension(tenant.id, user) if tenant else None
            outcome, username = self.auth.check(req, domain, ext.password if ext else None, now, proxy=True)
            if outcome is AuthOutcome.MISSING or outcome is AuthOutcome.STALE:
                self._reject(req, txn, 407, None, self.auth.challenge_headers(domain, now, outcome is AuthOutcome.STALE, proxy=True))
                return
            if outcome is not AuthOutcome.OK or ext is None or tenant is None or username != ext.number:
                M.auth_failure("unknown_user" if ext is None else "bad_response")
                M.call_attempt("rejected")
                self._reject(req, txn, 403, "Forbidden")
                return
            caller = Caller(ext.number, ext.display_name, tenant.domain, ext)
            if await self._call_feature(req, txn, flow, tenant, ext, dialled):
                return
            plan = await dialplan.plan_outgoing(tenant, ext, dialled, self.config, self.locations, self.features)
        tenant = plan.tenant
        if plan.app is not None and self.apps is not None and not plan.fail_status:
            self.apps.start(self, req, txn, flow, plan, caller)
            return
        with olog.bind(call_id=req.call_id, tenant=tenant.name):
            # from here on every outcome is a call attempt with a CDR, even a refusal
            call = Call(self, req, txn, flow, plan, caller, None)
            call.span = None if not otrace.enabled() else otrace.tracer().start_span(
                "call", attributes={"hivepbx.tenant": tenant.name, "hivepbx.direction": plan.direction,
                                    "hivepbx.caller": caller.number, "hivepbx.callee": plan.callee,
                                    "sip.call_id": req.call_id},
            )
            cancelled = getattr(txn, "tu", None) == "cancelled"
            txn.tu = call
            self.calls[call.id] = call
            M.call_started()
            if cancelled:
                call.hangup_cause = "caller-cancel"
                call.fail_a(487, None)
                return
            if plan.external:
                if tenant.max_calls and self._external.get(tenant.id, 0) >= tenant.max_calls:
                    call.hangup_cause = "tenant-call-limit"
                    call.fail_a(503, "Service Unavailable (tenant call limit reached)", [("Retry-After", "30")])
                    return
                self._external[tenant.id] = self._external.get(tenant.id, 0) + 1
                call.counts_external = True
            if not plan.fail_status:
                if req.body and req.content_type != "application/sdp":
                    call.fail_a(415, None, [("Accept", "application/sdp")])
                    return
                try:
                    call.media = await self.media_factory(req.call_id, tenant.name, call)
                    if req.body:
                        call.media.check_offer(req.body)
                except SipError as e:
                    status = e.status_hint if e.status_hint >= 400 else 488
                    if status >= 500:
                        # relay trouble is ours: log it, do not tell the peer about our ports
                        log.warning("media unavailable: %s", e.reason)
                        call.fail_a(status, None, [("Retry-After", "5")])
                    else:
                        call.fail_a(status, _clean(e.reason))
                    return
                if call.state is not CallState.ROUTING:
                    call.media.close()  # cancelled while the relay ports were being opened
                    return
            log.info("call %s → %s (%s)", caller.number, plan.callee, plan.direction)
            call.start_routing()
            if call.state is CallState.RINGING:
                self._call_state(call, "early")

    async def _call_feature(self, req: Request, txn, flow: Flow, tenant, ext, dialled: str) -> bool:
        """Features that take over an existing call instead of routing a new one (pickup,
        park retrieval, INVITE with Replaces): True when one handled the INVITE."""
        park, pickup, replaces = _call_features()
        if req.get("Replaces") is not None:
            return await replaces.on_invite(self, req, txn, flow, tenant, ext)
        if await pickup.try_pickup(self, req, txn, flow, tenant, ext, dialled):
            return True
        return await park.try_retrieve(self, req, txn, flow, tenant, ext, dialled)

    # ------------------------------------------------------------------ call host API
    def flow_for(self, target: Target) -> Flow:
        transports = self.endpoint.transports
        assert transports is not None
        return transports.flow_to(target.transport, target.host, target.port)

    def trunk_credentials(self, trunk, resp: Response, invite: Request | None):
        if invite is None:
            return None
        return self.auth.answer(resp, invite, trunk.username, trunk.password)

    def register_dialog(self, call_id: str, local_tag: str, call: Call, side: str) -> None:
        self._dialogs[(call_id, local_tag)] = (call, side)

    def unregister_dialog(self, call_id: str, local_tag: str) -> None:
        self._dialogs.pop((call_id, local_tag), None)

    def _call_state(self, call, state: str) -> None:
        for listener in self.call_listeners:
            try:
                listener(call, state)
            except Exception:
                log.exception("call listener failed")

    def call_answered(self, call: Call) -> None:
        M.call_answered()
        self._call_state(call, "confirmed")
        if call.plan.on_answer is not None and call.answered_leg is not None:
            call.plan.on_answer(call.answered_leg.target)

    def call_ended(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        for key in call.dialogs:
            self._dialogs.pop(key, None)
        if call.counts_external:
            n = self._external.get(call.tenant.id, 1) - 1
            if n > 0:
                self._external[call.tenant.id] = n
            else:
                self._external.pop(call.tenant.id, None)
        M.call_ended(call.disposition)
        span = call.span
        if span is not None:
            span.set_attribute("hivepbx.disposition", call.disposition)
            span.set_attribute("sip.status_code", call.sip_code)
            span.set_attribute("hivepbx.hangup_cause", call.hangup_cause)
            span.end()
        self.cdr_recorder.record(call.cdr())
        self._call_state(call, "terminated")

    # ------------------------------------------------------------------ lifecycle
    async def drain(self, timeout: float = 5.0) -> None:
        """Stop taking calls, give calls ``timeout`` to finish, then hang up the rest."""
        self.draining = True
        deadline = self.loop.time() + timeout
        while self.calls and self.loop.time() < deadline:
            await asyncio.sleep(0.1)
        for call in list(self.calls.values()):
            call.hangup_both("shutdown")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        self.subscriptions.close()
        await self.cdr_recorder.close()

    def health(self) -> dict:
        return {
            "active_calls": len(self.calls),
            "dialogs": len(self._dialogs),
            "transactions": self.endpoint.layer.transaction_count,
            "draining": self.draining,
        }


_features: tuple | None = None


def _call_features() -> tuple:
    """(park, pickup, replaces), imported on first use (they import call control, which
    imports this module's neighbours), then kept: an import per INVITE is not free."""
    global _features
    if _features is None:
        from node.pbx import park, pickup, replaces

        _features = (park, pickup, replaces)
    return _features


def _clean(reason: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in reason)[:120]
