"""RFC 3891 Replaces: attended transfer and "take over this dialog".

* attended transfer (RFC 5589 §7): the transferor has two calls through the node, one with
  the transferee and one with the target, and sends REFER in one of them whose Refer-To
  carries ``?Replaces=<the other dialog>``. Both calls are bridged by this node, so the
  node joins the two remaining parties itself (no INVITE to anybody): the transferor's two
  dialogs are released and the parties keep their dialogs and relay ports. The two relays
  are chained (each one's transferor-facing leg sends to the other's), so nobody needs a
  re-INVITE; a later re-INVITE of either party moves its media onto the surviving relay.
* semi-attended transfer: the same REFER, but the named dialog is the transferor's
  consultation call while it still rings (early). The target's ringing fork is handed to
  the transferee as it is (``SemiAttended``: ringback meanwhile, recall of the transferor
  if the target never answers).
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

from node.pbx import outgoing, reanchor
from node.pbx.call import Caller, CallState, Leg
from node.pbx.routing import RoutePlan
from node.pbx.transfer import BlindTransfer, ReferError, refuse, require_same_party, transferor_extension
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
    """(call, side, early) of the dialog ``did`` names, or None.

    Confirmed dialogs are in the service's dialog table. Early ones are not: the caller's
    INVITE of a ringing call (side a: the dialog a phone sees while its own call rings, the
    consultation call of a semi-attended transfer) or a fork the node rings (side b). Both
    tags must belong to the dialog (either order), except a fork's to-tag, which the node
    may never have seen (a pickup names the fork by its from-tag)."""
    tags = (did.to_tag, did.from_tag)
    for tag, other in ((did.to_tag, did.from_tag), (did.from_tag, did.to_tag)):
        entry = host._dialogs.get((did.call_id, tag))
        if entry is not None and hasattr(entry[0], "legs"):
            call, side = entry
            d = outgoing.dialog_of(call, side)
            if d is not None and d.remote_tag == other:
                return call, side, False
    for call in list(host.calls.values()):
        if getattr(call, "state", None) is not CallState.RINGING:
            continue
        if call.invite.call_id == did.call_id and call.a_tag in tags and call.invite.from_.tag in tags:
            return call, "a", True
        for leg in call.legs:
            if (leg.final == 0 and leg.invite is not None and leg.invite.call_id == did.call_id
                    and leg.invite.from_.tag in tags):
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
    if getattr(call, "joins_attended", False):
        # a call the node answered itself (node/pbx/app_call.py): its dialogs are not taken over
        return refuse(488, "Not Acceptable Here (replacing a dialog of an application call is not supported)")
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

            try:
                await reanchor.local_then(call, lambda: pickup.take_ringing(call, req, flow, taker, "replaced"), ())
            except reanchor.ReanchorError as e:
                return refuse(e.status if e.status in (481, 491) else 488, f"Not Acceptable Here ({e.reason})")
            return True
        if call.state is not CallState.ANSWERED or call.transfer is not None:
            return refuse(491, "Request Pending (the dialog is being transferred)")
        other = "b" if side == "a" else "a"
    except SipError as e:
        log.info("Replaces failed: %s", e)
        return refuse(488, None)
    move = None
    if reanchor.needed(call):
        # rtpengine relays the call: the party that stays moves to the node's relay first
        move = reanchor.Reanchor(call, (other,))
        try:
            await move.prepare()
        except reanchor.ReanchorError as e:
            return refuse(e.status if e.status in (481, 491) else 488, f"Not Acceptable Here ({e.reason})")
        if not move.alive() or call.state is not CallState.ANSWERED or call.transfer is not None \
                or getattr(txn, "tu", None) == "cancelled":
            await move.rollback()
            return refuse(487 if getattr(txn, "tu", None) == "cancelled" else 481, None)
        move.swap()
    try:
        answer = outgoing.relay_answer(call, side, req.body, outgoing.side_sdp(call, other), ep.local_host(flow))
    except SipError as e:
        log.info("Replaces failed: %s", e)
        if move is not None:
            move.unswap()
            await move.rollback()
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
    if move is not None:
        await move.finish()
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


def referred_dialog(host, value: str):
    """(call, side, early) of the dialog a Refer-To's Replaces names (ReferError 400 when
    unreadable, 481 when no call of this node has it)."""
    did = parse(value)
    if did is None:
        raise ReferError(400, "Bad Request (unreadable Replaces in Refer-To)")
    found = find(host, did)
    if found is None:
        raise ReferError(481, "Call/Transaction Does Not Exist (no dialog to replace)")
    return found


def on_attended_refer(call, side: str, req, target) -> None:
    """REFER from ``side`` of ``call`` with Refer-To ...?Replaces=<a dialog of another call>."""
    ep = call.host.endpoint
    host = call.host
    try:
        call2, side2, early = referred_dialog(host, target.replaces)
        if getattr(call2, "joins_attended", False):
            # a dialog of a call the node answered itself (node/pbx/app_call.py): joined there
            from node.pbx import app_call

            host._spawn(app_call.attended_refer_into(call, side, req, call2, side2, early))
            return
        if call2.tenant.id != call.tenant.id:
            raise ReferError(403, "Forbidden (the dialog belongs to another tenant)")
        if call2 is call:
            raise ReferError(400, "Bad Request (Replaces names the REFER's own call)")
        if getattr(call, "reanchor", None) is not None or getattr(call2, "reanchor", None) is not None:
            raise ReferError(491, "Request Pending (a transfer is in progress)")
        if early:
            semi = SemiAttended.check(call, side, call2, side2)
        elif call2.state is not CallState.ANSWERED or call2.transfer is not None:
            raise ReferError(403, "Forbidden (only an answered call can be joined)")
        require_same_party(transferor_extension(call, side), transferor_extension(call2, side2))
    except ReferError as e:
        refuse(host, req, e, "attended_transfer", "attended REFER")
        return
    ep.send_response(make_response(req, 202, None))
    if early:
        if reanchor.needed(call):
            call.transfer = semi  # BYEs and the call's end reach it while the media moves
            call.host._spawn(_semi_on_local_relay(semi))
            return
        semi.start()
        return
    _notify(call, side, 100, "Trying", False)
    if reanchor.needed(call) or reanchor.needed(call2):
        call.host._spawn(_join_on_local_relay(call, side, call2, side2))
        return
    join(call, side, call2, side2)
    _notify_final(call, side)


async def _join_on_local_relay(call, side: str, call2, side2: str) -> None:
    """``join`` for calls whose media rtpengine relays: the two parties that stay (never the
    transferor, released by the join) move to the node's relay first, both or neither
    (node/pbx/reanchor.py); a refusal is the REFER's final NOTIFY, both calls go on."""
    moves = [reanchor.Reanchor(c, ("b" if s == "a" else "a",)) for c, s in ((call, side), (call2, side2))
             if reanchor.needed(c)]
    try:
        await reanchor.prepare_all(*moves)
        if not all(m.alive() for m in moves) or call.transfer is not None or call2.transfer is not None \
                or call.state is not CallState.ANSWERED or call2.state is not CallState.ANSWERED:
            for m in moves:
                await m.rollback()
            raise reanchor.ReanchorError(481, "Call/Transaction Does Not Exist (a call ended meanwhile)")
    except reanchor.ReanchorError as e:
        log.info("attended transfer failed: %s %s", e.status, e.reason)
        outgoing.feature_done("attended_transfer", "failed")
        if call.state is CallState.ANSWERED:
            _notify(call, side, e.status, e.reason, True)
        return
    for m in moves:
        m.swap()
    join(call, side, call2, side2)
    _notify_final(call, side)
    for m in moves:
        await m.finish()


