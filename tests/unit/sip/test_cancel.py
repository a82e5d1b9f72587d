"""node/sip/cancel.py: the CANCEL of an INVITE we sent (RFC 3261 §9.1), checked field by
field and by the next hop's transaction layer, which must match it to the INVITE."""

from __future__ import annotations

import pytest

from node.sip.cancel import build_cancel
from node.sip.dialog import Dialog
from node.sip.errors import LocalProtocolError
from node.sip.flow import Flow
from node.sip.message import Request
from node.sip.parser import parse_datagram
from node.sip.transaction import RequestReceived, TransactionLayer

#: the next hop's view of us
FROM_US = Flow("udp", ("127.0.0.1", 5060), ("127.0.0.3", 5060))
TOP_VIA = "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours-1;rport"


def _invite(**over) -> Request:
    headers = [
        ("Via", TOP_VIA),
        ("Via", "SIP/2.0/UDP 10.0.0.9:5070;branch=z9hG4bK-phone;received=10.0.0.9"),
        ("Max-Forwards", "69"),
        ("Route", "<sip:p1.example.com;lr>, <sip:p2.example.com;lr>"),
        ("From", '"Alice" <sip:alice@example.com>;tag=ft1'),
        ("To", "<sip:bob@example.com>"),
        ("Call-ID", "c1@127.0.0.1"),
        ("CSeq", "7 INVITE"),
        ("Contact", "<sip:alice@127.0.0.1:5060>"),
        ("Content-Type", "application/sdp"),
    ]
    headers = [(n, over.pop(n, v)) for n, v in headers if over.get(n, "") is not None]
    return Request("INVITE", "sip:bob@127.0.0.3:5060;transport=udp", headers, b"v=0\r\n")


def test_the_cancel_repeats_what_rfc3261_9_1_pins_and_nothing_else():
    inv = _invite()
    c = build_cancel(inv)
    assert c.method == "CANCEL" and c.uri_text == inv.uri_text
    assert c.get_all("Via") == [TOP_VIA]  # the top Via only, same branch
    assert c.top_via.branch == inv.top_via.branch
    assert (c.get("From"), c.get("To"), c.call_id) == (inv.get("From"), inv.get("To"), inv.call_id)
    assert (c.cseq.seq, c.cseq.method) == (7, "CANCEL")
    assert c.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]  # in order
    assert c.max_forwards == 69
    assert "Contact" not in c and "Content-Type" not in c and c.body == b""
    # the INVITE is left as it was (its transaction still retransmits it)
    assert len(inv.get_all("Via")) == 2 and inv.cseq.method == "INVITE"


def test_an_in_dialog_reinvite_keeps_its_to_tag_and_route_set():
    d = Dialog("c2@127.0.0.1", "lt", "rt", "<sip:alice@example.com>", "<sip:bob@example.com>", 4, 0,
               "sip:bob@10.0.0.2:5062", ["<sip:edge.example.com;lr>"], FROM_US, "<sip:alice@127.0.0.1>")
    reinv = d.create_request("INVITE", "127.0.0.1:5060", body=b"v=0\r\n", content_type="application/sdp")
    c = build_cancel(reinv)
    assert c.uri_text == "sip:bob@10.0.0.2:5062" and c.to.tag == "rt" and c.from_.tag == "lt"
    assert c.cseq.seq == reinv.cseq.seq == 5 and c.get_all("Route") == ["<sip:edge.example.com;lr>"]
    assert c.get("Via") == reinv.get("Via") and c.max_forwards == 70


def test_without_a_max_forwards_the_cancel_gets_70_and_without_routes_none():
    c = build_cancel(_invite(**{"Max-Forwards": None, "Route": None}))
    assert c.max_forwards == 70 and c.get_all("Route") == []


def test_the_next_hop_matches_the_cancel_to_the_invite_transaction():
    """What §9.1 is for: the receiving side's transaction layer finds the INVITE's server
    transaction from the CANCEL as it arrives on the wire."""
    far = TransactionLayer()
    inv = parse_datagram(_invite().to_bytes())
    far.receive(inv, FROM_US, 0.0)
    assert isinstance(far.next_event(), RequestReceived)
    cancel = parse_datagram(build_cancel(_invite()).to_bytes())
    assert isinstance(cancel, Request)
    txn = far.find_invite_server(cancel)
    assert txn is not None and txn.request.call_id == inv.call_id
    # a CANCEL of another INVITE (another branch) matches nothing
    other = _invite(Via="SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours-2;rport")
    assert far.find_invite_server(parse_datagram(build_cancel(other).to_bytes())) is None


@pytest.mark.parametrize("bad", [
    Request("BYE", "sip:bob@example.com", [("Via", TOP_VIA), ("From", "<sip:a@x>;tag=1"), ("To", "<sip:b@x>"),
                                          ("Call-ID", "c"), ("CSeq", "1 BYE")]),
    _invite(Via=None),
    _invite(To=None),
    _invite(CSeq=None),
    _invite(CSeq="x INVITE"),
])
def test_anything_but_a_sendable_invite_is_a_local_error(bad):
    with pytest.raises(LocalProtocolError):
        build_cancel(bad)
