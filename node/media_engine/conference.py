"""N-party mixes on the engine's clock: each member hears everyone else (mix-minus).

Members' received audio goes into their jitter buffers (``MediaEndpoint.jitter``); members
send nothing on their own. Every tick one mixer per engine serves *all* conferences at once:
it stacks one frame per member of every conference (silence for a gap) into a single
(members, 160) array, sums each conference with one ``np.add.reduceat``, subtracts each
member's own frame, clips, and encodes per codec with one table lookup for everybody. The
numpy work per tick is a handful of calls whatever the number of conferences; what remains
per member is taking its frame and sending its packet.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np

from node.media import g711
from node.media.jitter import JitterBuffer
from node.media.tones import FRAME

if TYPE_CHECKING:
    from node.media_engine.endpoint import MediaEndpoint
    from node.media_engine.engine import MediaEngine


class Conference:
    def __init__(self, engine: "MediaEngine", name: str = "") -> None:
        self.engine = engine
        self.name = name
        self.members: list[MediaEndpoint] = []
        self._mixer = _mixer_of(engine)
        #: 20 ms frames everyone hears on top of the mix (entry / exit tones), in order
        self._overlay: deque[np.ndarray] = deque()

    def overlay(self, samples: np.ndarray) -> None:
        """Let every member hear ``samples`` (8 kHz int16) on top of the mix, from the next tick."""
        x = np.asarray(samples, dtype=np.int16)
        x = np.concatenate([x, np.zeros((-len(x)) % FRAME, dtype=np.int16)])
        self._overlay.extend(x.reshape(-1, FRAME).astype(np.int32))

    def add(self, ep: "MediaEndpoint") -> None:
        if ep in self.members:
            return
        ep.stop_output()
        ep.jitter = JitterBuffer()
        ep.conference = self
        self.members.append(ep)
        self._mixer.join(self)

    def remove(self, ep: "MediaEndpoint") -> None:
        if ep in self.members:
            self.members.remove(ep)
            ep.conference = None
            ep.jitter = None
        if not self.members:
            self._mixer.leave(self)
        else:
            self._mixer.changed = True


class _Mixer:
    """The engine's one conference ticker."""

    def __init__(self, engine: "MediaEngine") -> None:
        self.engine = engine
        self.conferences: list[Conference] = []
        self.changed = True
        self._members: list[MediaEndpoint] = []
        self._starts = np.zeros(0, dtype=np.intp)
        self._owner = np.zeros(0, dtype=np.intp)
        self._buf = np.zeros((0, FRAME), dtype=np.int16)
        self._confs: list[Conference] = []

    def join(self, conf: Conference) -> None:
        if conf not in self.conferences:
            self.conferences.append(conf)
            if len(self.conferences) == 1:
                self.engine.add_ticker(self)
        self.changed = True

    def leave(self, conf: Conference) -> None:
        if conf in self.conferences:
            self.conferences.remove(conf)
            self.changed = True
        if not self.conferences:
            self.engine.remove_ticker(self)

    def _layout(self) -> None:
        confs = [c for c in self.conferences if c.members]
        self._confs = confs
        self._members = [ep for c in confs for ep in c.members]
        sizes = [len(c.members) for c in confs]
        self._starts = np.cumsum([0] + sizes[:-1]).astype(np.intp)
        self._owner = np.repeat(np.arange(len(confs)), sizes).astype(np.intp)
        self._buf = np.zeros((len(self._members), FRAME), dtype=np.int16)
        self.changed = False

    def tick(self) -> None:
        if self.changed:
            self._layout()
        members = self._members
        if not members:
            return
        buf = self._buf
        for i, ep in enumerate(members):
            jb = ep.jitter
            frame = jb.get() if jb is not None else None
            if frame is None or len(frame) != FRAME:
                buf[i] = 0
            else:
                buf[i] = frame
        wide = buf.astype(np.int32)
        heard = np.add.reduceat(wide, self._starts, axis=0)[self._owner] - wide
        for ci, conf in enumerate(self._confs):
            if conf._overlay:
                start = int(self._starts[ci])
                heard[start:start + len(conf.members)] += conf._overlay.popleft()
        np.clip(heard, -32768, 32767, out=heard)
        heard = heard.astype(np.int16)
        ulaw = g711.encode_array(g711.PCMU, heard)
        alaw = None
        for i, ep in enumerate(members):
            if ep.pt == g711.PCMU:
                ep.send_audio(ulaw[i].tobytes())
            else:
                if alaw is None:
                    alaw = g711.encode_array(g711.PCMA, heard)
                ep.send_audio(alaw[i].tobytes())


def _mixer_of(engine: "MediaEngine") -> _Mixer:
    mixer = getattr(engine, "_conference_mixer", None)
    if mixer is None:
        mixer = engine._conference_mixer = _Mixer(engine)
    return mixer