async def _semi_on_local_relay(semi: "SemiAttended") -> None:
    """``SemiAttended.start`` once the transferee's call, relayed by rtpengine, is on the
    node's relay (both parties: the transferor gets the call back if the target fails). The
    consultation's ringing fork stays with rtpengine until the target answers (``_answered``)."""
    call = semi.call
    try:
        await reanchor.make_local(call, gone=lambda s: s == semi.side and semi.transferor_gone)
    except reanchor.ReanchorError as e:
        if not semi.aborted and call.state is CallState.ANSWERED:
            BlindTransfer.failed(semi, e.status, e.reason)  # the NOTIFY; nothing rings for it yet
        return
    if semi.aborted or call.state is not CallState.ANSWERED:
        return
    legs = [leg for leg in semi.ringing_legs if leg.final == 0 and not leg.cancelled]
    if semi.call2.state is not CallState.RINGING or not legs:
        BlindTransfer.failed(semi, 481, "Call/Transaction Does Not Exist (the target stopped ringing)")
        return
    semi.ringing_legs = legs
    semi.start()


def _notify(call, side: str, status: int, reason: str, final: bool) -> None:
    from node.pbx.transfer import BlindTransfer, ReferError, transferor_extension

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
    end_absorbed(call2, d2)  # its relay lives on in the chain
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


