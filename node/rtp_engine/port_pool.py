"""Even RTP ports handed out from a configured range (RTP on even ports, RTCP on the next odd
one: RFC 3550 §11)."""

from __future__ import annotations

from collections import deque
from typing import Callable

from node.rtp_engine.errors import PortsExhausted


class PortPool:
    """Free ports in FIFO order: a released port goes to the back of the queue, so the ports
    of a call just ended are reused last and its late packets do not reach a new call.

    A port is free, in use, or *parked*: its sockets stay bound between calls so the next
    call skips socket()+bind()+transport setup (node/rtp_engine/relay.py). A parked port
    counts as available; the owner of parked ports sets ``reclaim`` (called when the free
    queue runs low, to close some of them) so other users of the pool (the media engine) are
    not starved by sockets kept for reuse."""

    __slots__ = ("min_port", "max_port", "_free", "_used", "_parked", "exhausted", "reclaim", "low_water")

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
        self._parked: set[int] = set()
        #: how many times ``acquire`` failed for want of a port
        self.exhausted = 0
        #: closes some parked ports (their ``release`` follows once the sockets are closed)
        self.reclaim: Callable[[], None] | None = None
        #: ports kept truly free: parking stops below this, and ``reclaim`` is called
        self.low_water = max(8, len(ports) // 8)

    @property
    def capacity(self) -> int:
        return len(self._free) + len(self._used) + len(self._parked)

    @property
    def available(self) -> int:
        """Ports a call may get: free ones and parked ones."""
        return len(self._free) + len(self._parked)

    @property
    def in_use(self) -> int:
        return len(self._used)

    @property
    def parked(self) -> int:
        return len(self._parked)

    @property
    def can_park(self) -> bool:
        """Whether enough ports stay free for a port to be parked rather than released."""
        return len(self._free) > self.low_water

    def acquire(self) -> int:
        """An even RTP port (its RTCP port is +1). Raises ``PortsExhausted`` (503) when none is left."""
        free = self._free
        if len(free) <= self.low_water and self._parked and self.reclaim is not None:
            self.reclaim()
        if not free:
            self.exhausted += 1
            raise PortsExhausted(f"no free RTP port in {self.min_port}-{self.max_port}")
        port = free.popleft()
        self._used.add(port)
        return port

    def release(self, port: int) -> None:
        """Give ``port`` back (in use or parked). Releasing a port that is not out is a caller
        bug: ValueError."""
        try:
            self._used.remove(port)
        except KeyError:
            try:
                self._parked.remove(port)
            except KeyError:
                raise ValueError(f"RTP port {port} is not in use") from None
        self._free.append(port)

    def park(self, port: int) -> None:
        """``port`` (in use) keeps its sockets for the next call."""
        try:
            self._used.remove(port)
        except KeyError:
            raise ValueError(f"RTP port {port} is not in use") from None
        self._parked.add(port)

    def unpark(self, port: int) -> None:
        """A parked ``port`` goes back into use."""
        try:
            self._parked.remove(port)
        except KeyError:
            raise ValueError(f"RTP port {port} is not parked") from None
        self._used.add(port)
