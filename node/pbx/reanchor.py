"""Re-anchoring: moving a call's media from rtpengine to the node's own relay, so the
features that re-wire relay legs (transfer, park, pickup, Replaces) work on every call,
whatever a deployment's ``media_relay``.

Two phases, so a refusal changes nothing and several calls move together or not at all
(an attended transfer joins two calls):

* ``prepare``: a local relay session is opened; each party that stays in the call gets a
  re-INVITE offering its relay leg's port (the other party's last SDP, rewritten, with our
  o= line of that side one version up), sent in parallel. Meanwhile nothing else may offer
  (a crossing re-INVITE gets 491: ``call.pending`` holds a marker). A party that is not
  re-INVITEd (the transferor, about to be released) keeps sending to rtpengine, which
  still relays it; the local leg facing it already sends to its phone's known address.
* ``commit``: the rtpengine session is deleted (awaited) and ``call.media`` becomes the
  local anchor; music on hold rtpengine was playing restarts from the node.
* ``rollback`` (a party refused: 491, 488, timeout, or the call ended meanwhile): every
  party already moved is re-INVITEd back to the SDP rtpengine gave it; the local session
  is closed. The call goes on through rtpengine as before. A re-INVITE with no final
  response within ``reanchor_answer_wait`` (NodeConfig) counts as refused (408) and is
  CANCELled (RFC 3261 §9), so a silent phone costs seconds, not the 32 s transaction
  timeout; should its 2xx still come, the party is re-INVITEd back to rtpengine.

A ringing call (pickup, Replaces of an early dialog) needs no re-INVITE: nobody has an
answer yet; the caller's 2xx will carry the local relay's SDP. The target of a
semi-attended transfer, rung by a consultation call still in rtpengine, is ``pull``-ed onto
the transferee's relay leg once it answers (its fork cannot be re-INVITEd while it rings).

Who is re-INVITEd: blind transfer and park, both parties (the transferor gets the call back
if the target fails); attended transfer and Replaces, only the parties that stay (the
transferor or replaced party is released right after, and keeps rtpengine meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from prometheus_client import Counter

from node.pbx.call import _ALLOW, CallState
from node.sdp.anchoring import media_address, rewrite_for_relay
from node.sdp.errors import SdpError
from node.sdp.parser import parse
from node.sip.cancel import build_cancel
from node.sip.message import Response

log = logging.getLogger("hivepbx.reanchor")

REANCHORS = Counter("hivepbx_media_reanchors", "Calls moved from rtpengine to the node's relay for a feature",
                    ["outcome"])
#: longest a pending in-dialog exchange (a hold being answered) delays a re-anchoring
PENDING_WAIT = 2.0


class ReanchorError(Exception):
    """The call could not be moved (it stays on rtpengine); ``status``/``reason`` for the feature."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason


#: ``call.pending`` while a re-anchoring runs: a crossing re-INVITE gets 491
_BUSY = object()


def needed(call) -> bool:
    """Whether ``call``'s media is in rtpengine (a feature must re-anchor it first)."""
    return in_rtpengine(call.media)


def in_rtpengine(media) -> bool:
    return media is not None and getattr(media, "where", "") == "rtpengine" and getattr(media, "local", 1) is None


