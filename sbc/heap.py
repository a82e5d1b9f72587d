"""The SBC's policy for the cyclic garbage collector, sans-I/O (the runtime ticks it).

A loaded SBC keeps every transaction of the last 32 s alive (Timers J, L, M): ~70 tracked
objects a call, 10^6 and more at load. Per-call objects form no cycles (sbc/proxy.py
``Forward``; bench/sbc_inproc.py finds no cyclic garbage), so reference counting frees them
and the collector's only work on them is waste: each survivor was traversed by a young and
then by a middle-generation collection (≈60 µs of CPU a call, a sixth of the SBC's whole
signalling cost), and a full collection over them stalled the loop for up to 0.8 s.

So what is alive moves to the permanent generation (``gc.freeze``, O(1)) every
``FREEZE_EVERY`` s, and the young threshold is set so that a loaded SBC (``YOUNG_THRESHOLD``
is ~0.5 s of survivors at 3,000 calls/s) does not collect between two freezes: survivors
are frozen before anything traverses them. Cyclic garbage that is alive at a freeze (rare: an
exception's traceback, a failed media task) waits for the full collection, made after
``FULL_QUIET`` s when few transactions are alive (a pause of milliseconds), after
``FULL_MAX`` s in any case.
"""

from __future__ import annotations

import gc

FREEZE_EVERY = 0.1
YOUNG_THRESHOLD = 100_000
FULL_QUIET = 60.0
QUIET_TRANSACTIONS = 2000
FULL_MAX = 900.0


def settle() -> None:
    """After start-up and ``node.runtime.process.settle_heap``: the SBC's young threshold."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


class HeapKeeper:
    """``tick`` every ``FREEZE_EVERY`` seconds with the clock and the live transaction count."""

    __slots__ = ("last_full", "full_collections")

    def __init__(self, now: float) -> None:
        self.last_full = now
        self.full_collections = 0

    def tick(self, now: float, transactions: int) -> None:
        quiet = transactions < QUIET_TRANSACTIONS  # then a full collection is a short pause
        if now - self.last_full >= FULL_MAX or (quiet and now - self.last_full >= FULL_QUIET):
            gc.unfreeze()
            gc.collect()
            self.last_full = now
            self.full_collections += 1
        gc.freeze()
