"""Blind transfer: a party of a bridged call sends REFER (RFC 3515) and the node, not the
phone, places the new call (RFC 5589 §6: the B2BUA terminates the REFER).

  transferor ──REFER Refer-To: 1003──▶ node ──202, NOTIFY "100 Trying"──▶ transferor
  node ──INVITE──▶ 1003 (routed with the transferor's dial plan and class of service)
  1003 answers ─▶ NOTIFY "200 OK" (subscription terminated), BYE the transferor,
                  the transferee now talks to 1003 through the same relay port
  1003 fails   ─▶ NOTIFY "<status> <reason>"; the transferor is still in the call (or, if
                  it hung up already, the transferee is released)

A transferor that gave up its consultation call to the same target just before (CANCEL,
then blind REFER: how many phones "transfer while it rings") is not raced: the new INVITE
waits, briefly, until that target has answered the CANCEL (``_cancelled_forks_pending``).
Transferring *to* the still-ringing consultation call itself (REFER with an early Replaces)
is node/pbx/replaces.py ``SemiAttended``.

Why the node places the call: the target is routed inside the transferor's tenant with its
class of service (a phone cannot transfer a caller to a number it may not dial itself), and
the transferee (maybe a carrier) never learns anybody's contact. Refer-To must name the
call's own tenant domain (or an IP literal, the node itself): a REFER into another tenant is
refused with 403, like any other cross-tenant reach.

CDRs: one per pair of parties. The pair before the transfer ends with hangup cause
``blind-transfer`` (disposition answered); the transferee and the target get a new CDR (new
id, same call) which ends normally.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from dataclasses import dataclass

from node.pbx import outgoing
from node.pbx.call import CallState
from node.sip.errors import SipError
from node.sip.message import Request, make_response, parse_name_addr

log = logging.getLogger("hivepbx.transfer")

#: how long the implicit refer subscription lives (RFC 3515 §2.4.6 lets the notifier choose)
SUBSCRIPTION_SECONDS = 60


@dataclass(frozen=True, slots=True)
class ReferTarget:
    number: str
    host: str
    #: the Replaces header of an attended transfer (RFC 3891), unescaped; "" for blind
    replaces: str = ""


class ReferError(ValueError):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def parse_refer_to(value: str | None) -> ReferTarget:
    """The number a Refer-To names (ReferError 400 when it names none)."""
    if not value:
        raise ReferError(400, "Bad Request (missing Refer-To)")
    try:
        na = parse_name_addr(value.strip(), "Refer-To")
    except SipError:
        raise ReferError(400, "Bad Request (unreadable Refer-To)") from None
    uri = na.uri
    if uri.scheme not in ("sip", "sips"):
        raise ReferError(400, "Bad Request (Refer-To must be a SIP URI)")
    number = uri.user_unescaped or ""
    if not number:
        raise ReferError(400, "Bad Request (Refer-To names no number)")
    replaces = ""
    for part in (uri.headers or "").split("&"):
        name, _, val = part.partition("=")
        if name.lower() == "replaces":
            from urllib.parse import unquote

            replaces = unquote(val)
    return ReferTarget(number, uri.host_bare, replaces)


def same_tenant(tenant, host: str) -> bool:
    """Refer-To's host must be the tenant's own domain; an IP literal means "this node"."""
    if host.lower() == tenant.domain.lower():
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def check_refer(call, req: Request, busy: bool) -> ReferTarget:
    """What every REFER must pass, in a plain or an application call (ReferError says why
    not): no transfer running yet (491), a readable Refer-To naming this tenant (400/403)."""
    if busy:
        raise ReferError(491, "Request Pending (a transfer is in progress)")
    target = parse_refer_to(req.get("Refer-To"))
    if not same_tenant(call.tenant, target.host):
        raise ReferError(403, "Forbidden (Refer-To outside this tenant)")
    return target


def require_transferor(ext):
    """The transferor's extension (ReferError 403 when it is a carrier or a foreign party)."""
    if ext is None:
        raise ReferError(403, "Forbidden (only an extension may transfer)")
    return ext


def require_same_party(ext, ext2) -> None:
    """An attended REFER's Replaces must name a dialog of the transferor itself (403)."""
    if ext is None or ext2 is None or ext2.number != ext.number:
        raise ReferError(403, "Forbidden (Replaces names a dialog of another party)")


