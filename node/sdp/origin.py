"""The o= line we present on one leg, kept stable across that leg's offers and answers.

RFC 3264 §8: every SDP an agent sends within a session carries the same o= line, except that
sess-version goes up by one whenever the content changes (and stays put when it does not,
so a repeated offer is recognised as "no change"). A B2BUA that anchors media writes the
SDP of one peer towards the other, so it must hide the peer's origin and keep its own per
leg: one ``LocalOrigin`` per side of a call.
"""

from __future__ import annotations

import secrets

from node.sdp.model import Origin, SessionDescription, addrtype_of


class LocalOrigin:
    """Stamps our o= line on the descriptions sent on one leg."""

    __slots__ = ("username", "sess_id", "version", "_last")

    def __init__(self, username: str = "hivepbx", sess_id: int | None = None, version: int | None = None) -> None:
        self.username = username
        # RFC 8866 §5.2 suggests an NTP timestamp; any number unique enough will do, and a
        # 62-bit random one needs no clock (the sans-I/O core has none)
        self.sess_id = secrets.randbits(62) if sess_id is None else sess_id
        #: the version of the last stamped description (0 before the first one)
        self.version = 1 if version is None else version
        self._last: tuple[str, ...] | None = None

    def stamp(self, sd: SessionDescription, address: str) -> SessionDescription:
        """``sd`` with our o= line; sess-version bumped iff the content differs from last time."""
        origin = Origin(self.username, str(self.sess_id), 0, address, addrtype_of(address))
        content = tuple(sd.replace(origin=origin).lines())
        if content != self._last:
            if self._last is not None:
                self.version += 1
            self._last = content
        return sd.replace(origin=Origin(self.username, str(self.sess_id), self.version, address, addrtype_of(address)))
