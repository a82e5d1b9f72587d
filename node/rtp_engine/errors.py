"""Errors of the RTP relay, each with the SIP status a B2BUA should answer the call with."""

from __future__ import annotations

from node.sip.errors import SipError


class RelayError(SipError):
    """The relay cannot anchor this call's media."""

    status_hint = 500


class PortsExhausted(RelayError):
    """Every RTP port of the pool is in use: the node is full (503, RFC 3261 §21.5.4)."""

    status_hint = 503


class BadRemote(RelayError):
    """A media address the relay cannot send to (not an IP literal, wrong family): 488."""

    status_hint = 488
