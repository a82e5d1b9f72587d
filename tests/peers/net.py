"""Loopback ports for the peers we start: free now, on UDP and TCP both, as SIP listens on both."""

from __future__ import annotations

import itertools
import os
import random
import socket

LOOPBACK = "127.0.0.1"


def xdist_worker() -> tuple[int, int]:
    """(index, count) of this pytest-xdist worker ("gw3" -> 3); (0, 1) when not under xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not name.startswith("gw"):
        return 0, 1
    return int(name[2:]) % max(count, 1), max(count, 1)


def _slice(lo: int, hi: int) -> tuple[int, int]:
    """This worker's share of [lo, hi): bind-and-release cannot stop two processes choosing the
    same free port at once, disjoint ranges can (workers run tests side by side)."""
    index, count = xdist_worker()
    size = (hi - lo) // count
    return lo + index * size, lo + (index + 1) * size


#: above the Linux ephemeral range (32768-60999) would collide with outgoing sockets; below it
#: and above the well-known ports is where we look (each xdist worker in its own slice)
_RANGE = _slice(20000, 32000)
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
        end = _RANGE[1] - span  # the block and its RTCP port + 1 stay inside our slice
        start = random.randrange(_RANGE[0], end)
        for port in itertools.chain(range(start, end), range(_RANGE[0], start)):
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
