"""asyncio sockets for SIP: UDP and TCP listeners on IPv4 and IPv6, outbound TCP.

The transport knows bytes, addresses and connections, nothing of SIP beyond framing.
It hands parsed messages (or parse errors with what parsed of them) to one callback and
sends bytes on a ``Flow``. IPv6 sockets are opened with IPV6_V6ONLY so ``0.0.0.0:5060``
and ``[::]:5060`` can both be bound (Linux would otherwise map v4 into the v6 socket).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
from dataclasses import dataclass
from typing import Callable

from node.sip.errors import RemoteProtocolError
from node.sip.flow import Flow
from node.sip.message import Message
from node.sip.parser import DEFAULT_MAX_SIZE, StreamParser, parse_datagram

log = logging.getLogger("hivepbx.transport")

#: (message or error, flow). An error carries ``.message`` when its head parsed.
OnMessage = Callable[[Message | RemoteProtocolError, Flow], None]

_conn_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Listen:
    """One SIP listening socket."""

    transport: str  # 'udp' | 'tcp'
    host: str  # '0.0.0.0', '::', '127.0.0.1', ...
    port: int


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


#: a burst of datagrams waits here while the loop is busy; the kernel default (~208 KB, a
#: few hundred messages) overflows within milliseconds at load and every drop costs a
#: retransmission 500 ms later
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _grow_receive_buffer(sock: socket.socket) -> None:
    try:
        # as root, FORCE passes net.core.rmem_max; otherwise the kernel caps the request there
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), UDP_RECEIVE_BUFFER)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
        except OSError:
            log.warning("cannot enlarge the UDP receive buffer")


def _bind_socket(host: str, port: int, kind: int, reuse_port: bool = False) -> socket.socket:
    fam = _family(host)
    sock = socket.socket(fam, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # several processes share the port; the kernel spreads the peers over them
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if fam == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            _grow_receive_buffer(sock)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


#: flows kept per UDP socket: a phone's datagrams come in runs (REGISTER, its retry with
#: credentials; a call's requests), and a Flow is immutable, so one object serves them all
_FLOW_MEMO = 4096


class _UdpProtocol(asyncio.DatagramProtocol):
    __slots__ = ("owner", "local", "transport", "_flows")

    def __init__(self, owner: "SipTransports", local: tuple[str, int]) -> None:
        self.owner = owner
        self.local = local
        self.transport: asyncio.DatagramTransport | None = None
        self._flows: dict[tuple, Flow] = {}

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        flows = self._flows
        flow = flows.get(addr)
        if flow is None:
            if len(flows) >= _FLOW_MEMO:
                flows.clear()
            flow = flows[addr] = Flow("udp", (addr[0], addr[1]), self.local)
        if len(data) <= 4 and not data.strip(b"\r\n\x00 "):
            return  # NAT keep-alive (CRLF / empty datagram): nothing to answer over UDP
        try:
            msg: Message | RemoteProtocolError = parse_datagram(data, self.owner.max_size)
        except RemoteProtocolError as e:
            msg = e
        except Exception as e:  # never let a datagram kill the socket
            log.exception("parser crashed on datagram from %s", addr)
            msg = RemoteProtocolError(f"unparseable message ({type(e).__name__})")
        self.owner.on_message(msg, flow)

    def error_received(self, exc) -> None:  # type: ignore[override]
        # ICMP port unreachable and friends: the transaction layer's timers handle the loss
        log.debug("udp error on %s: %s", self.local, exc)


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, owner: "SipTransports", local: tuple[str, int] | None = None) -> None:
        self.owner = owner
        self.local = local
        self.parser = StreamParser(owner.max_size)
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None
        self.conn_id = next(_conn_ids)
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        local = self.local or (sock[0], sock[1])
        self.flow = Flow("tcp", (peer[0], peer[1]), local, self.conn_id)
        self.owner._tcp_up(self)
        if not self.ready.done():
            self.ready.set_result(self.flow)

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        try:
            items = self.parser.feed(data)
        except RemoteProtocolError as e:
            log.info("closing TCP connection %s: %s", self.flow, e.reason)
            self.owner.on_message(e, self.flow)  # type: ignore[arg-type]
            if self.transport:
                self.transport.close()
            return
        if self.parser.pings:
            # RFC 5626 §3.5.1: answer a double-CRLF ping with a single CRLF pong
            self.parser.pings = 0
            if self.transport:
                self.transport.write(b"\r\n")
        for item in items:
            self.owner.on_message(item, self.flow)  # type: ignore[arg-type]
        if getattr(self.parser, "failed", False) and self.transport is not None:
            # what framed before the broken message was delivered; the stream cannot go on
            self.transport.close()

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.owner._tcp_down(self)
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before connect"))


class SipTransports:
    """All SIP sockets of a process."""

    #: bind the listeners with SO_REUSEPORT (the SBC's workers share their ports)
    reuse_port = False

    def __init__(self, on_message: OnMessage, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.on_message = on_message
        self.max_size = max_size
        self._udp: dict[tuple[str, int], asyncio.DatagramTransport] = {}
        self._servers: list[asyncio.base_events.Server] = []
        self._tcp: dict[int, _TcpProtocol] = {}
        #: remote address → live TCP connection, for reuse (RFC 3261 §18.1.1)
        self._tcp_by_remote: dict[tuple[str, int], _TcpProtocol] = {}
        self._pending: dict[tuple[str, int], asyncio.Task] = {}
        self.listens: list[Listen] = []

    async def start(self, listens: tuple[Listen, ...]) -> None:
        loop = asyncio.get_running_loop()
        for ls in listens:
            kind = socket.SOCK_DGRAM if ls.transport == "udp" else socket.SOCK_STREAM
            try:
                sock = _bind_socket(ls.host, ls.port, kind, self.reuse_port)
            except OSError as e:
                if _family(ls.host) == socket.AF_INET6 and e.errno in (97, 99):  # no IPv6 here
                    log.warning("IPv6 unavailable, not listening on [%s]:%s/%s", ls.host, ls.port, ls.transport)
                    continue
                raise OSError(e.errno, f"cannot listen on {ls.transport}:{ls.host}:{ls.port}: {e.strerror}") from e
            bound = sock.getsockname()
            local = (bound[0], bound[1])
            if ls.transport == "udp":
                transport, _ = await loop.create_datagram_endpoint(lambda local=local: _UdpProtocol(self, local), sock=sock)
                self._udp[local] = transport  # type: ignore[assignment]
            else:
                server = await loop.create_server(lambda local=local: _TcpProtocol(self, local), sock=sock, backlog=1024)
                self._servers.append(server)
            self.listens.append(Listen(ls.transport, local[0], local[1]))

    def bound(self, transport: str = "udp", family: int | None = None) -> tuple[str, int] | None:
        for ls in self.listens:
            if ls.transport == transport and (family is None or _family(ls.host) == family):
                return (ls.host, ls.port)
        return None

    async def close(self) -> None:
        for s in self._servers:
            s.close()
        for t in self._udp.values():
            t.close()
        for p in list(self._tcp.values()):
            if p.transport:
                p.transport.close()
        for task in self._pending.values():
            task.cancel()
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        self._udp.clear()
        self._servers.clear()

    # --- TCP connection bookkeeping
    def _tcp_up(self, proto: _TcpProtocol) -> None:
        self._tcp[proto.conn_id] = proto
        self._tcp_by_remote[proto.flow.remote] = proto  # type: ignore[union-attr]

    def _tcp_down(self, proto: _TcpProtocol) -> None:
        self._tcp.pop(proto.conn_id, None)
        if proto.flow and self._tcp_by_remote.get(proto.flow.remote) is proto:
            del self._tcp_by_remote[proto.flow.remote]

    # --- sending
    def flow_to(self, transport: str, host: str, port: int) -> Flow:
        """A flow towards ``host:port``: an existing TCP connection, or our UDP socket of the right family.

        For TCP without a live connection the flow has conn_id 0 and ``send`` connects first.
        """
        host = host[1:-1] if host.startswith("[") else host
        remote = (host, port)
        if transport == "tcp":
            proto = self._tcp_by_remote.get(remote)
            if proto is not None and proto.flow is not None:
                return proto.flow
            local = self.bound("tcp", _family(host)) or ("", 0)
            return Flow("tcp", remote, local, 0)
        local = self.bound("udp", _family(host))
        if local is None:
            raise OSError(f"no UDP socket for address family of {host}")
        return Flow("udp", remote, local)

    def send(self, data: bytes, flow: Flow) -> None:
        if flow.transport == "udp":
            t = self._udp.get(flow.local)
            if t is None:
                local = self.bound("udp", _family(flow.remote[0]))
                t = self._udp.get(local) if local else None
            if t is None:
                log.warning("no UDP socket to send to %s", flow.remote)
                return
            t.sendto(data, flow.remote)
            return
        proto = self._tcp.get(flow.conn_id) if flow.conn_id else self._tcp_by_remote.get(flow.remote)
        if proto is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.write(data)
            return
        self._connect_and_send(data, flow.remote)

    def _connect_and_send(self, data: bytes, remote: tuple[str, int]) -> None:
        """Open (or wait for) an outbound TCP connection, then write; failures are left to
        the transaction timers, as a lost UDP datagram would be."""
        loop = asyncio.get_running_loop()
        task = self._pending.get(remote)
        if task is None or task.done():
            async def connect() -> _TcpProtocol:
                _, proto = await asyncio.wait_for(
                    loop.create_connection(lambda: _TcpProtocol(self), remote[0], remote[1]), 5.0
                )
                await proto.ready
                return proto

            task = self._pending[remote] = loop.create_task(connect())

        def write(t: asyncio.Task) -> None:
            if self._pending.get(remote) is t:
                del self._pending[remote]
            if t.cancelled() or t.exception() is not None:
                log.info("TCP connect to %s failed: %s", remote, None if t.cancelled() else t.exception())
                return
            proto = t.result()
            if proto.transport and not proto.transport.is_closing():
                proto.transport.write(data)

        task.add_done_callback(write)
