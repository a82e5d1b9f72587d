"""The 20 ms frame clock, as a pure model the asyncio engine drives with real time.

Timers fire late (a busy loop, GC, a slow host): the clock keeps absolute deadlines
``start + n * period`` instead of sleeping 20 ms after each tick, so lateness never
accumulates into drift. When a tick comes late by more than a period, the frames that
fell due meanwhile are produced at once (up to ``max_burst``), so the far end's jitter
buffer sees a burst rather than a gap; if the clock fell further behind than that (the
process was stopped), it skips ahead instead of flooding and counts the frames skipped.
"""

from __future__ import annotations


class FrameClock:
    __slots__ = ("period", "max_burst", "next_due", "ticks", "skipped", "late_max")

    def __init__(self, start: float, period: float = 0.020, max_burst: int = 5) -> None:
        self.period = period
        self.max_burst = max_burst
        self.next_due = start + period
        #: frames produced, frames skipped after a stall, the worst lateness seen (seconds)
        self.ticks = 0
        self.skipped = 0
        self.late_max = 0.0

    def due(self, now: float) -> int:
        """How many frames to produce now (0 when called early); advances the deadline."""
        if now < self.next_due:
            return 0
        late = now - self.next_due
        if late > self.late_max:
            self.late_max = late
        n = int(late / self.period) + 1
        if n > self.max_burst:
            self.skipped += n - self.max_burst
            self.next_due += (n - self.max_burst) * self.period
            n = self.max_burst
        self.next_due += n * self.period
        self.ticks += n
        return n
