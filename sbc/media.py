"""Media anchoring at the edge through rtpengine (ng protocol).

The SBC keeps the nodes' and the phones' media apart: every SDP crossing it is rewritten by
an rtpengine so both sides send RTP to rtpengine's ports, never to each other (topology
hiding, NAT traversal, one place to police media).

Seam with the SBC pipeline (message level)::

    anchor = MediaAnchor({"default": [("10.0.0.5", 2223)], "eu": [...]})
    await anchor.start()                          # health pings of every instance
    body = await anchor.rewrite(msg, tenant=t)    # any request/response about to be forwarded
    await anchor.close()

``rewrite`` (also reachable as ``offer(msg, direction)``/``answer(msg, direction)`` and as
``on_request(req)``/``on_response(req, resp)``) decides offer or answer from the call's
state, sets the new SDP on ``msg`` and returns it (None when there was nothing to anchor).
It anchors INVITE/UPDATE offers, 1xx/2xx answers, late offers (INVITE without SDP, offer in
the 200, answer in the ACK), and deletes the call's media on BYE, CANCEL and the failure of
an initial INVITE (``delete(call_id)`` does it directly). Re-INVITEs (hold:
a=sendonly/inactive; resume: a=sendrecv, from either side) go to the same rtpengine
instance and keep the ports the peers already use, so hold and resume stay consistent. A
relay that cannot be reached raises ``MediaUnavailable`` (a RelayError, ``status_hint``
503): answer the call with it rather than forward SDP that bypasses the relay.

``offer_sdp``/``answer_sdp`` take SDP bytes and tags directly (rtpengine's own terms).

Media relay sets: named groups of rtpengine instances (seed: reserve capacity or keep media
in a region); ``assign(tenant, set_name)`` puts a tenant's calls on a set, others use the
default set. Within a set a call sticks to one instance (picked by a hash of the Call-ID);
an instance that misses its ping or times out a command is marked down and new calls (and
the next offer of a call it held) go to another instance of the set.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from node.rtp_engine.errors import RelayError
from node.rtp_engine.ng_client import NgClient, NgError, NgTimeout
from node.sip.errors import SipError
from node.sip.message import Message, Request, Response
from observability import tracing as otrace
from sbc.protection.table import LruTable

log = logging.getLogger("sbc.media")

__all__ = ["MediaAnchor", "MediaUnavailable", "RelaySet"]

MEDIA_OPS = Counter("hivepbx_sbc_media_commands", "rtpengine commands sent by the SBC", ["command", "result"])
MEDIA_SESSIONS = Gauge("hivepbx_sbc_media_sessions", "Calls whose media the SBC anchors in rtpengine")
RELAYS_DOWN = Gauge("hivepbx_sbc_media_relays_down", "rtpengine instances marked down")
_COMMANDS = ("offer", "answer", "delete", "ping")
_RESULTS = ("ok", "error", "timeout")
_OPS = {(c, r): MEDIA_OPS.labels(c, r) for c in _COMMANDS for r in _RESULTS}

#: rtpengine flags for every offer/answer: hide both sides' addresses, drop ICE candidates
DEFAULT_OPTIONS: dict[str, Any] = {"replace": ["origin", "session-connection"], "ICE": "remove"}


class MediaUnavailable(RelayError):
    """No rtpengine of the call's set answered: the call cannot get media (503)."""

    status_hint = 503


@dataclass(eq=False)
class _Instance:
    client: NgClient
    down_until: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.client.host}:{self.client.port}"


