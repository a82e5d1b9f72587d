"""A bounded LRU map: the per-source state of the edge.

A flood from millions of (possibly spoofed) addresses must not grow memory without bound,
so every per-source table has a capacity and forgets its least recently seen source when
full. OrderedDict gives O(1) hit (move_to_end) and O(1) eviction (popitem(last=False)).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LruTable(Generic[K, V]):
    __slots__ = ("_d", "capacity", "evicted", "peek")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._d: OrderedDict[K, V] = OrderedDict()
        self.capacity = capacity
        self.evicted = 0
        #: the value without marking ``key`` as seen, None when absent (the dict's own get:
        #: a ban check per packet costs no Python call)
        self.peek = self._d.get

    def get(self, key: K) -> V | None:
        """The value, marking ``key`` as just seen; None when absent."""
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> None:
        d = self._d
        if key in d:
            d.move_to_end(key)
        elif len(d) >= self.capacity:
            d.popitem(last=False)
            self.evicted += 1
        d[key] = value

    def pop(self, key: K) -> V | None:
        return self._d.pop(key, None)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d