def refuse(host, req: Request, e: ReferError, feature: str, what: str = "REFER") -> None:
    """A refused REFER: its final response says why; the feature's metrics count it."""
    log.info("%s refused: %s %s", what, e.status, e.reason)
    outgoing.feature_done(feature, "refused")
    host.endpoint.send_response(make_response(req, e.status, e.reason))


def transferor_extension(call, side: str):
    """The extension on ``side`` of the call, None for a carrier or a foreign party."""
    parties = getattr(call, "parties", None)
    if parties is not None:
        return parties[side].extension
    if side == "a":
        return call.caller.extension
    ext = call.plan.callee_ext
    leg = call.answered_leg
    if ext is None or ext.tenant_id != call.tenant.id or leg is None or leg.target.kind != "extension":
        return None
    return ext


def on_refer(call, side: str, req: Request) -> None:
    """An in-dialog REFER from ``side`` of an answered call (already CSeq-checked)."""
    try:
        target = check_refer(call, req, call.transfer is not None or getattr(call, "reanchor", None) is not None)
        ext = require_transferor(transferor_extension(call, side))
        if target.replaces:
            from node.pbx import replaces

            replaces.on_attended_refer(call, side, req, target)
            return
        other = "b" if side == "a" else "a"
        if not outgoing.side_sdp(call, other):
            raise ReferError(488, "Not Acceptable Here (transfer of a call without SDP offer)")
    except ReferError as e:
        refuse(call.host, req, e, "blind_transfer")
        return
    xfer = BlindTransfer(call, side, ext, target.number)
    call.transfer = xfer
    xfer.accept(req)
    call.host._spawn(xfer.run())


#: longest a transfer waits for the target's answer to a CANCEL (see ``_cancelled_forks_pending``)
RING_RACE_WAIT = 3.0


async def _cancelled_forks_pending(host, targets) -> bool:
    """Wait (at most RING_RACE_WAIT) until no INVITE this node CANCELled towards one of
    ``targets`` still awaits its final response; True when it had to wait.

    Why: a phone giving up its consultation call and sending a blind REFER right after
    (the usual way to "transfer while it rings") makes the node CANCEL the consultation
    fork and INVITE the same phone again. A fork whose CANCEL is still deferred (no
    provisional yet, RFC 3261 §9.1) or unanswered is still ringing there: a second INVITE
    now rings the phone twice at once, and a single-line phone answers it 486 Busy."""
    ruris = {t.ruri for t in targets}
    loop = host.loop
    deadline = loop.time() + RING_RACE_WAIT
    waited = False
    while True:
        pending = False
        for txn in host.endpoint.layer.client_invites():
            leg = txn.tu
            if (getattr(leg, "cancelled", False) and getattr(leg, "final", 1) == 0
                    and getattr(getattr(leg, "target", None), "ruri", None) in ruris):
                pending = True
                break
        if not pending or loop.time() >= deadline:
            if pending:
                log.info("transfer: the target has not answered an earlier CANCEL; ringing it anyway")
            return waited
        waited = True
        await asyncio.sleep(0.05)


