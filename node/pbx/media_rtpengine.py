"""Plain bridged calls relayed by rtpengine (ng protocol) instead of the node's own relay.

Where a deployment needs more media capacity than the node's Python relay gives, the node
hands the RTP of plain bridged calls to one or more rtpengine instances and keeps in its own
engine only the calls that need it. ``RtpengineAnchors.open`` (the PBX service's media
factory in ``media_relay = "rtpengine"`` mode) decides per call:

* **recording** (node/pbx/recording.py) taps the node's relay legs, so a call whose parties'
  settings would record it ("always", or "on_demand": the key presses are read on the relay)
  stays local from the start. Every extension the plan may ring is looked at (a hunt group
  member's "always" counts), with recording's own precedence ("never" wins).
* **applications** (IVR, voicemail, conference, queues) never reach this factory: the node
  answers those calls with its media engine (node/pbx/app_call.py). A plan that falls to
  voicemail after ringing closes its anchor first (rtpengine session deleted).
* **music on hold**: the node does NOT keep rtpengine calls local for it (every tenant has
  music, so that would keep every call local). When a re-INVITE putting a party on hold is
  answered (node/pbx/hold.py), the node asks the call's rtpengine to ``play media`` — the
  tenant's file (node/pbx/hold.py ``music_file``), looped — to the held party and to
  ``block media`` of the holder; the resume sends ``stop media`` / ``unblock media``. The
  file is named by its path, so rtpengine must see the node's data directory (same host or
  a shared mount). An rtpengine that cannot play (built without media playback, file not
  there) leaves the hold as it is forwarded end to end: the holder's own music or silence.

An anchor speaks to rtpengine with one ng call per B2BUA call (its own id: the A leg's
Call-ID plus a random suffix, so an SBC sharing the rtpengine never collides with it) and
the tags ``a`` and ``b`` for the two sides, whatever party is on them. An SDP in a request is
an offer; in a response it answers a pending offer of the other side, else it is an offer
itself (late offer: INVITE without SDP). One ng command at a time per call (a lock), so a
retransmitted 2xx or a hangup during a command never interleaves with it; ``close`` deletes
the session once the command in flight has finished (never leaks a session).

Failure: an offer no instance answers (each timeout marks that instance down and tries the
next) is **rewritten by the node's own relay instead**: the call (or, mid-call, the
re-INVITE exchange, which re-describes both ends) moves to the local relay for good, counted
in ``hivepbx_media_relay_fallbacks``. An answer that fails (its instance died between offer
and answer) cannot be rescued that way: it raises RelayError (the call fails 500/503).

Features that re-wire a call's media inside the node (blind/attended transfer, park,
pickup, Replaces: node/pbx/outgoing.py) need the local relay's legs, so they first
**re-anchor** the call (node/pbx/reanchor.py): a local relay session is opened, each party
that stays gets a re-INVITE offering its local leg (the other party's last SDP, ``heard``;
same o= session, next version), and once all answered 2xx the rtpengine session is deleted
(``hand_over``: this anchor then delegates to the local one, which becomes ``call.media``);
then the feature runs as on a local call. A party refusing (491, 488, timeout) rolls the
others back to the SDP rtpengine gave them (``sent_sdp``): the call stays here, connected,
and the feature fails (REFER: final NOTIFY with the status; INVITE: 488). Why not
rtpengine's own re-routing commands: the parties' media must end on the node's relay legs
anyway (taps, chaining, music), and re-INVITEs are what every phone already handles.
A ringing call (pickup) needs no re-INVITE. A semi-attended transfer hands the target's
ringing fork, offered rtpengine's port, to the transferee: an early dialog cannot be
re-INVITEd, so the target is re-INVITEd onto the node's relay once it answers (``pull``).
The sync ``rewrite`` still raises ``NeedsLocalRelay`` for code that forgets to move first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from prometheus_client import Counter, Gauge

from node.pbx.media import ANCHORED, MediaAnchor, MediaAnchors, check_offer
from node.rtp_engine.errors import RelayError
from node.rtp_engine.ng_client import NgClient, NgError, NgInstances, NgTimeout
from node.sdp.anchoring import media_address
from node.sdp.errors import SdpError
from node.sdp.origin import LocalOrigin
from node.sdp.parser import parse
from observability import tracing as otrace

log = logging.getLogger("hivepbx.media")

__all__ = ["RtpengineAnchors", "RtpengineAnchor", "NeedsLocalRelay", "ng_addresses"]

NG_COMMANDS = Counter("hivepbx_media_ng_commands", "rtpengine ng commands sent by the node", ["command", "result"])
FALLBACKS = Counter("hivepbx_media_relay_fallbacks", "Calls moved to the local relay because no rtpengine answered")
NG_SESSIONS = Gauge("hivepbx_media_ng_sessions", "Calls whose media this node has in rtpengine now")

#: rtpengine flags for every offer/answer: rtpengine's address on both sides, no ICE
DEFAULT_OPTIONS: dict[str, Any] = {"replace": ["origin", "session-connection"], "ICE": "remove"}
#: ``play media`` loops the music this many times (8 s default tune: days)
_MOH_REPEAT = 100_000


def ng_addresses(values) -> list[tuple[str, int]]:
    """'host:port' strings (IPv6 as [addr]:port; port 2223 when left out) → (host, port);
    ValueError naming the bad one."""
    out = []
    for v in values:
        text = str(v).strip()
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ("" if not rest else "x")
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
        else:
            host, port = text, ""
        if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"rtpengine_ng: {v!r} is not host:port")
        out.append((host, int(port) if port else 2223))
    if not out:
        raise ValueError('media_relay = "rtpengine" needs rtpengine_ng (one or more "host:port")')
    return out


class NeedsLocalRelay(RelayError):
    """A feature wants to re-wire a call whose media rtpengine relays (module docstring)."""

    status_hint = 488


class RtpengineAnchors:
    """The media factory in rtpengine mode: an ``RtpengineAnchor`` per plain call, the local
    relay's anchor for calls that need the node's media (module docstring)."""

    def __init__(self, local: MediaAnchors, addresses: list[tuple[str, int]], *, timeout: float = 0.5,
                 retries: int = 1, down_time: float = 10.0, ping_interval: float = 5.0,
                 options: dict[str, Any] | None = None) -> None:
        self.local = local
        self.ping_interval = ping_interval
        self._pinger: asyncio.Task | None = None
        self.instances = NgInstances(addresses, timeout=timeout, retries=retries, down_time=down_time)
        self.options = dict(DEFAULT_OPTIONS if options is None else options)
        #: anchors whose rtpengine session may exist (deleted at close/shutdown)
        self.live: set[RtpengineAnchor] = set()
        self._tasks: set[asyncio.Task] = set()
        NG_SESSIONS.set_function(lambda: len(self.live))

    async def start(self) -> None:
        """Ping every instance now and every ``ping_interval`` s: one that does not answer is
        marked down (new calls skip it instead of waiting for its timeout), one that answers
        again is back."""
        up = await self.instances.check()
        if not up:
            log.warning("no rtpengine answers: calls use the local relay until one does")
        if self.ping_interval > 0:
            self._pinger = asyncio.get_running_loop().create_task(self._ping_loop())

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self.instances.check()
            except Exception:  # a health check must never die
                log.exception("rtpengine health check failed")

    async def open(self, call_id: str, tenant: str, call=None):
        reason = await self._keep_local(call)
        if reason is not None:
            return await self.local.open(call_id, tenant, call, reason=reason)
        anchor = RtpengineAnchor(self, call_id, tenant)
        body = getattr(getattr(call, "invite", None), "body", b"")
        if body:
            try:
                check_offer(body)
            except SdpError:
                return anchor  # the service refuses the offer (488): nothing sent to rtpengine
            if not await anchor.prepare_offer(body):
                return await self.local.open(call_id, tenant, call, reason="fallback")
        ANCHORED.labels("rtpengine", "plain").inc()
        return anchor

    async def _keep_local(self, call) -> str | None:
        """Why ``call`` needs the node's relay (None: it does not)."""
        if call is None:
            return None
        from node.pbx import recording

        try:
            config, tid = call.host.config, call.tenant.id
            a_ext = call.caller.extension.number if call.caller.extension is not None else None
            b_exts = set()
            if call.plan.callee_ext is not None:
                b_exts.add(call.plan.callee_ext.number)
            for attempt in call.plan.attempts:
                for target in attempt:
                    ext = recording._extension_of_target(target)
                    if ext:
                        b_exts.add(ext)
            a_doc = await config.get_object(tid, recording.KIND, a_ext) if a_ext else None
            b_docs = [await config.get_object(tid, recording.KIND, e) for e in sorted(b_exts)] or [None]
        except Exception:
            log.exception("recording settings unreadable: call kept on the local relay")
            return "recording"
        if any(recording.policy(a_doc, b)[0] != "off" for b in b_docs):
            return "recording"
        return None

    def spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Node shutdown: delete every session still in rtpengine, then close the sockets."""
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        for anchor in list(self.live):
            anchor.close()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        self.instances.close()

    async def send(self, client: NgClient, command: str, **args: Any) -> dict[str, Any]:
        """One ng command, counted (and a span when tracing); NgTimeout marks the instance down."""
        span = otrace.tracer("hivepbx.media").start_span(
            f"rtpengine.{command}", attributes={"sip.call_id": str(args.get("call_id", "")),
                                                "rtpengine": f"{client.host}:{client.port}"},
        ) if otrace.enabled() else None
        result = "ok"
        try:
            return await client.command(command, **args)
        except NgTimeout:
            result = "timeout"
            self.instances.mark_down(client)
            raise
        except BaseException:  # NgError, or the command cancelled
            result = "error"
            raise
        finally:
            NG_COMMANDS.labels(command, result).inc()
            if span is not None:
                span.set_attribute("result", result)
                span.end()


class _RemoteHold:
    """``call.hold`` of an rtpengine call (node/pbx/hold.py reads ``held_side``, calls ``stop``)."""

    __slots__ = ("anchor", "held_side", "holder")

    def __init__(self, anchor: "RtpengineAnchor") -> None:
        self.anchor = anchor
        self.held_side: str | None = None
        self.holder: str | None = None

    def stop(self) -> None:
        if self.held_side is not None:
            held, holder = self.held_side, self.holder
            self.held_side = self.holder = None
            if not self.anchor.closed and self.anchor.local is None:
                self.anchor.factory.spawn(self.anchor._music_off(held, holder))


class RtpengineAnchor:
    """One call's media in rtpengine (module docstring), or in the local relay after a fallback."""

    where = "rtpengine"
    needs_await = True

    def __init__(self, factory: RtpengineAnchors, call_id: str, tenant: str) -> None:
        self.factory = factory
        self.call_id = call_id
        self.tenant = tenant
        self.ng_call_id = f"{call_id}-hp{secrets.token_hex(4)}"
        self.advertise = factory.local.advertise
        #: the local relay's anchor once rtpengine failed us (everything goes there then)
        self.local: MediaAnchor | None = None
        self.client: NgClient | None = None
        #: instances that were sent an offer (each may hold a session to delete)
        self._touched: list[NgClient] = []
        #: the side whose offer awaits an answer
        self._offer_from: str | None = None
        self._established = False
        #: the caller's offer and rtpengine's version of it (``prepare_offer``)
        self._prepared: tuple[bytes, bytes] | None = None
        self._origins = {"a": LocalOrigin(), "b": LocalOrigin()}
        #: where rtpengine told each side to send (host, port), from the SDP sent to that side
        self.sent_to: dict[str, tuple[str, int]] = {}
        #: the last SDP each side gave and the last one it was sent (node/pbx/reanchor.py
        #: offers the first to the other side, and the second to go back to rtpengine)
        self.heard: dict[str, bytes] = {}
        self.sent_sdp: dict[str, bytes] = {}
        self._lock = asyncio.Lock()
        self.closed = False

    def __repr__(self) -> str:
        return f"<RtpengineAnchor {self.ng_call_id} on {self.client}>"

    @property
    def session(self):
        """The local relay session after a fallback; None while rtpengine relays."""
        return None if self.local is None else self.local.session

    def check_offer(self, body: bytes) -> None:
        check_offer(body)

    async def prepare_offer(self, body: bytes) -> bool:
        """The caller's offer through rtpengine, before any leg is rung (``initial_offer``
        then gives it to every fork synchronously); False when no rtpengine answered."""
        async with self._lock:
            out = await self._offer("a", "b", body.decode("utf-8", "replace"))
            if out is None:
                FALLBACKS.inc()
                log.warning("no rtpengine answered for call %s: it uses the node's relay", self.call_id)
                self.closed = True
                self._delete_everywhere()
                return False
            self._offer_from = "a"
            self.heard["a"] = body
            self._prepared = (body, self._stamp("b", out))
            return True

    def initial_offer(self, body: bytes, local_ip: str) -> bytes:
        if self.local is not None:
            return self.local.initial_offer(body, local_ip)
        if self._prepared is None or self._prepared[0] != body:
            raise RelayError("the caller's offer was not prepared with rtpengine")
        return self._prepared[1]

    def rewrite(self, from_side: str, body: bytes, local_ip: str) -> bytes:
        if self.local is not None:
            return self.local.rewrite(from_side, body, local_ip)
        raise NeedsLocalRelay("this call's media is relayed by rtpengine: the feature needs the node's relay")

    async def rewrite_async(self, from_side: str, body: bytes, local_ip: str, *, offer: bool | None = None) -> bytes:
        """SDP from ``from_side`` → what the other side gets. ``offer``: True for SDP in a
        request, None to tell from the exchange (a response answers the other's offer)."""
        if self.closed:
            raise RelayError("the call's media is closed")
        other = "b" if from_side == "a" else "a"
        async with self._lock:
            if self.local is not None:
                return self.local.rewrite(from_side, body, local_ip)
            is_offer = offer if offer is not None else self._offer_from != other
            sdp = body.decode("utf-8", "replace")
            self.heard[from_side] = body
            if is_offer:
                out = await self._offer(from_side, other, sdp)
                if out is None:
                    return await self._fall_back(from_side, body, local_ip)
                self._offer_from = from_side
            else:
                assert self.client is not None
                try:
                    reply = await self.factory.send(self.client, "answer", call_id=self.ng_call_id, from_tag=other,
                                                    to_tag=from_side, sdp=sdp, **self.factory.options)
                except (NgTimeout, NgError) as e:
                    raise RelayError(f"rtpengine answer failed: {e}") from None
                out = _sdp_of(reply)
                self._established = True
            return self._stamp(other, out)

    async def _offer(self, from_side: str, other: str, sdp: str) -> str | None:
        """rtpengine's SDP for ``other``; None when no instance answered."""
        ids = self.factory.instances
        order = ids.candidates(self.call_id)
        if self.client is not None and ids.is_up(self.client):
            order = [self.client] + [c for c in order if c is not self.client]
        for client in order:
            if not ids.is_up(client):
                continue  # marked down (timed out lately): the local relay serves meanwhile
            if client not in self._touched:
                self._touched.append(client)
            self.factory.live.add(self)
            try:
                reply = await self.factory.send(
                    client, "offer", call_id=self.ng_call_id, from_tag=from_side,
                    to_tag=other if self._established else None, sdp=sdp, **self.factory.options)
            except NgTimeout:
                log.warning("rtpengine %s:%d did not answer the offer of %s", client.host, client.port, self.call_id)
                continue
            except NgError as e:
                log.warning("rtpengine %s:%d refused the offer of %s: %s", client.host, client.port, self.call_id,
                            e.reason)
                continue
            try:
                out = _sdp_of(reply)
            except RelayError as e:
                log.warning("%s", e)
                continue
            if self.client is not None and client is not self.client:
                log.info("call %s media moved to rtpengine %s:%d", self.call_id, client.host, client.port)
            self.client = client
            return out
        return None

    async def _fall_back(self, from_side: str, body: bytes, local_ip: str) -> bytes:
        FALLBACKS.inc()
        log.warning("no rtpengine answered for call %s: its media moves to the node's relay", self.call_id)
        self.local = await self.factory.local.open(self.call_id, self.tenant, reason="fallback")
        if self.closed:  # hung up while the relay ports were opened
            self.local.close()
            raise RelayError("the call's media is closed")
        self._delete_everywhere()
        return self.local.rewrite(from_side, body, local_ip)

    def _stamp(self, to_side: str, sdp: str) -> bytes:
        try:
            sd = parse(sdp.encode())
        except SdpError as e:
            raise RelayError(f"rtpengine returned unusable SDP: {e}") from None
        addr = media_address(sd)
        ip = addr.host if addr is not None else (self.advertise or "0.0.0.0")
        if addr is not None:
            self.sent_to[to_side] = (addr.host, addr.port)
        out = self.sent_sdp[to_side] = self._origins[to_side].stamp_bytes(sd, ip)
        return out

    # ------------------------------------------------------------------ re-anchoring
    async def hand_over(self, local: MediaAnchor) -> None:
        """The call's media now flows through ``local`` (node/pbx/reanchor.py moved every
        party there): delete the rtpengine session (awaited, so it is gone when this
        returns); this anchor delegates to ``local`` from now on and never sends again."""
        if self.local is not None:
            return
        local._origins = self._origins  # same o= session per side, versions go on (RFC 3264 §8)
        self.local = local
        touched, self._touched = self._touched, []
        await self._delete(touched)

    # ------------------------------------------------------------------ music on hold
    def remote_hold(self, call, offerer: str, hold: bool | None) -> None:
        """A hold/resume offer of ``offerer`` was answered 2xx (node/pbx/hold.py)."""
        if hold is None or self.closed or self.local is not None or self.client is None:
            return
        state = getattr(call, "hold", None)
        if not isinstance(state, _RemoteHold):
            state = call.hold = _RemoteHold(self)
        held = "b" if offerer == "a" else "a"
        if not hold:
            if state.held_side == held:
                state.stop()
                log.info("call %s resumed: music off", getattr(call, "id", "?"))
            return
        if state.held_side == held:
            return
        state.stop()
        from node.pbx import hold as hold_mod

        try:
            path = str(hold_mod.music_file(call.host.cfg.data_dir, call.tenant.id).resolve())
        except (OSError, ValueError) as e:
            log.info("no music on hold for call %s: %s", getattr(call, "id", "?"), e)
            return
        state.held_side, state.holder = held, offerer
        hold_mod.HOLDS.inc()
        self.factory.spawn(self._music_on(held, offerer, path))
        log.info("call %s: side %s holds, rtpengine plays music to side %s", getattr(call, "id", "?"), offerer, held)

    async def _music_on(self, held: str, holder: str, path: str) -> None:
        await self._quiet_command("play media", from_tag=held, file=path, repeat_times=_MOH_REPEAT)
        await self._quiet_command("block media", from_tag=holder)

    async def _music_off(self, held: str, holder: str | None) -> None:
        await self._quiet_command("stop media", from_tag=held)
        if holder is not None:
            await self._quiet_command("unblock media", from_tag=holder)

    async def _quiet_command(self, command: str, **args: Any) -> None:
        """A nicety's command: failures are logged, never raised (the call goes on)."""
        async with self._lock:
            if self.closed or self.client is None or self.local is not None:
                return
            try:
                await self.factory.send(self.client, command, call_id=self.ng_call_id, **args)
            except (NgTimeout, NgError) as e:
                log.info("rtpengine %s for call %s failed: %s", command, self.call_id, e)

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.local is not None:
            self.local.close()
        self._delete_everywhere()

    def _delete_everywhere(self) -> None:
        touched, self._touched = self._touched, []
        if touched:
            self.factory.spawn(self._delete(touched))
        else:
            self.factory.live.discard(self)

    async def _delete(self, clients: list[NgClient]) -> None:
        # after the command in flight (the lock): a delete overtaking its offer would leak
        async with self._lock:
            for client in clients:
                try:
                    await self.factory.send(client, "delete", call_id=self.ng_call_id, delete_delay=0)
                except NgError as e:
                    if "Unknown call" not in e.reason:
                        log.info("rtpengine delete of %s failed: %s", self.call_id, e)
                except NgTimeout:
                    pass  # a dead instance: its own timeout frees the session
        self.factory.live.discard(self)


def _sdp_of(reply: dict[str, Any]) -> str:
    sdp = reply.get("sdp")
    if not isinstance(sdp, str) or not sdp:
        raise RelayError("rtpengine returned no SDP")
    return sdp
