"""The asyncio shell around the sans-I/O SIP core (aioquic's protocol.py pattern).

Bytes in → ``TransactionLayer.receive(msg, flow, now)`` → events to the transaction user →
``datagrams_to_send()`` out → one ``call_at`` re-armed on ``get_timer()``. Only this
module reads the loop clock.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

from node.sip.errors import RemoteProtocolError
from node.sip.flow import Flow
from node.sip.message import Message, Request, Response, make_response
from node.sip.transaction import TransactionLayer
from node.transport.sockets import SipTransports

log = logging.getLogger("hivepbx.sip")

_WILDCARDS = ("0.0.0.0", "::", "")


class SipEndpoint:
    def __init__(
        self,
        layer: TransactionLayer,
        transports: SipTransports | None = None,
        advertise_address: str | None = None,
        on_event: Callable[[object], None] | None = None,
        on_parse_error: Callable[[RemoteProtocolError, Flow], None] | None = None,
    ) -> None:
        self.layer = layer
        self.transports = transports
        self.advertise_address = advertise_address
        self.on_event = on_event or (lambda ev: None)
        self.on_parse_error = on_parse_error
        self._loop = asyncio.get_event_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._src_cache: dict[str, str] = {}

    # --- input -------------------------------------------------------------------
    def message_received(self, item: Message | RemoteProtocolError, flow: Flow) -> None:
        if isinstance(item, RemoteProtocolError):
            self._reject_malformed(item, flow)
            return
        try:
            self.layer.receive(item, flow, self._loop.time())
        except RemoteProtocolError as e:
            self._reject_malformed(e, flow)
            return
        self.process()

    def _reject_malformed(self, err: RemoteProtocolError, flow: Flow) -> None:
        if self.on_parse_error:
            self.on_parse_error(err, flow)
        msg = getattr(err, "message", None)
        log.info("malformed SIP from %s:%s: %s", flow.remote[0], flow.remote[1], err.reason)
        if not isinstance(msg, Request) or msg.method == "ACK":
            return  # a response or an ACK is never answered (RFC 3261 §8.2)
        try:
            msg.vias  # noqa: B018 - need a Via to route the answer back
            status = err.status_hint if 400 <= err.status_hint < 700 else 400
            resp = make_response(msg, status, _reason(status, err.reason))
        except RemoteProtocolError:
            return  # cannot even route an answer: drop (counted by on_parse_error)
        self.layer.send_stateless(resp, flow)
        self.flush()

    # --- the loop ----------------------------------------------------------------
    def process(self) -> None:
        """Drain events to the TU, then flush datagrams and re-arm the timer."""
        layer = self.layer
        on_event = self.on_event
        ev = layer.next_event()
        while ev is not None:
            try:
                on_event(ev)
            except Exception:
                log.exception("transaction user failed on %s", type(ev).__name__)
            ev = layer.next_event()
        self.flush()

    def flush(self) -> None:
        send = self.transports.send if self.transports else None
        for data, flow in self.layer.datagrams_to_send():
            if send is not None:
                try:
                    send(data, flow)
                except OSError as e:
                    log.info("send to %s failed: %s", flow.remote, e)
        self._arm()

    def _arm(self) -> None:
        at = self.layer.get_timer()
        if at is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= at:
            return  # already armed earlier; it re-arms when it fires
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        self.layer.handle_timer(self._loop.time())
        self.process()

    def now(self) -> float:
        return self._loop.time()

    # --- output helpers for the TU ---------------------------------------------------
    def send_request(self, req: Request, flow: Flow):
        txn = self.layer.send_request(req, flow, self._loop.time())
        self.flush()
        return txn

    def send_response(self, resp: Response) -> None:
        self.layer.send_response(resp, self._loop.time())
        self.flush()

    def send_stateless(self, msg: Message, flow: Flow) -> None:
        self.layer.send_stateless(msg, flow)
        self.flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # --- addressing ------------------------------------------------------------------
    def local_host(self, flow: Flow) -> str:
        """The address peers should use to reach us on ``flow`` (Via, Contact, SDP)."""
        host = flow.local[0]
        if host not in _WILDCARDS:
            return host
        if self.advertise_address:
            return self.advertise_address
        remote = flow.remote[0]
        src = self._src_cache.get(remote)
        if src is None:
            src = self._src_cache[remote] = _source_address_for(remote)
        return src

    def sent_by(self, flow: Flow) -> str:
        host = self.local_host(flow)
        port = flow.local[1]
        if flow.transport == "tcp" and self.transports is not None:
            # outbound TCP uses an ephemeral port; advertise the listener (RFC 3261 §18.1.1)
            b = self.transports.bound("tcp", socket.AF_INET6 if ":" in host else socket.AF_INET)
            if b is not None:
                port = b[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _source_address_for(remote: str) -> str:
    """The local address the kernel would use towards ``remote`` (UDP connect, no packet sent)."""
    fam = socket.AF_INET6 if ":" in remote else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.connect((remote, 9))
        return s.getsockname()[0]
    except OSError:
        return "::1" if fam == socket.AF_INET6 else "127.0.0.1"
    finally:
        s.close()


def _reason(status: int, detail: str) -> str:
    # keep the reason phrase on one line and printable
    detail = "".join(c if c.isprintable() else "?" for c in detail)[:120]
    from node.sip.message import REASONS

    base = REASONS.get(status, "Bad Request")
    return f"{base} ({detail})" if detail else base