class BlindTransfer:
    def __init__(self, call, side: str, ext, number: str) -> None:
        self.call = call
        self.side = side  # the transferor's
        self.other = "b" if side == "a" else "a"
        self.ext = ext
        self.number = number
        self.transferor_gone = False
        self.notifier_done = False
        self.out: outgoing.Outgoing | None = None
        self.aborted = False

    # ------------------------------------------------------------------ NOTIFY (RFC 3515 §2.4.4)
    def accept(self, req: Request) -> None:
        """202 to the REFER, then the implicit subscription's first NOTIFY."""
        self.call.host.endpoint.send_response(make_response(req, 202, None))
        self.notify(100, "Trying")

    def notify(self, status: int, reason: str, final: bool = False) -> None:
        if self.notifier_done or self.transferor_gone:
            return
        dialog = outgoing.dialog_of(self.call, self.side)
        if dialog is None:
            return
        self.notifier_done = final
        ep = self.call.host.endpoint
        state = "terminated;reason=noresource" if final else f"active;expires={SUBSCRIPTION_SECONDS}"
        body = f"SIP/2.0 {status} {reason or 'Failed'}\r\n".encode()
        req = dialog.create_request("NOTIFY", ep.sent_by(dialog.flow), body=body,
                                    content_type="message/sipfrag;version=2.0",
                                    extra=[("Event", "refer"), ("Subscription-State", state)])
        t = ep.send_request(req, dialog.flow)
        t.tu = outgoing.IGNORE

    # ------------------------------------------------------------------ the new call
    async def run(self) -> None:
        call = self.call
        host = call.host
        from node.pbx import dialplan, park, reanchor

        if reanchor.needed(call):
            # rtpengine relays the call: its parties move to the node's relay first (both:
            # the transferor gets the call back if the target fails)
            try:
                await reanchor.make_local(call, gone=lambda s: s == self.side and self.transferor_gone)
            except reanchor.ReanchorError as e:
                if not self.aborted and call.state is CallState.ANSWERED:
                    self.failed(e.status, e.reason)
                return
            if self.aborted or call.state is not CallState.ANSWERED:
                return
        try:
            if await park.park_by_transfer(self, self.number):
                return
            plan = await dialplan.plan_outgoing(call.tenant, self.ext, self.number, host.config,
                                                host.locations, host.features)
        except Exception:
            log.exception("transfer routing failed")
            self.failed(500, "Server Internal Error")
            return
        if self.aborted or call.state is not CallState.ANSWERED:
            return
        if plan.app is not None:
            self.failed(488, "Not Acceptable Here (transfer to an application is not supported)")
            return
        if plan.fail_status or not plan.attempts:
            self.failed(plan.fail_status or 404, plan.fail_reason or "Not Found")
            return
        self.plan = plan
        if await _cancelled_forks_pending(host, plan.attempts[0]):
            if self.aborted or call.state is not CallState.ANSWERED:
                return
        local = host.endpoint.local_host(call.a_flow)
        try:
            # the new party takes the transferor's side: offer it the transferee's SDP with
            # the relay port of that side
            offer = call.media.rewrite(self.other, outgoing.side_sdp(call, self.other), local)
        except SipError as e:
            self.failed(488, f"Not Acceptable Here ({e})")
            return
        referred_by = f"<sip:{self.ext.number}@{call.tenant.domain}>"
        self.out = outgoing.Outgoing(
            call, plan, offer, outgoing.party_of(call, self.other), self._answered, self.failed,
            on_ringing=lambda: self.notify(180, "Ringing"), extra=[("Referred-By", referred_by)],
        )
        self.out.start()

    def _answered(self, leg: outgoing.OutLeg, resp) -> None:
        call = self.call
        if resp.body and call.media is not None:
            other_dialog = outgoing.dialog_of(call, self.other)
            call.media.rewrite(self.side, resp.body, call.host.endpoint.local_host(other_dialog.flow))
        self.notify(200, "OK", final=True)
        held = outgoing.take_hold(call)
        outgoing.release_side(call, self.side, send_bye=not self.transferor_gone, grace=True)
        caller = outgoing.party_of(call, self.other)
        outgoing.put_on_side(call, self.side, leg, resp.body)
        call.transfer = None
        # the transferee is now the one "calling" the target (CDR, busy lamps)
        outgoing.new_pair(call, caller, self.plan, "blind-transfer", leg.target, self.side)
        if held == self.other:
            outgoing.resume(call, self.other)
        log.info("transfer done: %s now talks to %s", caller.number, self.number)
        outgoing.feature_done("blind_transfer", "done")

    def failed(self, status: int, reason: str) -> None:
        call = self.call
        call.transfer = None
        log.info("transfer to %s failed: %s %s", self.number, status, reason)
        outgoing.feature_done("blind_transfer", "failed")
        self.notify(status, reason, final=True)
        if self.transferor_gone and call.state is CallState.ANSWERED:
            # nobody left to take the call back: release the transferee
            call.hangup_cause = f"transfer-failed-{status}"
            outgoing.release_side(call, self.other)
            call.end()

    # ------------------------------------------------------------------ call events
    def on_bye(self, side: str, req: Request) -> bool:
        """A BYE while the transfer runs: the transferor leaving is expected (RFC 5589 §6.1
        allows it before the outcome); the transferee leaving ends everything."""
        if side != self.side:
            self.abort()
            self.call.transfer = None
            return False
        ep = self.call.host.endpoint
        ep.send_response(make_response(req, 200, None))
        self.transferor_gone = True
        d = outgoing.dialog_of(self.call, side)
        if d is not None:
            self.call.host.unregister_dialog(d.call_id, d.local_tag)
        if side == "b" and self.call.answered_leg is not None:
            self.call.answered_leg.bye_sent = True
        return True

    def abort(self) -> None:
        self.aborted = True
        if self.out is not None:
            self.out.abort()
