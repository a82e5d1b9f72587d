"""The CANCEL of an INVITE the node sent (RFC 3261 §9.1).

Why one place: a CANCEL that differs from its INVITE in a field §9.1 pins (the top Via's
branch, the Request-URI, Call-ID, From, To, the CSeq number, the Route set) matches no
server transaction at the next hop, gets 481, and the phone it was meant to silence keeps
ringing. The B2BUA's forks, an application call's legs and the re-INVITEs of a media move
all cancel through ``build_cancel``.
"""

from __future__ import annotations

from node.sip.errors import LocalProtocolError, SipError
from node.sip.message import Request


def build_cancel(invite: Request) -> Request:
    """The CANCEL of ``invite`` exactly as it was sent: same Request-URI, its top Via only
    (same branch: the next hop matches the CANCEL to the INVITE's transaction by it), From,
    To (no tag of a response: §9.1 wants them identical), Call-ID, the CSeq number with
    method CANCEL, every Route (it must take the INVITE's path) and its Max-Forwards.
    LocalProtocolError for anything but an INVITE ready to be sent."""
    if invite.method != "INVITE":
        raise LocalProtocolError(f"only an INVITE can be cancelled (RFC 3261 §9.1), not a {invite.method}")
    try:
        vias = invite.get_all("Via")
        frm, to = invite.get("From"), invite.get("To")
        call_id, seq = invite.call_id, invite.cseq.seq
    except SipError as e:
        raise LocalProtocolError(f"INVITE to cancel is malformed: {e.reason}") from e
    if not vias or frm is None or to is None:
        raise LocalProtocolError("INVITE to cancel lacks its Via, From or To: it was never sent")
    headers = [
        ("Via", vias[0]),
        ("Max-Forwards", invite.get("Max-Forwards") or "70"),
        ("From", frm),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{seq} CANCEL"),
    ]
    headers.extend(("Route", r) for r in invite.get_all("Route"))
    return Request("CANCEL", invite.uri_text, headers)
