"""Where a message came from and where its answers go: the transport-level flow.

The core never touches sockets; it names a flow and the asyncio adapter owns the socket
behind it. For UDP the flow is (local socket, remote address); for TCP it is one
connection, so answers ride the connection the request came on (RFC 3261 §18.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Flow:
    #: 'udp' or 'tcp'
    transport: str
    #: peer address (host without brackets, port)
    remote: tuple[str, int]
    #: our address of the socket/connection (host without brackets, port)
    local: tuple[str, int]
    #: adapter's connection id for stream transports (0 for UDP)
    conn_id: int = 0

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    @property
    def via_transport(self) -> str:
        return self.transport.upper()
