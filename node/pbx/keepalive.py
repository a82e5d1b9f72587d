"""NAT keep-alives for phones registered over UDP from behind a NAT (Kamailio nathelper style).

A NAT drops an idle UDP mapping after 30–120 s; calls to the phone would then vanish. For
every UDP binding whose source address differs from its Contact (the phone is behind NAT)
the node sends an OPTIONS out of the very socket the REGISTER came in on, statelessly:
the answer (or its absence) does not matter, the outgoing packet refreshes the mapping.
"""

from __future__ import annotations

import asyncio
import logging
import time

from node.model import Binding
from node.ports import LocationStore
from node.sip.ids import new_branch, new_call_id, new_tag
from node.sip.message import Request
from node.sip.uri import Uri

log = logging.getLogger("hivepbx.keepalive")


def behind_nat(b: Binding) -> bool:
    if b.transport != "udp":
        return False  # stream flows are kept open by the connection itself (RFC 5626 CRLF)
    try:
        u = Uri.parse(b.contact)
    except Exception:
        return True
    return u.host_bare != b.source_host.lower() or (u.port or 5060) != b.source_port


def keepalive_request(b: Binding, sent_by: str, domain: str) -> Request:
    return Request(
        "OPTIONS",
        b.contact,
        [
            ("Via", f"SIP/2.0/UDP {sent_by};branch={new_branch()};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:keepalive@{domain}>;tag={new_tag()}"),
            ("To", f"<{b.contact}>"),
            ("Call-ID", new_call_id()),
            ("CSeq", "1 OPTIONS"),
        ],
    )


class NatKeepalive:
    def __init__(self, locations: LocationStore, endpoint, interval: float = 20.0) -> None:
        self.locations = locations
        self.endpoint = endpoint
        self.interval = interval
        self.sent = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.ping_all()
            except Exception:
                log.exception("NAT keep-alive round failed")

    async def ping_all(self) -> int:
        n = 0
        transports = self.endpoint.transports
        for b in await self.locations.list(None, time.time()):
            if not behind_nat(b):
                continue
            flow = transports.flow_to("udp", b.source_host, b.source_port)
            req = keepalive_request(b, self.endpoint.sent_by(flow), "hivepbx.invalid")
            self.endpoint.send_stateless(req, flow)
            n += 1
        self.sent += n
        return n
