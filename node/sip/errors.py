"""Errors of the SIP core, each with the status a server should answer it with (h11 style)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from node.sip.message import Message


class SipError(Exception):
    """Base of every SIP-core error. ``status_hint`` is the response code to send back."""

    status_hint: int = 400

    def __init__(self, reason: str, status_hint: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status_hint is not None:
            self.status_hint = status_hint


class RemoteProtocolError(SipError):
    """The peer sent something that breaks the protocol (malformed, missing header, ...).

    ``message`` is the request or response as far as it parsed when its start line and
    headers could be read, so the caller can still answer a bad request (400, 505, 513 need
    its Via, From, To, Call-ID and CSeq, RFC 3261 §8.2.6). It is None when the bytes were not
    recognisably SIP: those are dropped, never answered. Its typed views may raise.
    """

    message: "Message | None" = None


class LocalProtocolError(SipError):
    """We were asked to do something the protocol forbids."""

    status_hint = 500
