"""Music on hold shared between listeners: one source, encoded once per codec, read by many.

The file is decoded and encoded to PCMU and PCMA once when the source is made; each engine
tick advances one shared position (only while somebody listens), and every listener sends
the same bytes. A thousand callers on hold cost a thousand ``sendto`` calls per tick and
nothing else. Listeners joining later hear the music from where it is, like a radio.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from node.media import g711
from node.media.tones import FRAME
from node.media.wav import read_wav

if TYPE_CHECKING:
    from node.media_engine.engine import MediaEngine


class MusicOnHold:
    def __init__(self, engine: "MediaEngine", path: str | Path) -> None:
        self.engine = engine
        self.path = Path(path)
        samples = read_wav(self.path)
        n = len(samples) - len(samples) % FRAME
        if n == 0:
            raise ValueError(f"{path}: shorter than one 20 ms frame")
        samples = samples[:n]
        #: the whole file per codec, one encode each
        self.encoded = {pt: g711.encode(pt, samples) for pt in g711.NAMES}
        self.frames = n // FRAME
        self.position = 0
        self.listeners = 0

    def tick(self) -> None:
        self.position = (self.position + 1) % self.frames

    def current(self, pt: int) -> bytes:
        off = self.position * FRAME
        return self.encoded[pt][off:off + FRAME]

    def listener(self) -> "_Listener":
        self.listeners += 1
        if self.listeners == 1:
            self.engine.add_ticker(self)
        return _Listener(self)

    def _left(self) -> None:
        self.listeners -= 1
        if self.listeners <= 0:
            self.listeners = 0
            self.engine.remove_ticker(self)


class _Listener:
    __slots__ = ("moh", "_open")

    def __init__(self, moh: MusicOnHold) -> None:
        self.moh = moh
        self._open = True

    def read(self, pt: int) -> bytes | None:
        return self.moh.current(pt)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.moh._left()