def end_absorbed(call2, kept) -> None:
    """``call2`` was absorbed by an attended join (``join`` here, ``attended_join`` of
    node/pbx/app_call.py): it ends without BYEs, with its pair's CDR, its lamps and its
    external-call slot; only ``kept`` (the target's dialog, the survivor's now) stays."""
    host = call2.host
    call2.hangup_cause = "attended-transfer"
    host.cdr_recorder.record(call2.cdr())
    call2.state = CallState.ENDED
    host.calls.pop(call2.id, None)
    for key in call2.dialogs:
        if key != (kept.call_id, kept.local_tag):
            host.unregister_dialog(*key)
    host._call_state(call2, "terminated")
    if call2.counts_external:
        call2.counts_external = False
        host._external[call2.tenant.id] = max(0, host._external.get(call2.tenant.id, 1) - 1)


# ------------------------------------------------------------------ semi-attended transfer
class _RingbackSource:
    """Ringback for one listener, in the shape ``hold.MohFeed`` reads (each transferee
    hears the cadence from its start, not a shared position)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def listener(self) -> "_RingbackSource._Listener":
        return self._Listener(self.engine)

    class _Listener:
        def __init__(self, engine) -> None:
            self.engine = engine
            self.pos = 0

        def read(self, pt: int) -> bytes:
            from node.media.tones import FRAME

            period = self.engine.tone("ringback", pt)
            if self.pos + FRAME > len(period):
                self.pos = 0
            frame = period[self.pos:self.pos + FRAME]
            self.pos += FRAME
            return frame

        def close(self) -> None:
            pass


class _AdoptedRinging(outgoing.Outgoing):
    """The consultation call's ringing forks, rung on from now on for the transferee: no new
    INVITE, their transactions just report to this object. No further attempts of the
    consultation's plan (the target's forwarding) follow: when they fail or ring out, the
    transferee goes back to the transferor (``SemiAttended.failed``)."""

    def adopt(self, legs) -> None:
        for leg in legs:
            o = outgoing.OutLeg(self, leg.target, leg.flow)
            o.invite, o.txn, o.provisional = leg.invite, leg.txn, leg.provisional
            leg.txn.tu = o
            self.legs.append(o)
        self.attempt = len(self.plan.attempts)  # nothing after these
        self._rang = True  # the transferor heard them ring already
        self._timer = self.host.loop.call_later(self.ring_timeout, self._on_timeout)


class SemiAttended(BlindTransfer):
    """REFER whose Replaces names the transferor's consultation call while it still rings
    (RFC 5589 §7.3 "transfer before the target answers"). The node does what a PBX does on
    a DTMF attended transfer completed early (Asterisk ``atxfer`` with a recall):

    * at once: 202, NOTIFY 100 then 180; the consultation INVITE gets 487 (its early dialog
      is replaced); the target's ringing fork(s) keep ringing, no new INVITE; the transferee
      hears ringback (instead of the transferor or hold music);
    * the target answers: NOTIFY 200, the transferor's dialog with the transferee is
      released (if it has not hung up already), transferee and target talk through the
      two chained relays (as ``join``; the consultation's relay lives on in the call);
    * the target rejects or rings out (the tenant's ring timeout, counted from the REFER):
      NOTIFY with its status; a transferor still in the call gets the transferee back (the
      ringback stops, no music resumes: its phone takes the call off hold); one that has
      hung up is *recalled*: its extension rings (Alert-Info recall:transfer), presenting
      the transferee, and answering restores the call. Only when the recall fails too is
      the transferee released (never silently: it has heard ringback throughout, and the
      CDR says ``transfer-recall-failed``). One recall, no retries (Asterisk retries
      ``atxfercallbackretries`` times).

    The target's own no-answer forwarding is not followed: the transferor meant that person
    and gets the caller back, as Asterisk does by default (``atxferdropcall=no``: "the
    system will try to call back the person that did the transfer").
    """

    def __init__(self, call, side: str, ext, call2, legs) -> None:
        super().__init__(call, side, ext, call2.plan.callee)
        self.call2 = call2
        self.ringing_legs = legs
        self.media2 = None
        self.recalling = False
        self.was_held = False

    @classmethod
    def check(cls, call, side: str, call2, side2: str) -> "SemiAttended":
        """The transfer to start, or ReferError saying why this early dialog cannot be used."""
        if side2 != "a" or call2.state is not CallState.RINGING or call2.transfer is not None:
            raise ReferError(403, "Forbidden (only a call the transferor itself places can be transferred while it rings)")
        ext = transferor_extension(call, side)
        if ext is None:
            raise ReferError(403, "Forbidden (only an extension may transfer)")
        other = "b" if side == "a" else "a"
        if call2.late_offer or call.media is None or call2.media is None or not outgoing.side_sdp(call, other):
            raise ReferError(488, "Not Acceptable Here (semi-attended transfer needs calls with SDP offers)")
        legs = [leg for leg in call2.legs if leg.final == 0 and not leg.cancelled and leg.txn is not None]
        if not legs:
            raise ReferError(481, "Call/Transaction Does Not Exist (the consultation call rings nobody)")
        return cls(call, side, ext, call2, legs)

    # ------------------------------------------------------------------ take over the ringing call
    def start(self) -> None:
        call, call2 = self.call, self.call2
        call.transfer = self
        self.notify(100, "Trying")
        self.notify(180, "Ringing")
        # the forks now ring for the transferee
        self.plan = call2.plan
        self.out = _AdoptedRinging(call, call2.plan, b"", outgoing.party_of(call, self.other),
                                   self._answered, self.failed)
        self.out.adopt(self.ringing_legs)
        call2.legs = [leg for leg in call2.legs if leg not in self.ringing_legs]
        # the consultation call ends for the transferor (its early dialog is replaced), its
        # relay stays: the target was offered a port of it
        self.media2, call2.media = call2.media, None
        call2.hangup_cause = "semi-attended-transfer"
        call2.fail_a(487, None)
        self.was_held = outgoing.take_hold(call) == self.other
        self._ringback()
        log.info("semi-attended transfer: %s rings %s for the transferee", self.ext.number, self.number)

    def _ringback(self) -> None:
        from node.pbx import hold

        apps = getattr(self.call.host, "apps", None)
        session = getattr(self.call.media, "session", None)
        if apps is None or session is None:
            return  # no media engine: the transferee hears nothing while it rings
        state = hold.HoldState()
        pt = hold.answer_codec(outgoing.side_sdp(self.call, self.other))
        state.feed = hold.MohFeed(apps.engine, _RingbackSource(apps.engine), session.leg(self.other), pt)
        state._muted_leg = session.leg(self.side)  # the transferor, if still there, is not heard
        state._muted_leg.add_tap(hold._drop)
        state.held_side = self.other
        self.call.hold = state

    # ------------------------------------------------------------------ outcomes
    def _answered(self, leg: outgoing.OutLeg, resp) -> None:
        call, media2 = self.call, self.media2
        ep = call.host.endpoint
        if self.recalling:
            return self._recall_answered(leg, resp)
        in_rtpengine = reanchor.in_rtpengine(media2)
        if resp.body and not in_rtpengine:
            media2.rewrite("b", resp.body, ep.local_host(leg.flow))  # where the target receives
        self.notify(200, "OK", final=True)
        outgoing.take_hold(call)  # the ringback
        outgoing.release_side(call, self.side, send_bye=not self.transferor_gone, grace=True)
        transferee = outgoing.party_of(call, self.other)
        outgoing.put_on_side(call, self.side, leg, resp.body)
        if in_rtpengine:
            # the target answered rtpengine's offer: re-INVITEd onto the transferee's relay
            call.host._spawn(reanchor.pull(call, self.side, media2))
        else:
            # chain the relays: the transferee's faces the target's through their transferor legs
            l1, l2 = call.media.session.leg(self.side), media2.session.leg("a")
            ip = call.media.advertise or ep.local_host(leg.flow)
            l1.set_remote(media2.advertise or ip, l2.local_port)
            l2.set_remote(ip, l1.local_port)
            call.media = ChainedMedia(call.media, media2)
        self.media2 = None
        call.transfer = None
        outgoing.new_pair(call, transferee, self.plan, "semi-attended-transfer", leg.target, self.side)
        if self.was_held:
            outgoing.resume(call, self.other)
        log.info("semi-attended transfer done: %s now talks to %s", transferee.number, self.number)
        outgoing.feature_done("semi_attended_transfer", "done")

    def failed(self, status: int, reason: str) -> None:
        call = self.call
        if self.recalling:
            return self._recall_failed(status, reason)
        self._drop_media2()
        log.info("semi-attended transfer to %s failed: %s %s", self.number, status, reason)
        self.notify(status, reason or "Temporarily Unavailable", final=True)
        if call.state is not CallState.ANSWERED:
            call.transfer = None
            return
        if not self.transferor_gone:
            # the transferor still has the call: the ringback stops, the two hear each other
            # again (a transferee it held stays held until the phone resumes it)
            outgoing.take_hold(call)
            call.transfer = None
            outgoing.feature_done("semi_attended_transfer", "failed")
            return
        self.recalling = True
        outgoing.feature_done("semi_attended_transfer", "recalled")
        call.host._spawn(self._recall())

    async def _recall(self) -> None:
        from node.pbx import dialplan

        call, host = self.call, self.call.host
        try:
            plan = await dialplan.plan_outgoing(call.tenant, self.ext, self.ext.number, host.config,
                                                host.locations, host.features)
        except Exception:
            log.exception("recall routing failed")
            return self._recall_failed(500, "Server Internal Error")
        if self.aborted or call.state is not CallState.ANSWERED:
            return
        if plan.app is not None or plan.fail_status or not plan.attempts:
            return self._recall_failed(plan.fail_status or 480, plan.fail_reason or "no phone to recall")
        self.plan = plan
        try:
            offer = call.media.rewrite(self.other, outgoing.side_sdp(call, self.other),
                                       host.endpoint.local_host(call.a_flow))
        except SipError as e:
            return self._recall_failed(488, str(e))
        log.info("semi-attended transfer: recalling %s for %s", self.ext.number, outgoing.party_of(call, self.other).number)
        self.out = outgoing.Outgoing(call, plan, offer, outgoing.party_of(call, self.other), self._answered,
                                     self.failed, extra=[("Alert-Info", "<urn:alert:service:recall:transfer>")])
        self.out.start()

    def _recall_answered(self, leg: outgoing.OutLeg, resp) -> None:
        call = self.call
        ep = call.host.endpoint
        if resp.body:
            call.media.rewrite(self.side, resp.body, ep.local_host(leg.flow))
        outgoing.take_hold(call)
        outgoing.release_side(call, self.side, send_bye=False)
        transferee = outgoing.party_of(call, self.other)
        outgoing.put_on_side(call, self.side, leg, resp.body)
        call.transfer = None
        outgoing.new_pair(call, transferee, self.plan, "transfer-recall", leg.target, self.side)
        if self.was_held:
            outgoing.resume(call, self.other)
        log.info("recall answered: %s talks to %s again", transferee.number, self.ext.number)
        outgoing.feature_done("semi_attended_transfer", "retrieved")

    def _recall_failed(self, status: int, reason: str) -> None:
        call = self.call
        call.transfer = None
        log.info("recall of %s failed (%s %s): releasing the transferee", self.ext.number, status, reason)
        outgoing.feature_done("semi_attended_transfer", "timeout")
        if call.state is CallState.ANSWERED:
            call.hangup_cause = "transfer-recall-failed"
            outgoing.release_side(call, self.other)
            call.end()

    def _drop_media2(self) -> None:
        if self.media2 is not None:
            self.media2.close()
            self.media2 = None

    def abort(self) -> None:
        super().abort()
        self._drop_media2()