class RelaySet:
    """A named group of rtpengine instances with failover between them."""

    def __init__(self, name: str, instances: list[NgClient], *, down_time: float, clock: Callable[[], float]) -> None:
        if not instances:
            raise ValueError(f"media relay set {name!r} has no rtpengine instance")
        self.name = name
        self.instances = [_Instance(c) for c in instances]
        self.down_time = down_time
        self.clock = clock

    def candidates(self, call_id: str) -> list[_Instance]:
        """Healthy instances first, starting from the call's own (stable across calls to this)."""
        n = len(self.instances)
        start = zlib.crc32(call_id.encode()) % n
        ordered = [self.instances[(start + i) % n] for i in range(n)]
        now = self.clock()
        return [i for i in ordered if i.down_until <= now] + [i for i in ordered if i.down_until > now]

    def mark_down(self, inst: _Instance) -> None:
        if inst.down_until <= self.clock():
            log.warning("rtpengine %s of media relay set %s is down", inst.name, self.name)
        inst.down_until = self.clock() + self.down_time

    def mark_up(self, inst: _Instance) -> None:
        if inst.down_until > self.clock():
            log.info("rtpengine %s of media relay set %s is back", inst.name, self.name)
        inst.down_until = 0.0

    def is_up(self, inst: _Instance) -> bool:
        return inst.down_until <= self.clock()


@dataclass(slots=True)
class _Session:
    relay_set: RelaySet
    instance: _Instance
    #: INVITE/UPDATE CSeq numbers whose request carried an offer
    offers_in_request: set[int] = field(default_factory=set)
    #: the last offer came in a response (late offer): the ACK/PRACK carries the answer
    late_offer: bool = False
    #: a 2xx answered the initial INVITE: later failures are re-INVITEs that keep the call
    established: bool = False


def _has_sdp(msg: Message) -> bool:
    if not msg.body:
        return False
    try:
        ct = msg.content_type
    except SipError:
        return False
    return ct == "application/sdp"


def _tags(msg: Message) -> tuple[str, str | None]:
    return msg.from_.tag or "", msg.to.tag


def _hostport(text: object, key: str) -> tuple[str, int]:
    t = str(text)
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            host = ""
    elif t.count(":") == 1:
        host, _, port = t.partition(":")
    else:
        host, port = t, ""
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"{key}: {text!r} is not host[:port]")
    return host, int(port) if port else 2223


