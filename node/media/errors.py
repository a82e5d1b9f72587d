"""Errors of the media core."""

from __future__ import annotations


class MediaError(ValueError):
    """Base of media-core errors. ``status_hint`` follows the project rule; a bad packet is
    a 400-class fault of the sender (a relay counts and drops it, it never answers)."""

    status_hint: int = 400


class RtpError(MediaError):
    """A datagram that is not a well-formed RTP packet (RFC 3550 §5.1)."""


class TelephoneEventError(MediaError):
    """A malformed RFC 4733 telephone-event payload."""
