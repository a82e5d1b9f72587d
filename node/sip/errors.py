"""Errors of the SIP core, each with the status a server should answer it with (h11 style)."""

from __future__ import annotations


class SipError(Exception):
    """Base of every SIP-core error. ``status_hint`` is the response code to send back."""

    status_hint: int = 400

    def __init__(self, reason: str, status_hint: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if status_hint is not None:
            self.status_hint = status_hint


class RemoteProtocolError(SipError):
    """The peer sent something that breaks the protocol (malformed, missing header, ...)."""


class LocalProtocolError(SipError):
    """We were asked to do something the protocol forbids."""

    status_hint = 500
