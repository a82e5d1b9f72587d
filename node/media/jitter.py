"""A small receive jitter buffer for streams the engine mixes or records on its clock.

Packets are kept by RTP sequence number; each tick takes the next one in order. A missing
packet is played as silence once the buffer holds ``depth`` frames past it (it is late or
lost); a packet older than what was already played is dropped. The depth is fixed (2 frames,
40 ms): enough for loopback and LAN jitter without adding much delay.
"""

from __future__ import annotations

import numpy as np


class JitterBuffer:
    __slots__ = ("depth", "max_frames", "_frames", "_next", "lost", "late", "overflow", "_started")

    def __init__(self, depth: int = 2, max_frames: int = 25) -> None:
        self.depth = depth
        self.max_frames = max_frames
        self._frames: dict[int, np.ndarray] = {}
        self._next = 0
        self._started = False
        self.lost = self.late = self.overflow = 0

    def put(self, seq: int, frame: np.ndarray) -> None:
        if not self._started:
            self._started = True
            self._next = seq
        elif (seq - self._next) & 0xFFFF >= 0x8000:
            self.late += 1
            return
        if len(self._frames) >= self.max_frames:
            # the clock stopped pulling (a stalled consumer): start over from this packet
            self.overflow += 1
            self._frames.clear()
            self._next = seq
        self._frames[seq] = frame

    def get(self) -> np.ndarray | None:
        """The next frame in order, or None (nothing yet, or a gap still being waited for)."""
        if not self._frames:
            return None
        frame = self._frames.pop(self._next, None)
        if frame is None:
            ahead = max((s - self._next) & 0xFFFF for s in self._frames)
            if ahead < self.depth:
                return None
            self.lost += 1
        self._next = (self._next + 1) & 0xFFFF
        return frame
