"""One heap of deadlines for all of a layer's timers, with lazy cancellation.

Cancelling only marks the entry dead (asyncio's trick): the heap drops it when it
surfaces, and rebuilds itself when dead entries outnumber live ones, so a timer that is
armed and then cancelled (Timer A once a 100 Trying arrives, the common case) costs one
push and nothing more. Entries are plain lists so the heap compares them in C.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush
from itertools import count

#: a scheduled timer: [deadline, sequence (-1 once fired), target (None once cancelled), kind]
TimerEntry = list

_COMPACT_MIN = 1024


class Timers:
    __slots__ = ("_heap", "_seq", "_dead")

    def __init__(self) -> None:
        self._heap: list[TimerEntry] = []
        self._seq = count()
        self._dead = 0

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

    def next_deadline(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2] is None:
            heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def pop_due(self, now: float) -> TimerEntry | None:
        """The earliest live entry whose deadline is ``<= now``, removed; None when none is due.
        A popped entry is spent: a later ``cancel`` of it is a no-op."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = heappop(heap)
            if entry[2] is None:
                self._dead -= 1
                continue
            entry[1] = -1
            return entry
        return None

    def __len__(self) -> int:
        """Entries in the heap, dead ones included (for tests and metrics)."""
        return len(self._heap)
