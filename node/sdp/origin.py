"""The o= line we present on one leg, kept stable across that leg's offers and answers.

RFC 3264 §8: every SDP an agent sends within a session carries the same o= line, except that
sess-version goes up by one whenever the content changes (and stays put when it does not,
so a repeated offer is recognised as "no change"). A B2BUA that anchors media writes the
SDP of one peer towards the other, so it must hide the peer's origin and keep its own per
leg: one ``LocalOrigin`` per side of a call.
"""

from __future__ import annotations

import secrets

from node.sdp.model import Origin, SessionDescription, addrtype_of, serialize


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
        #: the lines of the last stamped description with sess-version 0 (plain strings, so a
        #: call kept alive for its transactions' timers holds no SDP objects for the GC to scan)
        self._last: tuple[str, ...] | None = None

    def stamp(self, sd: SessionDescription, address: str) -> SessionDescription:
        """``sd`` with our o= line; sess-version bumped iff the content differs from last time."""
        self._render(sd, address)
        return _with_origin(sd, self._origin(address, self.version))

    def stamp_bytes(self, sd: SessionDescription, address: str) -> bytes:
        """``stamp(sd, address).to_bytes()``, rendering the description once instead of twice
        and building no description objects."""
        lines = sd.lines()
        # v= comes first and o= second, unless a v= sneaked into ``other`` (never from parse)
        i = 1 if lines[1].startswith("o=") else lines.index(f"o={sd.origin}")
        return self.stamp_lines(lines, i, address)

    def stamp_lines(self, lines: list[str], i: int, address: str) -> bytes:
        """The body of ``lines`` (a description's lines, ``lines[i]`` its o= line, replaced
        here) with our o= line: for callers that render descriptions without the model
        (node/sdp/anchoring.py ``RelayReading``)."""
        self._bump(lines, i, address)
        lines[i] = self._origin_line(address, self.version)
        return serialize(lines)

    def _bump(self, lines: list[str], i: int, address: str) -> None:
        """Bump the version if the content changed (compared with our o= line at sess-version
        0 in ``lines[i]``, left there)."""
        lines[i] = self._origin_line(address, 0)
        content = tuple(lines)
        if content != self._last:
            if self._last is not None:
                self.version += 1
            self._last = content

    def _origin(self, address: str, version: int) -> Origin:
        return Origin(self.username, str(self.sess_id), version, address, addrtype_of(address))

    def _origin_line(self, address: str, version: int) -> str:
        # f"o={self._origin(address, version)}" without the Origin
        return f"o={self.username} {self.sess_id} {version} IN {addrtype_of(address)} {address}"

    def _render(self, sd: SessionDescription, address: str) -> tuple[list[str], int]:
        """Bump the version if the content changed; the lines of ``sd`` with our o= line at
        sess-version 0, and the index of that line."""
        lines = sd.lines()
        # v= comes first and o= second, unless a v= sneaked into ``other`` (never from parse)
        i = 1 if lines[1].startswith("o=") else lines.index(f"o={sd.origin}")
        self._bump(lines, i, address)
        return lines, i


def _with_origin(sd: SessionDescription, origin: Origin) -> SessionDescription:
    # sd.replace(origin=origin) without the cost of dataclasses.replace
    return SessionDescription(origin, sd.name, sd.connection, sd.timing, sd.attributes, sd.media, sd.other, sd.version)