class _ReInvite:
    """TU of one re-INVITE: ACKs every 2xx (retransmissions too), resolves ``done``.
    ``abandon`` (no answer within the node's ``reanchor_answer_wait``) CANCELs it; a 2xx
    that still comes then ``late_2xx(self)``: the party took an offer the move no longer
    stands by."""

    def __init__(self, call, side: str, dialog, req, late_2xx: Callable[["_ReInvite"], None] | None = None) -> None:
        self.call, self.side, self.dialog, self.req = call, side, dialog, req
        self.done: asyncio.Future[Response | None] = call.host.loop.create_future()
        self.provisional = False
        self.abandoned = False
        self.cancel_pending = False
        self.late_2xx = late_2xx

    def on_sip_response(self, resp: Response, txn) -> None:
        if resp.status < 200:
            self.provisional = True
            if self.cancel_pending:
                self._send_cancel()
            return
        if resp.status < 300:
            ep = self.call.host.endpoint
            ack = self.dialog.create_request("ACK", ep.sent_by(self.dialog.flow), cseq=self.req.cseq.seq)
            ep.send_stateless(ack, self.dialog.flow)
            self.dialog.update_target(resp)
            if self.abandoned and self.late_2xx is not None:
                late, self.late_2xx = self.late_2xx, None
                late(self)
        self.cancel_pending = False
        if not self.done.done():
            self.done.set_result(resp)

    def on_sip_timeout(self, txn) -> None:
        self.cancel_pending = False
        if not self.done.done():
            self.done.set_result(None)

    def abandon(self) -> None:
        """No final response in time: counts as a timeout now; CANCEL (RFC 3261 §9.1: only
        once a provisional came, else when one comes; without one the transaction's own
        Timer B ends it)."""
        if self.done.done():
            return
        self.abandoned = True
        self.done.set_result(None)
        if self.provisional:
            self._send_cancel()
        else:
            self.cancel_pending = True

    def _send_cancel(self) -> None:
        self.cancel_pending = False
        from node.pbx import outgoing

        t = self.call.host.endpoint.send_request(build_cancel(self.req), self.dialog.flow)
        t.tu = outgoing.IGNORE  # its 200 changes nothing: the re-INVITE's 487 (or 2xx) does


def answer_wait(call) -> float:
    """Longest a re-INVITE of a move (or of its rollback) waits for its final response: the
    node's ``reanchor_answer_wait`` (NodeConfig, where the why is)."""
    return call.host.cfg.reanchor_answer_wait


async def _answers(tus: list[_ReInvite], wait: float) -> list[Response | None]:
    """Each re-INVITE's final response, None for a timeout or no answer within ``wait``
    seconds (then it is CANCELled: ``_ReInvite.abandon``)."""
    done = [tu.done for tu in tus]
    if not done:
        return []
    await asyncio.wait(done, timeout=wait)
    for tu in tus:
        if not tu.done.done():
            log.info("call %s: side %s did not answer the re-INVITE within %.1f s: cancelled",
                     tu.call.invite.call_id, tu.side, wait)
            tu.abandon()
    return [tu.done.result() for tu in tus]


