"""Errors of the SDP core.

``SdpError`` is a ``SipError`` on purpose: SDP reaches us inside SIP bodies, and the B2BUA
answers a bad body with the error's ``status_hint`` (400 malformed, 488 not acceptable,
RFC 3261 §21.4.26) through the same ``except SipError`` path as any other bad request.
"""

from __future__ import annotations

from node.sip.errors import SipError


class SdpError(SipError):
    """Malformed SDP (400) or SDP we understand but cannot accept (488)."""

    status_hint = 400


class SdpNotAcceptable(SdpError):
    """Well-formed SDP we cannot use: no common codec, unsupported network type, ..."""

    status_hint = 488
