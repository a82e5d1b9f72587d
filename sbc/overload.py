"""Load shedding: past its capacity the SBC refuses new work early so the calls it took finish.

An SBC past its capacity does not fail gracefully by itself: datagrams wait in the socket
buffer, every message is answered late, phones and nodes retransmit, the retransmissions
add load, and soon no call completes (bench/README.md: the 500/s step after a failed
750/s one failed too). The cure is to refuse new calls and registrations at once with
503 + Retry-After — a refusal costs a parse and one datagram, a call a dozen messages —
while every in-dialog request, ACK, CANCEL and response still goes through.

The signal is how long a message that arrives now waits before it is handled: the event
loop's lag (a timer due every ``interval`` runs late by the work queued ahead of it) plus
the backlog in the kernel's UDP receive buffers, which the loop's lag does not show (the
loop reads a few datagrams per turn and runs its timers in between, while the 4 MB buffers
hold seconds of traffic). The backlog is read from the sockets (SO_MEMINFO: bytes queued,
``QUEUED_BYTES_PER_MESSAGE`` a datagram) and priced at the CPU time a message has cost
lately. Sans-I/O: the runtime feeds ``observe(delay)``; the proxy reads ``shedding``.
Hysteresis (on above ``max_lag``, off below half of it, on a smoothed value) keeps one slow
turn (a GC pause) from refusing anything and the state from flapping at every tick.
"""

from __future__ import annotations

#: kernel memory one queued SIP datagram takes (its skb truesize on Linux: 2,304 bytes for a
#: datagram up to ~1.5 KB on loopback and Ethernet alike)
QUEUED_BYTES_PER_MESSAGE = 2304
#: getsockopt(SOL_SOCKET, SO_MEMINFO): u32 counters, the first is the receive queue's bytes
SO_MEMINFO = 55

#: requests that start new work: refused while shedding (in-dialog ones never are)
NEW_WORK = frozenset(("INVITE", "REGISTER", "SUBSCRIBE", "MESSAGE", "OPTIONS", "PUBLISH", "REFER"))


class LoadMeter:
    """Smoothed message wait → the share of new work to refuse.

    Not on/off: the share grows from 0 at half of ``max_lag`` to all of it at
    ``max_lag``, so under a steady overload the SBC settles where the wait stays well below
    SIP's 500 ms retransmission timer instead of swinging between taking everything (and
    the in-dialog requests those calls bring a hold time later) and refusing everything."""

    __slots__ = ("max_lag", "interval", "smoothed", "fraction", "_alpha", "_acc")

    def __init__(self, max_lag: float, interval: float = 0.05, alpha: float = 0.5) -> None:
        self.max_lag = max_lag
        self.interval = interval
        self.smoothed = 0.0
        #: share of new requests refused now (0: none)
        self.fraction = 0.0
        self._alpha = alpha
        self._acc = 0.0

    @property
    def shedding(self) -> bool:
        return self.fraction > 0.0

    def observe(self, delay: float) -> float:
        """One tick's estimate of how long a message waits (seconds); returns the share refused."""
        s = self.smoothed = self.smoothed + self._alpha * (max(delay, 0.0) - self.smoothed)
        if self.max_lag <= 0:
            return 0.0
        low = self.max_lag / 2
        self.fraction = min(1.0, max(0.0, (s - low) / (self.max_lag - low)))
        return self.fraction

    def refuse(self) -> bool:
        """Whether this new request is refused: exactly ``fraction`` of them, evenly spread."""
        self._acc += self.fraction
        if self._acc >= 1.0:
            self._acc -= 1.0
            return True
        return False


def backlog_seconds(queued_bytes: int, cpu_per_message: float) -> float:
    """How long the datagrams waiting in the receive buffers will take to handle."""
    return queued_bytes / QUEUED_BYTES_PER_MESSAGE * cpu_per_message


class CostMeter:
    """CPU seconds per message handled, smoothed (the price of the backlog)."""

    __slots__ = ("per_message", "_cpu", "_count")

    def __init__(self, initial: float = 60e-6) -> None:
        self.per_message = initial
        self._cpu = 0.0
        self._count = 0

    def update(self, cpu: float, count: int) -> float:
        """``cpu``: the process's CPU seconds so far; ``count``: messages handled so far."""
        d_cpu, d_n = cpu - self._cpu, count - self._count
        if d_n >= 50 and d_cpu > 0:  # enough messages for a fair price (idle ticks say nothing)
            self.per_message += 0.3 * (d_cpu / d_n - self.per_message)
        if d_n >= 50 or d_n < 0:
            self._cpu, self._count = cpu, count
        return self.per_message
