"""The SBC's sockets: the node's UDP/TCP transports plus SIP over TLS and over WebSocket.

TLS (RFC 3261 §26.2, port 5061) and WebSocket (RFC 7118, ``ws``/``wss``, subprotocol
``sip``, aiohttp's server) are edge-only: phones and browsers reach the SBC with them, the
nodes never do. Both are connection flows the SBC cannot open itself (a phone behind NAT
takes no connections): requests towards a phone ride the connection it registered over,
named by the flow token, and a vanished connection is a lost message the transaction
timers handle, as a lost datagram would be.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl

from aiohttp import WSMsgType, web

from node.sip.errors import RemoteProtocolError
from node.sip.flow import Flow
from node.sip.parser import StreamParser, parse_datagram
from node.transport.sockets import Listen, SipTransports

log = logging.getLogger("hivepbx.sbc.transport")

EDGE_TRANSPORTS = ("tls", "ws", "wss")
_ids = itertools.count(1)


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


class _TlsProtocol(asyncio.Protocol):
    """One TLS connection: SIP framed by Content-Length, CRLF pings answered (RFC 5626)."""

    def __init__(self, owner: "SbcTransports", local: tuple[str, int]) -> None:
        self.owner = owner
        self.local = local
        self.parser = StreamParser(owner.max_size)
        self.transport: asyncio.Transport | None = None
        self.flow: Flow | None = None
        self.conn_id = next(_ids)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.flow = Flow("tls", (peer[0], peer[1]), self.local, self.conn_id)
        self.owner._streams[self.conn_id] = self

    def data_received(self, data: bytes) -> None:  # type: ignore[override]
        try:
            items = self.parser.feed(data)
        except RemoteProtocolError as e:
            self.owner.on_message(e, self.flow)  # type: ignore[arg-type]
            if self.transport:
                self.transport.close()
            return
        if self.parser.pings:
            self.parser.pings = 0
            if self.transport:
                self.transport.write(b"\r\n")
        for item in items:
            self.owner.on_message(item, self.flow)  # type: ignore[arg-type]
        if self.parser.failed is not None and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:  # type: ignore[override]
        self.owner._streams.pop(self.conn_id, None)

    def write(self, data: bytes) -> bool:
        t = self.transport
        if t is None or t.is_closing():
            return False
        t.write(data)
        return True


class _WsConnection:
    __slots__ = ("ws", "flow")

    def __init__(self, ws: web.WebSocketResponse, flow: Flow) -> None:
        self.ws = ws
        self.flow = flow

    def write(self, data: bytes) -> bool:
        if self.ws.closed:
            return False
        # one SIP message per WebSocket message (RFC 7118 §5.1); text when it is UTF-8
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            asyncio.get_event_loop().create_task(self.ws.send_bytes(data))
        else:
            asyncio.get_event_loop().create_task(self.ws.send_str(text))
        return True


class SbcTransports(SipTransports):
    """SipTransports plus ``tls``, ``ws`` and ``wss`` listeners (certificates from the config)."""

    def __init__(self, on_message, max_size: int, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(on_message, max_size)
        self.tls = tls
        self._streams: dict[int, _TlsProtocol | _WsConnection] = {}
        self._edge_servers: list = []
        self._runners: list[web.AppRunner] = []

    async def start(self, listens: tuple[Listen, ...]) -> None:
        await super().start(tuple(ls for ls in listens if ls.transport not in EDGE_TRANSPORTS))
        loop = asyncio.get_running_loop()
        for ls in listens:
            if ls.transport not in EDGE_TRANSPORTS:
                continue
            if ls.transport in ("tls", "wss") and self.tls is None:
                raise OSError(f"{ls.transport} listener {ls.host}:{ls.port} needs tls_cert and tls_key")
            if ls.transport == "tls":
                holder: dict = {}
                server = await loop.create_server(
                    lambda: _TlsProtocol(self, holder["local"]), ls.host, ls.port, ssl=self.tls, backlog=1024,
                    reuse_port=self.reuse_port or None,
                )
                sock = server.sockets[0].getsockname()
                holder["local"] = (sock[0], sock[1])
                self._edge_servers.append(server)
                self.listens.append(Listen("tls", sock[0], sock[1]))
            else:
                local = await self._start_ws(ls)
                self.listens.append(Listen(ls.transport, local[0], local[1]))

    async def _start_ws(self, ls: Listen) -> tuple[str, int]:
        holder: dict = {}

        async def handler(request: web.Request) -> web.StreamResponse:
            ws = web.WebSocketResponse(protocols=("sip",), heartbeat=None, max_msg_size=self.max_size)
            if not ws.can_prepare(request).ok:
                return web.Response(status=426, text="SIP over WebSocket only (RFC 7118)")
            await ws.prepare(request)
            if ws.ws_protocol != "sip":
                await ws.close(code=1002, message=b"the sip subprotocol is required")
                return ws
            peer = request.transport.get_extra_info("peername") if request.transport else ("", 0)
            conn = _WsConnection(ws, Flow(ls.transport, (peer[0], peer[1]), holder["local"], next(_ids)))
            self._streams[conn.flow.conn_id] = conn
            try:
                async for msg in ws:
                    if msg.type == WSMsgType.TEXT:
                        data = msg.data.encode("utf-8")
                    elif msg.type == WSMsgType.BINARY:
                        data = msg.data
                    else:
                        break
                    if not data.strip(b"\r\n"):
                        continue
                    try:
                        item = parse_datagram(data, self.max_size)
                    except RemoteProtocolError as e:
                        item = e
                    self.on_message(item, conn.flow)
            finally:
                self._streams.pop(conn.flow.conn_id, None)
            return ws

        app = web.Application()
        app.router.add_get("/", handler)
        app.router.add_get("/ws", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, ls.host, ls.port, ssl_context=self.tls if ls.transport == "wss" else None,
                           reuse_port=self.reuse_port or None)
        await site.start()
        self._runners.append(runner)
        addr = runner.addresses[0]
        holder["local"] = (addr[0], addr[1])
        return holder["local"]

    def send(self, data: bytes, flow: Flow) -> None:
        if flow.transport not in EDGE_TRANSPORTS:
            super().send(data, flow)
            return
        conn = self._streams.get(flow.conn_id)  # ids are per worker (sbc/workers.py)
        if conn is None or not conn.write(data):
            log.info("%s connection to %s is gone: message dropped", flow.transport, flow.remote)

    async def close(self) -> None:
        for conn in list(self._streams.values()):
            if isinstance(conn, _TlsProtocol) and conn.transport is not None:
                conn.transport.close()
            elif isinstance(conn, _WsConnection):
                await conn.ws.close()
        for s in self._edge_servers:
            s.close()
        for r in self._runners:
            await r.cleanup()
        self._edge_servers.clear()
        self._runners.clear()
        await super().close()