class Reanchor:
    """One call's move (module docstring). ``sides``: the parties to re-INVITE (the others
    are leaving); ``gone(side)``: True when a party left meanwhile, so its refusal is moot."""

    def __init__(self, call, sides: Iterable[str] = ("a", "b"),
                 gone: Callable[[str], bool] | None = None) -> None:
        self.call = call
        self.anchor = call.media
        self.sides = tuple(sides)
        self.gone = gone or (lambda side: False)
        self.local = None
        self.moved: list[str] = []
        self._marked = False
        self._hold = None
        #: the call's state when the move began (a ringing call answered meanwhile is not
        #: the call the feature looked at)
        self.state = call.state

    # ------------------------------------------------------------------ phase 1
    async def prepare(self) -> None:
        call, anchor = self.call, self.anchor
        if getattr(call, "reanchor", None) is not None:
            raise ReanchorError(491, "Request Pending (the call's media is being moved)")
        call.reanchor = self
        try:
            await self._wait_pending()
            self.local = await anchor.factory.local.open(call.invite.call_id, call.tenant.name, reason="reanchor")
            self._check_alive()
            if call.state is CallState.ANSWERED:
                self._aim_legs()
                self._mark()
                await self._move()
        except ReanchorError:
            await self.rollback()
            raise
        except SdpError as e:  # a party's last SDP is unusable as an offer
            await self.rollback()
            raise ReanchorError(488, f"Not Acceptable Here ({e})") from None
        except BaseException:
            await self.rollback()
            raise

    async def _wait_pending(self) -> None:
        call = self.call
        if call.state is not CallState.ANSWERED:
            return
        deadline = call.host.loop.time() + PENDING_WAIT
        while any(v is not None for v in call.pending.values()):
            if call.host.loop.time() >= deadline:
                raise ReanchorError(491, "Request Pending (a media change of the call is in progress)")
            await asyncio.sleep(0.02)
            self._check_alive()

    def _check_alive(self) -> None:
        call = self.call
        if call.state is not self.state or call.media is not self.anchor:
            raise ReanchorError(481, "Call/Transaction Does Not Exist (the call ended)")

    def _aim_legs(self) -> None:
        """Each local leg sends to its party's phone as last described (before any answer:
        a party not re-INVITEd keeps hearing the other through it)."""
        for side in ("a", "b"):
            sdp = self._heard(side)
            try:
                addr = media_address(parse(sdp)) if sdp else None
            except SdpError:
                addr = None
            if addr is not None:
                self.local.session.leg(side).set_remote(addr.host, addr.port, addr.rtcp_port, addr.rtcp_host)

    def _heard(self, side: str) -> bytes:
        from node.pbx import outgoing

        return self.anchor.heard.get(side) or outgoing.side_sdp(self.call, side)

    def _mark(self) -> None:
        call = self.call
        for side in ("a", "b"):
            if call.pending.get(side) is None:
                call.pending[side] = _BUSY
        self._marked = True

    def _unmark(self) -> None:
        if self._marked:
            self._marked = False
            for side in ("a", "b"):
                if self.call.pending.get(side) is _BUSY:
                    self.call.pending[side] = None

    async def _move(self) -> None:
        tus = []
        for side in self.sides:
            if self.gone(side):
                continue
            tu = self._reinvite(side, self._offer_to(side))
            if tu is None:
                raise ReanchorError(481, "Call/Transaction Does Not Exist (a party left)")
            tus.append(tu)
        results = await _answers(tus, answer_wait(self.call))
        failure = None
        for tu, resp in zip(tus, results):
            if resp is not None and 200 <= resp.status < 300:
                self.moved.append(tu.side)
                addr = None
                try:
                    addr = media_address(parse(resp.body)) if resp.body else None
                except SdpError:
                    pass
                if addr is not None:
                    self.local.session.leg(tu.side).set_remote(addr.host, addr.port, addr.rtcp_port, addr.rtcp_host)
                continue
            if self.gone(tu.side):
                continue
            status = 408 if resp is None else resp.status
            reason = "Request Timeout" if resp is None else (resp.reason or "Failed")
            log.info("call %s: side %s refused to move its media to the node's relay: %s %s",
                     self.call.invite.call_id, tu.side, status, reason)
            what = "no answer to the re-INVITE moving" if tu.abandoned else "moving"
            failure = failure or ReanchorError(status if status in (408, 481, 488, 491) else 488,
                                               f"{reason} ({what} the call's media to the node's relay)")
        if failure is not None:
            raise failure
        self._check_alive()

    def _offer_to(self, side: str) -> bytes:
        """The other party's last SDP, at the local leg facing ``side``, our o= of ``side``."""
        other = "b" if side == "a" else "a"
        ip = self._ip(side)
        sd = rewrite_for_relay(self._heard(other), ip, self.local.session.leg(side).local_port)
        return self.anchor._origins[side].stamp_bytes(sd, ip)

    def _ip(self, side: str) -> str:
        from node.pbx import outgoing

        d = outgoing.dialog_of(self.call, side)
        advertise = self.local.advertise if self.local is not None else None
        return advertise or self.call.host.endpoint.local_host(d.flow if d is not None else self.call.a_flow)

    def _reinvite(self, side: str, body: bytes, late_2xx=None) -> _ReInvite | None:
        from node.pbx import outgoing

        d = outgoing.dialog_of(self.call, side)
        if d is None:
            return None
        ep = self.call.host.endpoint
        req = d.create_request("INVITE", ep.sent_by(d.flow), body=body, content_type="application/sdp",
                               extra=[("Allow", _ALLOW)])
        tu = _ReInvite(self.call, side, d, req, late_2xx if late_2xx is not None else self._moved_late)
        t = ep.send_request(req, d.flow)
        t.tu = tu
        return tu

    def _back_offer(self, side: str) -> bytes | None:
        """rtpengine's SDP for ``side`` again (our o= of that side one version up)."""
        sent = self.anchor.sent_sdp.get(side)
        if not sent:
            return None
        sd = parse(sent)
        addr = media_address(sd)
        ip = addr.host if addr is not None else self._ip(side)
        return self.anchor._origins[side].stamp_bytes(sd, ip)

    def _moved_late(self, tu: _ReInvite) -> None:
        """A party accepted the move's offer after it was given up (its 2xx crossed the
        CANCEL): while the call is still on rtpengine, re-INVITE it back there (its local
        leg is closed or about to be)."""
        call = self.call
        if call.state is not CallState.ANSWERED or call.media is not self.anchor:
            return
        log.info("call %s: side %s accepted the move too late: moving it back to rtpengine",
                 call.invite.call_id, tu.side)
        try:
            body = self._back_offer(tu.side)
        except SdpError as e:
            log.warning("cannot move side %s back to rtpengine: %s", tu.side, e)
            return
        if body:
            self._reinvite(tu.side, body, late_2xx=_ignore_late)

    # ------------------------------------------------------------------ phase 2
    async def commit(self, rewire: Callable[[], object] | None = None) -> None:
        """Make the local anchor the call's media, then run ``rewire`` (the feature's own
        synchronous re-wiring, if it must happen before anything else can interleave): if it
        raises, the call goes back to rtpengine (``rollback``) and the error propagates.
        Then the rtpengine session is deleted. ReanchorError when the call ended meanwhile."""
        if not self.alive():
            await self.rollback()  # the call ended meanwhile (its end closed the rtpengine anchor)
            raise ReanchorError(481, "Call/Transaction Does Not Exist (the call ended)")
        self.swap()
        if rewire is not None:
            try:
                rewire()
            except BaseException:
                self.unswap()
                await self.rollback()
                raise
        await self.finish()

    def alive(self) -> bool:
        """Whether the prepared call can still be swapped (not ended, media untouched)."""
        return self.call.media is self.anchor and self.call.state is self.state

    def swap(self) -> None:
        """Synchronously: the local anchor becomes the call's media (``alive()`` first)."""
        call = self.call
        assert self.local is not None
        self._unmark()
        call.reanchor = None
        call.media = self.local
        state = getattr(call, "hold", None)
        self._hold = None
        if getattr(state, "held_side", None) is not None and hasattr(state, "holder"):
            # rtpengine's music (node/pbx/media_rtpengine.py): the node plays it from now on,
            # so a feature's ``take_hold`` finds the held party as on a local call
            self._hold = state
            call.hold = None
            from node.pbx import hold

            heard = self.anchor.heard
            hold.on_offer_answered(call, state.holder, heard.get(state.holder, b""), heard.get(state.held_side, b""))

    def unswap(self) -> None:
        call = self.call
        if self._hold is not None:
            local_hold = getattr(call, "hold", None)
            if local_hold is not None and local_hold is not self._hold:
                local_hold.stop()
            call.hold = self._hold
        call.media = self.anchor

    async def finish(self) -> None:
        """After ``swap``: delete the rtpengine session (awaited: gone when this returns)."""
        call, anchor, local = self.call, self.anchor, self.local
        await anchor.hand_over(local)
        REANCHORS.labels("done").inc()
        log.info("call %s: media moved from rtpengine to the node's relay", call.invite.call_id)
        if getattr(call, "span", None) is not None:
            call.span.add_event("media-reanchored", {"hivepbx.reinvited": ",".join(self.moved)})

    async def rollback(self) -> None:
        """Back to rtpengine: re-INVITE the moved parties with rtpengine's SDP again."""
        call = self.call
        if getattr(call, "reanchor", None) is self:
            call.reanchor = None
        moved, self.moved = self.moved, []
        if self.local is None:
            return  # nothing was opened, nothing moved
        if moved and call.state is CallState.ANSWERED and call.media is self.anchor:
            tus = []
            for side in moved:
                try:
                    body = self._back_offer(side)
                except SdpError as e:
                    log.warning("cannot move side %s back to rtpengine: %s", side, e)
                    continue
                tu = self._reinvite(side, body, late_2xx=_ignore_late) if body else None
                if tu is not None:
                    tus.append(tu)
            for resp in await _answers(tus, answer_wait(self.call)):
                if resp is None or resp.status >= 300:
                    log.warning("call %s: a party refused to move back to rtpengine (%s)", call.invite.call_id,
                                None if resp is None else resp.status)
        self._unmark()
        if self.local is not None:
            self.local.close()
            self.local = None
        REANCHORS.labels("refused").inc()


