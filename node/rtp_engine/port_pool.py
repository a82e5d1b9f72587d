"""Even RTP ports handed out from a configured range (RTP on even ports, RTCP on the next odd
one: RFC 3550 §11)."""

from __future__ import annotations

from collections import deque

from node.rtp_engine.errors import PortsExhausted


class PortPool:
    """Free ports in FIFO order: a released port goes to the back of the queue, so the ports
    of a call just ended are reused last and its late packets do not reach a new call."""

    __slots__ = ("min_port", "max_port", "_free", "_used", "exhausted")

    def __init__(self, min_port: int, max_port: int) -> None:
        if not 1 <= min_port <= max_port <= 65535:
            raise ValueError(f"bad RTP port range {min_port}-{max_port}")
        first = min_port + (min_port & 1)
        ports = range(first, max_port, 2)  # p + 1 (RTCP) must be <= max_port too
        if not ports:
            raise ValueError(f"RTP port range {min_port}-{max_port} holds no even/odd pair")
        self.min_port = min_port
        self.max_port = max_port
        self._free: deque[int] = deque(ports)
        self._used: set[int] = set()
        #: how many times ``acquire`` failed for want of a port
        self.exhausted = 0

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._used)

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def acquire(self) -> int:
        """An even RTP port (its RTCP port is +1). Raises ``PortsExhausted`` (503) when none is left."""
        if not self._free:
            self.exhausted += 1
            raise PortsExhausted(f"no free RTP port in {self.min_port}-{self.max_port}")
        port = self._free.popleft()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Give ``port`` back. Releasing a port that is not out is a caller bug: ValueError."""
        try:
            self._used.remove(port)
        except KeyError:
            raise ValueError(f"RTP port {port} is not in use") from None
        self._free.append(port)
