"""Follow-me "press 1 to accept": a destination that answers hears "Call for <extension>.
Press 1 to accept." and is bridged to the caller only after pressing 1 (node/pbx/forwarding.py,
``"confirm": true`` on a follow-me destination).

Why: a mobile's voicemail or a colleague's desk phone "answers" a forwarded call too; without
a human pressing 1 the caller would land there and the follow-me would stop.

Theory of operation (one ``Screen`` per screened B leg of a ``Call``):

  INVITE with the SDP of a media endpoint of ours ──2xx──▶ ACK, prompt, wait for a key
       (the caller hears ringback meanwhile; the attempt's ring time stops)
          │ "1"                                         │ other key / 10 s / BYE / bad SDP
          ▼                                             ▼
  a second endpoint answers the call's relay (side b)   BYE the leg, its own CDR row (billed:
  and is bridged to the first; 200 to the caller         it answered), the follow-me goes on
                                                         as if it had not answered

* The screened party's media stays on our endpoints after acceptance (relay ↔ endpoint ↔
  endpoint ↔ party): no re-INVITE, which trunks and mobiles handle unevenly. A later
  re-INVITE from either side moves the stream back to the relay directly (anchoring as usual).
* Accepted: the call's CDR has the leg's answer time (what the carrier bills). Declined,
  timed out, hung up or abandoned by the caller: one CDR row of its own for the answered leg.
* Needs the media engine (``PbxService.apps``) and a caller's SDP offer; without them the
  destination rings like any other (logged).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from pathlib import Path

from prometheus_client import Counter

from node.model import Cdr
from node.sip.dialog import Dialog
from node.sip.errors import SipError
from node.sip.message import Request, Response, make_response
from observability import logging as olog

log = logging.getLogger("hivepbx.confirm")

#: seconds the answering party has to press 1 once the prompt started
CONFIRM_TIMEOUT = 10.0
ACCEPT_KEY = "1"
_OUTCOMES = ("accepted", "declined", "timeout", "callee-bye", "caller-gone", "bad-sdp", "bridge-failed")
CONFIRMS = Counter("hivepbx_follow_me_confirms", "Follow-me 'press 1 to accept' answers, by outcome", ["outcome"])


def ring(call, leg) -> bool:
    """Ring ``leg`` of ``call`` with screening: True when its INVITE will leave once our
    media endpoint is open; False when screening is impossible (ring it like any leg)."""
    host = call.host
    apps = getattr(host, "apps", None)
    if apps is None or call.media is None or not call.invite.body:
        log.info("no 'press 1 to accept' for %s (%s): bridging on answer", leg.target.ruri,
                 "no media engine" if apps is None or call.media is None else "the caller sent no SDP offer")
        return False
    screen = leg.screen = Screen(call, leg)
    host._spawn(screen.send())
    return True


def prompt_text(number: str, name: str = "") -> str:
    who = name or " ".join(number)
    return f"Call for {who}. Press 1 to accept."


def prompt_path(root: Path, tenant_id: int, number: str, name: str) -> Path:
    """The spoken prompt for calls to ``number`` (espeak-ng via node/media_engine/prompts.py),
    made once and kept beside the node's prompts (tenant by numeric id, number digits only)."""
    from node.media_engine import prompts

    if not number.isdigit() or isinstance(tenant_id, bool) or not isinstance(tenant_id, int):
        raise ValueError(f"bad prompt key {tenant_id!r}/{number!r}")
    text = prompt_text(number, name)
    d = Path(root) / "confirm" / str(tenant_id)
    path = d / f"{number}-{uuid.uuid5(uuid.NAMESPACE_OID, text).hex[:8]}.wav"
    if not path.exists():
        d.mkdir(parents=True, exist_ok=True)
        prompts.synthesize(text, path)
    return path


def _initial_offer(media, body: bytes, local_ip: str) -> bytes:
    """The caller's offer as any B leg of the call gets it (at the relay's side b)."""
    fn = getattr(media, "initial_offer", None)
    return fn(body, local_ip) if fn is not None else media.rewrite("a", body, local_ip)


async def _rewrite(media, side: str, body: bytes, local_ip: str) -> bytes:
    """An anchor's rewrite, awaited when the anchor asks an external relay (rtpengine)."""
    fn = getattr(media, "rewrite_async", None)
    if fn is not None:
        return await fn(side, body, local_ip)
    out = media.rewrite(side, body, local_ip)
    return await out if inspect.isawaitable(out) else out