def _ignore_late(tu: _ReInvite) -> None:
    """A late 2xx to a move back to rtpengine: it was ACKed; that is where the party belongs."""


async def prepare_all(*moves: Reanchor) -> None:
    """Prepare several calls' moves together; when one fails, all are rolled back."""
    results = await asyncio.gather(*(m.prepare() for m in moves), return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is None:
        return
    for m, r in zip(moves, results):
        if not isinstance(r, BaseException):
            await m.rollback()
    raise failure


async def make_local(call, sides: Iterable[str] = ("a", "b"), gone: Callable[[str], bool] | None = None) -> None:
    """Move ``call``'s media to the node's relay now (nothing when it is there already);
    ReanchorError when a party refused (the call stays on rtpengine)."""
    if not needed(call):
        return
    move = Reanchor(call, sides, gone)
    await move.prepare()
    await move.commit()


async def local_then(call, rewire: Callable[[], object], sides: Iterable[str] = ("a", "b")) -> None:
    """``rewire()`` on ``call`` with its media on the node's relay: moved first when it is in
    rtpengine (ReanchorError: refused, nothing changed), moved back when ``rewire`` raises."""
    if not needed(call):
        rewire()
        return
    move = Reanchor(call, sides)
    await move.prepare()
    await move.commit(rewire)


async def pull(call, side: str, old) -> None:
    """The party now on ``side`` of ``call`` (local relay) answered an offer of rtpengine's
    anchor ``old`` (the target of a semi-attended transfer, rung from a consultation call
    rtpengine relays): re-INVITE it onto the call's relay leg (the o= line it knows, next
    version), then delete ``old``'s session. Until it answers, the leg sends to its phone
    already. A refusal leaves it without audio: the call is hung up (no way back, its other
    party's media is on the node)."""
    from node.pbx import outgoing

    d = outgoing.dialog_of(call, side)
    local = call.media
    other = "b" if side == "a" else "a"
    ok = False
    if d is None or getattr(local, "session", None) is None:
        old.close()
        return
    try:
        ep = call.host.endpoint
        ip = local.advertise or ep.local_host(d.flow)
        leg = local.session.leg(side)
        addr = media_address(parse(outgoing.side_sdp(call, side)))
        if addr is not None:
            leg.set_remote(addr.host, addr.port, addr.rtcp_port, addr.rtcp_host)
        sd = rewrite_for_relay(outgoing.side_sdp(call, other), ip, leg.local_port)
        req = d.create_request("INVITE", ep.sent_by(d.flow), body=old._origins["b"].stamp_bytes(sd, ip),
                               content_type="application/sdp", extra=[("Allow", _ALLOW)])
        tu = _ReInvite(call, side, d, req)
        ep.send_request(req, d.flow).tu = tu
        (resp,) = await _answers([tu], answer_wait(call))
        if resp is not None and 200 <= resp.status < 300:
            ok = True
            addr = media_address(parse(resp.body)) if resp.body else None
            if addr is not None and call.media is local:
                leg.set_remote(addr.host, addr.port, addr.rtcp_port, addr.rtcp_host)
        else:
            log.warning("call %s: side %s refused to move its media to the node's relay (%s)",
                        call.invite.call_id, side, None if resp is None else resp.status)
    except SdpError as e:
        log.warning("call %s: side %s cannot be moved to the node's relay: %s", call.invite.call_id, side, e)
    finally:
        old.close()  # its rtpengine session
    REANCHORS.labels("done" if ok else "refused").inc()
    if not ok and call.state is CallState.ANSWERED and outgoing.dialog_of(call, side) is d:
        call.hangup_both("media-move-failed")
