"""All of a transaction layer's deadlines: one heap for the timers that get cancelled, and a
FIFO per fixed delay for the ones that never are.

Heap: cancelling only marks the entry dead (asyncio's trick): the heap drops it when it
surfaces, and rebuilds itself when dead entries outnumber live ones, so a timer that is
armed and then cancelled (Timer A once a 100 Trying arrives, the common case) costs one
push and nothing more. Entries are plain lists so the heap compares them in C.

FIFOs: the timers that end a finished transaction's retransmission window (D, I, J, K, L, M)
are never cancelled and always lie the same delay after the moment they are set, so with a
clock that does not go back they come due in the order they were set. A deque of deadlines
and one of targets per delay then does the heap's job in O(1) with no entry object at all:
a registration storm keeps tens of thousands of these alive for 32 s (Timer J), and as heap
entries each was a list the garbage collector had to track. ``linger`` refuses an entry
that would come due before the last one in its FIFO (the caller's clock went back); the
caller puts that one in the heap.
"""

from __future__ import annotations

from collections import deque
from heapq import heapify, heappop, heappush
from itertools import count

#: a scheduled timer: [deadline, sequence (-1 once fired), target (None once cancelled), kind]
TimerEntry = list

_COMPACT_MIN = 1024


class _Fifo:
    __slots__ = ("at", "targets")

    def __init__(self) -> None:
        self.at: deque[float] = deque()
        self.targets: deque[object] = deque()


class Timers:
    __slots__ = ("_heap", "_seq", "_dead", "_fifos", "_fifo_list")

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._seq = count()
        self._dead = 0
        #: delay -> its FIFO (a handful: one per distinct delay the caller uses)
        self._fifos: dict[float, _Fifo] = {}
        self._fifo_list: list[_Fifo] = []

    # ------------------------------------------------------------------ the heap
    def schedule(self, at: float, target: object, kind: int) -> TimerEntry:
        entry = [at, next(self._seq), target, kind]
        heappush(self._heap, entry)
        return entry

    def cancel(self, entry: TimerEntry) -> None:
        if entry[2] is None or entry[1] < 0:
            return  # already cancelled, or fired (no longer in the heap)
        entry[2] = None
        self._dead += 1
        heap = self._heap
        if self._dead > _COMPACT_MIN and self._dead * 2 > len(heap):
            live = [e for e in heap if e[2] is not None]
            heapify(live)
            self._heap = live
            self._dead = 0

    def pop_due(self, now: float) -> TimerEntry | None:
        """The earliest live heap entry whose deadline is ``<= now``, removed; None when none is
        due. A popped entry is spent: a later ``cancel`` of it is a no-op."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            if entry[2] is None:
                self._dead -= 1
                continue
            entry[1] = -1
            return entry
        return None

    # ------------------------------------------------------------------ the FIFOs
    def linger(self, delay: float, now: float, target: object) -> bool:
        """Schedule ``target`` at ``now + delay`` in the FIFO for ``delay`` (it cannot be
        cancelled); False, and nothing scheduled, if that would put the FIFO out of order."""
        fifo = self._fifos.get(delay)
        if fifo is None:
            fifo = self._fifos[delay] = _Fifo()
            self._fifo_list.append(fifo)
        at = now + delay
        ats = fifo.at
        if ats and at < ats[-1]:
            return False
        ats.append(at)
        fifo.targets.append(target)
        return True

    def pop_lingering(self, now: float) -> object | None:
        """A FIFO target whose deadline is ``<= now``, removed; None when none is due."""
        for fifo in self._fifo_list:
            ats = fifo.at
            if ats and ats[0] <= now:
                ats.popleft()
                return fifo.targets.popleft()
        return None

    # ------------------------------------------------------------------ both
    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heappop(heap)
            self._dead -= 1
        at = heap[0][0] if heap else None
        for fifo in self._fifo_list:
            ats = fifo.at
            if ats and (at is None or ats[0] < at):
                at = ats[0]
        return at

    def __len__(self) -> int:
        """Heap entries (dead ones included) plus FIFO entries (for tests and metrics)."""
        return len(self._heap) + sum(len(f.at) for f in self._fifo_list)
