"""Loopback ports for the peers we start: free now, on UDP and TCP both, as SIP listens on both."""

from __future__ import annotations

import itertools
import random
import socket

LOOPBACK = "127.0.0.1"

#: above the Linux ephemeral range (32768-60999) would collide with outgoing sockets; below it
#: and above the well-known ports is where we look
_RANGE = (20000, 32000)
_taken: set[int] = set()  # handed out by this process already: never hand out twice


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = LOOPBACK, *, span: int = 1) -> int:
    """A port p such that p .. p+span-1 are free for UDP and TCP on ``host``.

    ``span=2`` is for baresip, which also binds SIP over TLS on its SIP port + 1.  Ports are
    remembered so that two peers started one after the other never get the same one.
    """
    for attempt in range(2):
        start = random.randrange(*_RANGE)
        for port in itertools.chain(range(start, _RANGE[1]), range(_RANGE[0], start)):
            block = range(port, port + span)
            # port + span stays unhanded too: media peers get RTCP on their RTP port + 1
            # (RFC 3550 §11), which must not be another peer's socket
            if _taken.intersection(range(port, port + span + 1)):
                continue
            if all(_bindable(host, p) for p in block):
                _taken.update(range(port, port + span + 1))
                return port
        # a long session handed out the whole range: ports of finished peers are free again
        # (the bind check still skips live ones), so forget what was handed out and look again
        _taken.clear()
    raise RuntimeError(f"no {span} free consecutive port(s) on {host}")
