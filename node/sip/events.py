"""SIP event notification bodies and the Event header (RFC 6665), pure: no I/O, no state.

dialog-info+xml (RFC 4235) is what phones' busy lamp fields (BLF) subscribe to; a minimal
PIDF (RFC 3863) answers presence (RFC 3856) subscriptions. Each body carries the full
state of the watched resource: a phone that missed a NOTIFY is right again at the next one.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from node.sip.errors import SipError

DIALOG_INFO = "application/dialog-info+xml"
PIDF = "application/pidf+xml"

#: RFC 4235 §3.7.1 dialog states
DIALOG_STATES = ("trying", "proceeding", "early", "confirmed", "terminated")


def parse_event(value: str | None) -> tuple[str, str | None]:
    """(package, id parameter) of an Event header; raises SipError 400 when missing or empty."""
    if not value or not value.strip():
        raise SipError("Bad Event (missing)", 400)
    parts = [p.strip() for p in value.split(";")]
    package = parts[0].lower()
    if not package or any(c.isspace() for c in package):
        raise SipError("Bad Event header", 400)
    ev_id = None
    for p in parts[1:]:
        name, _, v = p.partition("=")
        if name.strip().lower() == "id":
            ev_id = v.strip()
    return package, ev_id


@dataclass(frozen=True, slots=True)
class DialogInfo:
    """One dialog of the watched extension, as RFC 4235 reports it."""

    id: str
    call_id: str
    #: 'initiator' (the extension called) or 'recipient' (it is being called)
    direction: str
    #: one of DIALOG_STATES
    state: str
    #: the other party, a SIP URI (may be empty)
    remote: str = ""
    remote_display: str = ""


def dialog_info_xml(entity: str, version: int, dialogs: list[DialogInfo] | tuple[DialogInfo, ...]) -> bytes:
    """A full-state dialog-info document (RFC 4235 §4.1) for ``entity`` (the watched URI)."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        f'<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info" version="{int(version)}" '
        f'state="full" entity={quoteattr(entity)}>\n',
    ]
    for d in dialogs:
        if d.state not in DIALOG_STATES:
            raise ValueError(f"dialog state {d.state!r} is not one of {DIALOG_STATES}")
        if d.direction not in ("initiator", "recipient"):
            raise ValueError(f"dialog direction {d.direction!r} is not initiator or recipient")
        out.append(f'  <dialog id={quoteattr(d.id)} call-id={quoteattr(d.call_id)} direction="{d.direction}">\n')
        out.append(f"    <state>{d.state}</state>\n")
        if d.remote:
            disp = f" display={quoteattr(d.remote_display)}" if d.remote_display else ""
            out.append(f"    <remote><identity{disp}>{escape(d.remote)}</identity></remote>\n")
        out.append("  </dialog>\n")
    out.append("</dialog-info>\n")
    return "".join(out).encode()


def pidf_xml(entity: str, open_: bool, note: str = "") -> bytes:
    """A minimal PIDF document (RFC 3863): one tuple with a basic status and a note."""
    note_xml = f"    <note>{escape(note)}</note>\n" if note else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<presence xmlns="urn:ietf:params:xml:ns:pidf" entity={quoteattr(entity)}>\n'
        '  <tuple id="t1">\n'
        f"    <status><basic>{'open' if open_ else 'closed'}</basic></status>\n"
        f"{note_xml}"
        "  </tuple>\n"
        "</presence>\n"
    ).encode()
