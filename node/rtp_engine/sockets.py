"""UDP sockets for media: binding an RTP/RTCP port pair from the pool and normalising remote
addresses. Shared by the relay (node/rtp_engine/relay.py) and the media engine
(node/media_engine/engine.py) so both bind and compare addresses the same way."""

from __future__ import annotations

import errno
import functools
import socket

from node.rtp_engine.errors import BadRemote, RelayError
from node.rtp_engine.port_pool import PortPool

#: ports tried before giving up: others' sockets may hold a few ports of our range
BIND_ATTEMPTS = 16
# non-blocking from socket(2) on: saves a syscall per socket on call setup
_DGRAM_NONBLOCK = socket.SOCK_DGRAM | getattr(socket, "SOCK_NONBLOCK", 0)


def has_ipv6() -> bool:
    """Whether this host can bind IPv6 sockets (containers often cannot)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def bind_address(bind_host: str) -> tuple[str, int, bool]:
    """(host, family, dual_stack) of a media bind address: an IP literal, '::' for dual stack,
    '' for '::' where this host has IPv6, else 0.0.0.0."""
    if bind_host == "":
        bind_host = "::" if has_ipv6() else "0.0.0.0"
    family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
    return bind_host, family, family == socket.AF_INET6 and bind_host == "::"


def bind_pair(
    pool: PortPool, family: int, bind_host: str, dual_stack: bool
) -> tuple[int, socket.socket, socket.socket]:
    """An even port from the pool with its RTP and RTCP sockets bound. A port some other
    process holds goes back to the end of the queue and the next one is tried."""
    #: the last failure's text: the exception itself would keep this frame (and its sockets)
    #: alive through its traceback, a cycle for the garbage collector
    last = ""
    for _ in range(min(BIND_ATTEMPTS, pool.capacity)):
        port = pool.acquire()
        socks: list[socket.socket] = []
        try:
            for p in (port, port + 1):
                s = socket.socket(family, _DGRAM_NONBLOCK)
                socks.append(s)
                if dual_stack:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind((bind_host, p))
            return port, socks[0], socks[1]
        except OSError as e:
            for s in socks:
                s.close()
            pool.release(port)
            if e.errno not in (errno.EADDRINUSE, errno.EACCES):
                raise RelayError(f"cannot bind RTP socket on {bind_host}:{port}: {e}") from e
            last = str(e)
    raise RelayError(f"no bindable RTP port pair on {bind_host}: {last}", 503)


@functools.lru_cache(maxsize=4096)  # every SDP names a host: the few peers a node sees, over and over
def normalize_host(host: str, family: int, dual_stack: bool, owner: str = "relay") -> str | None:
    """``host`` as the kernel reports sources on sockets of ``family``; None for 0.0.0.0 / ::.
    Raises ``BadRemote`` (488) for what such a socket cannot send to; ``owner`` names the
    component in the message."""
    try:
        if family == socket.AF_INET:
            packed = socket.inet_pton(socket.AF_INET, host)
            return None if packed == b"\0\0\0\0" else socket.inet_ntop(socket.AF_INET, packed)
        if ":" not in host:
            packed4 = socket.inet_pton(socket.AF_INET, host)
            if packed4 == b"\0\0\0\0":
                return None
            if not dual_stack:
                raise BadRemote(f"IPv4 media address {host} on an IPv6-only {owner}")
            host = "::ffff:" + socket.inet_ntop(socket.AF_INET, packed4)
        packed = socket.inet_pton(socket.AF_INET6, host)
        return None if packed == bytes(16) else socket.inet_ntop(socket.AF_INET6, packed)
    except OSError:
        raise BadRemote(f"media address {host!r} is not an IP address this {owner} can reach") from None