class Screen:
    """One screened B leg (also its dialog's handler in the service's table while asking)."""

    def __init__(self, call, leg) -> None:
        self.call = call
        self.leg = leg
        self.host = call.host
        self.invite = call.invite  # what the service's log binding reads
        self.tenant = call.tenant
        #: 'starting' → 'ringing' → 'asking' → 'accepted' | 'declined'; 'closed' once released
        self.state = "starting"
        self.ep = None  # our endpoint facing the screened party
        self.relay_ep = None  # our endpoint facing the call's relay (after acceptance)
        self.rang_at = time.time()
        self.answered_at: float | None = None
        self.task: asyncio.Task | None = None
        self.cause = ""
        apps = self.host.apps
        ext = call.plan.callee_ext
        number = leg.target.confirm_for
        name = ext.display_name if ext is not None and ext.number == number else ""
        loop = self.host.loop
        self.prompt = loop.run_in_executor(None, prompt_path, apps.prompts.root, call.tenant.id, number, name)
        self.prompt.add_done_callback(_quiet)

    @property
    def answered_leg(self):
        """A stray 2xx retransmission is re-ACKed by the service through this."""
        return self.leg

    # ------------------------------------------------------------------ ringing
    def offer(self, local_ip: str) -> bytes:
        assert self.ep is not None
        return self.ep.offer(self.host.apps.advertise or local_ip)

    async def send(self) -> None:
        call, leg = self.call, self.leg
        try:
            self.ep = await self.host.apps.engine.open_endpoint(call.invite.call_id, call.tenant.name)
        except SipError as e:
            log.warning("no media endpoint to screen %s: %s", leg.target.ruri, e.reason)
            self._fail_unsent(503, "Service Unavailable")
            return
        if leg.cancelled or call.walker is None or leg not in call.walker.current or call.state.value != "ringing":
            self._fail_unsent(487, "Request Terminated")
            return
        self.state = "ringing"
        call._send_invite(leg)

    def _fail_unsent(self, status: int, reason: str) -> None:
        self.close()
        leg = self.leg
        if leg.final == 0:
            leg.final = status
            self.call._leg_failed(leg, status, reason)

    # ------------------------------------------------------------------ answered
    def on_2xx(self, resp: Response) -> bool:
        """A 2xx for the screened leg (the call's ``on_leg_response``): always handled here."""
        call, leg, ep = self.call, self.leg, self.host.endpoint
        if leg.dialog is None:
            leg.dialog = Dialog.as_uac(leg.invite, resp, leg.flow)  # type: ignore[arg-type]
        if leg.ack is not None:
            ep.send_stateless(leg.ack, leg.flow)  # our ACK got lost
            return True
        call._ack_leg(leg, b"")
        leg.final = resp.status
        if (self.state != "ringing" or leg.cancelled or call.answered_leg is not None
                or call.state.value != "ringing" or call.walker is None or call.walker.held):
            call._bye_leg(leg)  # a losing fork, or the call is over (§13.2.2.4)
            self.close()
            return True
        self.answered_at = time.time()
        self.state = "asking"
        call.walker.hold()
        for other in call.walker.current:
            if other is not leg and other.final == 0:
                call._cancel_leg(other)  # the first answer of an attempt wins, as for any call
        try:
            self.ep.accept_answer(resp.body)
        except SipError as e:
            log.info("screened party's SDP unusable: %s", e)
            self.decline("bad-sdp")
            return True
        self.host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, self, "b")
        self.task = self.host.loop.create_task(self._ask())
        return True

    async def _ask(self) -> None:
        with olog.bind(call_id=self.call.invite.call_id, tenant=self.tenant.name):
            await self._ask_bound()

    async def _ask_bound(self) -> None:
        ep = self.ep
        try:
            try:
                path = await self.prompt
            except Exception as e:
                log.warning("no 'press 1 to accept' prompt: %s", e)
                path = None
            if self.state != "asking":
                return
            if path is not None:
                ep.play([path], interruptible=True)
            digit = await ep.get_digit(CONFIRM_TIMEOUT)
        except asyncio.CancelledError:
            return
        if self.state != "asking":
            return
        if digit == ACCEPT_KEY:
            try:
                await self._accept()
            except Exception as e:
                log.warning("bridging the accepted party failed: %s", e)
                if self.state == "asking":
                    self.decline("bridge-failed")
        else:
            self.decline("timeout" if digit is None else "declined")

    async def _accept(self) -> None:
        call, leg, host = self.call, self.leg, self.host
        apps = host.apps
        relay_ep = await apps.engine.open_endpoint(call.invite.call_id, call.tenant.name)
        if self.state != "asking" or call.state.value != "ringing":
            relay_ep.close()
            return
        self.relay_ep = relay_ep
        ip_b = apps.advertise or host.endpoint.local_host(leg.flow)
        # what the callee would have been offered: the caller's SDP at the relay's side b
        offer_b = _initial_offer(call.media, call.invite.body, host.endpoint.local_host(leg.flow))
        answer_b = relay_ep.answer(offer_b, ip_b)
        to_a = await _rewrite(call.media, "b", answer_b, host.endpoint.local_host(call.a_flow))
        if self.state != "asking" or call.state.value != "ringing":
            return
        self.state = "accepted"
        self.ep.stop_output()
        self.ep.bridge(relay_ep)
        log.info("follow-me destination %s accepted the call", leg.target.ruri)
        CONFIRMS.labels("accepted").inc()
        call.answered_leg = leg
        call.b_sdp = answer_b  # what side b of the relay talks to
        host.register_dialog(leg.dialog.call_id, leg.dialog.local_tag, call, "b")
        call._answer_a(to_a)
        call.answer_at = self.answered_at  # the leg is billed from its answer
        call.state = type(call.state).ANSWERED
        call.disposition = "answered"
        call.sip_code = 200
        call._cancel_ring_timer()
        call._cancel_attempt_timer()
        host.call_answered(call)
        call._media_features_answered()

    def decline(self, cause: str) -> None:
        """Not accepted: release the leg (its own CDR) and go on with the follow-me."""
        if self.state != "asking":
            return
        self.state = "declined"
        self.cause = cause
        call, leg = self.call, self.leg
        log.info("follow-me destination %s did not accept (%s)", leg.target.ruri, cause)
        CONFIRMS.labels(cause if cause in _OUTCOMES else "declined").inc()
        if cause != "callee-bye":
            call._bye_leg(leg)
        self._leg_cdr(f"confirm-{cause}")
        self.close()
        if call.state.value != "ringing" or call.walker is None:
            return
        code = call.walker.resume("noanswer")
        if code is not None:
            call.sip_code = code
            call.fail_a(code, None)

    # ------------------------------------------------------------------ in-dialog (while asking)
    def on_request(self, side: str, req: Request, txn) -> None:
        ep = self.host.endpoint
        if req.method == "ACK":
            return
        if req.method == "BYE":
            ep.send_response(make_response(req, 200, None))
            self.leg.bye_sent = True
            self.decline("callee-bye")
            return
        if req.method in ("INVITE", "UPDATE"):
            ep.send_response(make_response(req, 488, None))  # nothing to renegotiate while asking
            return
        ep.send_response(make_response(req, 200, None))

    # ------------------------------------------------------------------ ending
    def call_ended(self) -> None:
        """The call ended (caller gone, ring timeout, or after an accepted call's end)."""
        if self.state == "asking":
            self.state = "declined"
            self.cause = "caller-gone"
            CONFIRMS.labels("caller-gone").inc()
            self.call._bye_leg(self.leg)
            self._leg_cdr("confirm-caller-gone")
        self.close()

    def close(self) -> None:
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()
        if self.state not in ("accepted", "closed") and self.leg.dialog is not None:
            key = (self.leg.dialog.call_id, self.leg.dialog.local_tag)
            if self.host._dialogs.get(key, (None,))[0] is self:
                self.host.unregister_dialog(*key)
        for e in (self.ep, self.relay_ep):
            if e is not None:
                e.close()
        if self.state != "accepted":
            self.ep = self.relay_ep = None
            self.state = "closed"

    def _leg_cdr(self, cause: str) -> None:
        """The answered leg that never joined the call: billed, so it gets its own row."""
        call, leg = self.call, self.leg
        target = leg.target
        trunk = target.trunk.name if target.kind == "trunk" and target.trunk is not None else ""
        callee = _user_of(target.ruri) or target.confirm_for
        self.host.cdr_recorder.record(Cdr(
            id=str(uuid.uuid4()), tenant_id=call.tenant.id,
            call_id=leg.invite.call_id if leg.invite is not None else call.invite.call_id,
            caller=call.caller.number, caller_name=call.caller.display, callee=callee,
            direction="outbound" if trunk else call.plan.direction, start=self.rang_at,
            answer=self.answered_at, end=time.time(), trunk=trunk, disposition="answered", sip_code=200,
            hangup_cause=cause,
        ))


def _user_of(ruri: str) -> str:
    from node.sip.uri import Uri

    try:
        return Uri.parse(ruri).user or ""
    except SipError:
        return ""


def _quiet(fut) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved here; reported where the prompt is awaited