class MediaAnchor:
    """Anchors each call's media in one rtpengine of the tenant's relay set (module docstring)."""

    def __init__(
        self,
        relay_sets: dict[str, Iterable[tuple[str, int]]],
        *,
        default_set: str = "default",
        options: dict[str, Any] | None = None,
        timeout: float = 0.5,
        retries: int = 2,
        ping_interval: float = 5.0,
        down_time: float = 10.0,
        max_sessions: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if default_set not in relay_sets:
            raise ValueError(f"default media relay set {default_set!r} is not among {sorted(relay_sets)}")
        self.sets = {
            name: RelaySet(name, [NgClient(h, p, timeout=timeout, retries=retries) for h, p in addrs],
                           down_time=down_time, clock=clock)
            for name, addrs in relay_sets.items()
        }
        self.default_set = default_set
        self.options = dict(DEFAULT_OPTIONS if options is None else options)
        self.ping_interval = ping_interval
        self._tenant_sets: dict[str, str] = {}
        self._sessions: LruTable[str, _Session] = LruTable(max_sessions)
        self._pinger: asyncio.Task | None = None
        MEDIA_SESSIONS.set_function(lambda: len(self._sessions))
        RELAYS_DOWN.set_function(lambda: sum(not s.is_up(i) for s in self.sets.values() for i in s.instances))

    @classmethod
    def from_config(cls, section: dict, **kw: Any) -> "MediaAnchor | None":
        """From the SBC config's ``[media]`` table; None when it names no rtpengine::

            [media]
            rtpengine = ["10.0.0.5:2223"]                 # the default relay set
            sets = { eu = ["10.1.0.5:2223", "10.1.0.6"] } # more sets (port 2223 when left out)
            tenants = { "acme.example" = "eu" }           # a tenant's calls on a set (seed:
                                                          # "Media relay set" per client)
            timeout = 0.5                                 # ... retries, ping_interval, down_time

        Every wrong value is a ValueError naming its key.
        """
        if not isinstance(section, dict):
            raise ValueError("media: expected a table")
        known = {"rtpengine", "sets", "tenants", "default_set", "timeout", "retries", "ping_interval", "down_time"}
        unknown = set(section) - known
        if unknown:
            raise ValueError(f"media: unknown setting(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        sets = section.get("sets", {})
        if not isinstance(sets, dict):
            raise ValueError('media.sets: expected a table of name = ["host:port", ...]')
        sets = dict(sets)
        if "rtpengine" in section:
            sets[section.get("default_set", "default")] = section["rtpengine"]
        if not sets:
            return None
        parsed: dict[str, list[tuple[str, int]]] = {}
        for name, addrs in sets.items():
            key = "media.rtpengine" if addrs is section.get("rtpengine") else f"media.sets.{name}"
            if not isinstance(addrs, list) or not addrs:
                raise ValueError(f'{key}: expected a non-empty list of "host:port"')
            parsed[name] = [_hostport(a, key) for a in addrs]
        opts: dict[str, Any] = {}
        for k, typ in (("default_set", str), ("timeout", float), ("retries", int), ("ping_interval", float),
                       ("down_time", float)):
            if k in section:
                v = section[k]
                if isinstance(v, bool) or not isinstance(v, (int, float) if typ is float else typ):
                    raise ValueError(f"media.{k}: expected a {'number' if typ is float else typ.__name__}, not {v!r}")
                if typ is not str and v < 0:
                    raise ValueError(f"media.{k}: must be >= 0")
                opts[k] = v
        opts.update(kw)
        tenants = section.get("tenants", {})
        if not isinstance(tenants, dict) or not all(isinstance(v, str) for v in tenants.values()):
            raise ValueError('media.tenants: expected a table of tenant = "relay set name"')
        anchor = cls(parsed, **opts)
        for tenant, set_name in tenants.items():
            try:
                anchor.assign(tenant, set_name)
            except ValueError as e:
                raise ValueError(f"media.tenants.{tenant}: {e}") from None
        return anchor

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Ping every instance now, then every ``ping_interval`` in the background."""
        await self.check_health()
        if self.ping_interval > 0 and self._pinger is None:
            self._pinger = asyncio.create_task(self._ping_loop(), name="sbc-media-ping")

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            try:
                await self._pinger
            except asyncio.CancelledError:
                pass
            self._pinger = None
        for s in self.sets.values():
            for inst in s.instances:
                inst.client.close()

    async def check_health(self) -> None:
        async def one(rs: RelaySet, inst: _Instance) -> None:
            ok = await inst.client.ping()
            _OPS["ping", "ok" if ok else "timeout"].inc()
            rs.mark_up(inst) if ok else rs.mark_down(inst)

        await asyncio.gather(*(one(rs, i) for rs in self.sets.values() for i in rs.instances))

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self.check_health()
            except Exception:  # a health check must never die: log and go on
                log.exception("rtpengine health check failed")

    # ------------------------------------------------------------------ tenants
    def assign(self, tenant: str, set_name: str | None) -> None:
        """Put ``tenant``'s new calls on relay set ``set_name`` (None: back to the default)."""
        if set_name is None:
            self._tenant_sets.pop(tenant, None)
            return
        if set_name not in self.sets:
            raise ValueError(f"unknown media relay set {set_name!r} (known: {', '.join(sorted(self.sets))})")
        self._tenant_sets[tenant] = set_name

    def set_for(self, tenant: str | None) -> RelaySet:
        name = self._tenant_sets.get(tenant, self.default_set) if tenant is not None else self.default_set
        return self.sets[name]

    def instance_of(self, call_id: str) -> tuple[str, int] | None:
        """Which rtpengine holds ``call_id``'s media (for tests and diagnostics)."""
        s = self._sessions.peek(call_id)
        return None if s is None else (s.instance.client.host, s.instance.client.port)

    # ------------------------------------------------------------------ low level
    async def offer_sdp(self, call_id: str, from_tag: str, sdp: bytes, *, to_tag: str | None = None,
                    tenant: str | None = None, **extra: Any) -> bytes:
        """Rewrite an offer from the party tagged ``from_tag``; a new call picks an instance."""
        s = self._sessions.get(call_id)
        if s is None:
            rs = self.set_for(tenant)
            s = _Session(rs, rs.candidates(call_id)[0])
            self._sessions.put(call_id, s)
        elif not s.relay_set.is_up(s.instance):
            # its instance died: the re-offer builds the call again on a healthy one
            s.instance = s.relay_set.candidates(call_id)[0]
        args = dict(self.options, **extra)
        reply = await self._send(s, call_id, "offer", dict(call_id=call_id, from_tag=from_tag, to_tag=to_tag,
                                                             sdp=sdp.decode("utf-8", "replace"), **args), failover=True)
        return reply["sdp"].encode()

    async def answer_sdp(self, call_id: str, from_tag: str, to_tag: str, sdp: bytes, **extra: Any) -> bytes:
        """Rewrite the answer of ``to_tag`` to the offer of ``from_tag``."""
        s = self._sessions.get(call_id)
        if s is None:
            raise MediaUnavailable(f"no media session for call {call_id} (answer without an offer)")
        args = dict(self.options, **extra)
        reply = await self._send(s, call_id, "answer", dict(call_id=call_id, from_tag=from_tag, to_tag=to_tag,
                                                              sdp=sdp.decode("utf-8", "replace"), **args), failover=False)
        return reply["sdp"].encode()

    async def delete(self, call_id: str, from_tag: str | None = None) -> None:
        """Free the call's media now (idempotent; a relay that is gone times it out itself).
        ``from_tag`` is accepted for symmetry with rtpengine's delete; the whole call goes."""
        s = self._sessions.pop(call_id)
        if s is None:
            return
        try:
            await self._send(s, call_id, "delete", dict(call_id=call_id, delete_delay=0), failover=False)
        except RelayError as e:
            log.info("rtpengine delete of %s failed: %s", call_id, e)

    async def _send(self, s: _Session, call_id: str, command: str, args: dict, *, failover: bool) -> dict:
        tried = 0
        candidates = [s.instance] + [i for i in s.relay_set.candidates(call_id) if i is not s.instance]
        for inst in candidates:
            if tried and not (failover and s.relay_set.is_up(inst)):
                break
            tried += 1
            span = otrace.tracer("sbc.media").start_span(
                f"rtpengine.{command}", attributes={"call_id": call_id, "rtpengine": inst.name,
                                                    "relay_set": s.relay_set.name}) if otrace.enabled() else None
            try:
                reply = await inst.client.command(command, **args)
            except NgTimeout:
                _OPS[command, "timeout"].inc()
                s.relay_set.mark_down(inst)
                if span is not None:
                    span.set_attribute("result", "timeout")
                    span.end()
                continue
            except NgError as e:
                _OPS[command, "error"].inc()
                if span is not None:
                    span.set_attribute("result", "error")
                    span.set_attribute("error_reason", e.reason)
                    span.end()
                if command == "delete" and "Unknown call" in e.reason:
                    return {"result": "ok"}
                raise MediaUnavailable(str(e)) from None
            _OPS[command, "ok"].inc()
            if span is not None:
                span.set_attribute("result", "ok")
                span.end()
            s.instance = inst
            if command != "delete" and not isinstance(reply.get("sdp"), str):
                raise MediaUnavailable(f"rtpengine {inst.name} returned no SDP to {command}")
            return reply
        raise MediaUnavailable(f"no rtpengine of media relay set {s.relay_set.name} answered {command} for {call_id}")

    # ------------------------------------------------------------------ message level
    async def rewrite(self, msg: Message, *, tenant: str | None = None, initial: bool | None = None) -> bytes | None:
        """Anchor ``msg``'s SDP: returns the new body (also set on ``msg``) or None when the
        message carries no SDP to anchor. Decides offer or answer from the call's state, so
        a late offer (SDP first in the 200, answer in the ACK) needs nothing from the caller.
        BYE, CANCEL and a failed initial INVITE delete the call's media. ``initial``: the
        response answers the dialog-creating INVITE (None: guessed from the call's state)."""
        if not tenant and self._tenant_sets:
            tenant = self._tenant_of(msg)
        if isinstance(msg, Request):
            return await self._request(msg, tenant)
        if isinstance(msg, Response):
            return await self._response(msg, tenant, initial)
        return None

    def _tenant_of(self, msg: Message) -> str | None:
        """A tenant is its SIP domain: when the caller could not say (a node's request to a
        phone), the From or To domain that has a relay set assigned names it."""
        try:
            for na in (msg.from_, msg.to):
                host = na.uri.host_bare if na.uri.is_sip else ""
                if host in self._tenant_sets:
                    return host
        except SipError:
            pass
        return None

    async def on_request(self, req: Request, *, tenant: str | None = None) -> None:
        """Rewrite ``req``'s SDP in place (offer or late answer); delete media on BYE/CANCEL."""
        await self.rewrite(req, tenant=tenant)

    async def on_response(self, req: Request, resp: Response, *, tenant: str | None = None) -> None:
        """Rewrite ``resp`` (to ``req``) in place: answer, or late offer; delete on failure."""
        try:
            initial = req.method == "INVITE" and req.to.tag is None
        except SipError:
            initial = None
        await self.rewrite(resp, tenant=tenant, initial=initial)

    async def offer(self, msg: Message, direction: str | None = None, *, tenant: str | None = None) -> bytes | None:
        """Pipeline hook for a message the SBC believes carries an offer (see ``rewrite``)."""
        return await self.rewrite(msg, tenant=tenant)

    async def answer(self, msg: Message, direction: str | None = None, *, tenant: str | None = None) -> bytes | None:
        """Pipeline hook for a message the SBC believes carries an answer (see ``rewrite``)."""
        return await self.rewrite(msg, tenant=tenant)

    async def _request(self, req: Request, tenant: str | None) -> bytes | None:
        method = req.method
        if method == "BYE" or method == "CANCEL":
            await self.delete(req.call_id)
            return None
        if not _has_sdp(req):
            return None
        call_id = req.call_id
        from_tag, to_tag = _tags(req)
        body: bytes | None = None
        if method in ("INVITE", "UPDATE"):
            body = await self.offer_sdp(call_id, from_tag, req.body, to_tag=to_tag, tenant=tenant)
            s = self._sessions.peek(call_id)
            if s is not None:
                s.offers_in_request.add(req.cseq.seq)
                s.late_offer = False
        elif method in ("ACK", "PRACK"):
            s = self._sessions.peek(call_id)
            if s is not None and s.late_offer and to_tag is not None:
                # the offer came from the callee (To side): the answer is the caller's
                body = await self.answer_sdp(call_id, to_tag, from_tag, req.body)
                s.late_offer = False
        if body is not None:
            req.body = body
        return body

    async def _response(self, resp: Response, tenant: str | None, initial: bool | None) -> bytes | None:
        status = resp.status
        try:
            cseq = resp.cseq
        except SipError:
            return None
        call_id = resp.call_id
        s = self._sessions.peek(call_id)
        if cseq.method == "INVITE" and status >= 300:
            if initial is None:
                initial = s is not None and not s.established
            if initial:
                await self.delete(call_id)
            elif s is not None:
                s.offers_in_request.discard(cseq.seq)
            return None
        if cseq.method not in ("INVITE", "UPDATE") or status < 101 or status >= 300 or not _has_sdp(resp):
            return None
        from_tag, to_tag = _tags(resp)
        if to_tag is None:
            return None  # an SDP answer without a To tag cannot name its side: leave it
        body: bytes
        if s is not None and cseq.seq in s.offers_in_request:
            body = await self.answer_sdp(call_id, from_tag, to_tag, resp.body)
            if status >= 200:
                s.offers_in_request.discard(cseq.seq)
                s.established = True
        elif cseq.method == "INVITE":
            # late offer: the INVITE had no SDP, the callee (To side) offers in its response
            body = await self.offer_sdp(call_id, to_tag, resp.body, to_tag=from_tag, tenant=tenant)
            s = self._sessions.peek(call_id)
            if s is not None:
                s.late_offer = True
                if status >= 200:
                    s.established = True
        else:
            return None
        resp.body = body
        return body
