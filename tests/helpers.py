"""Sans-I/O test helpers: flows, message builders, a wire round trip and a fake clock."""

from __future__ import annotations

from node.sip.flow import Flow
from node.sip.ids import new_branch
from node.sip.message import Message, Request, Response
from node.sip.parser import parse_datagram

#: the peer (a phone) and us, over UDP and over one TCP connection
UDP = Flow("udp", ("127.0.0.2", 5062), ("127.0.0.1", 5060))
TCP = Flow("tcp", ("127.0.0.2", 40001), ("127.0.0.1", 5060), conn_id=7)


def request(
    method: str = "INVITE",
    *,
    flow: Flow = UDP,
    branch: str | None = None,
    sent_by: str | None = None,
    via_params: str = ";rport",
    uri: str = "sip:bob@example.com",
    call_id: str = "call-1@127.0.0.2",
    cseq: int = 1,
    from_tag: str = "ft1",
    to_tag: str | None = None,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> Request:
    """A request as the peer on ``flow`` would send it (its Via names the flow's remote end)."""
    if branch is None:
        branch = new_branch()
    if sent_by is None:
        sent_by = f"{flow.remote[0]}:{flow.remote[1]}"
    branch_param = f";branch={branch}" if branch else ""
    hdrs = [
        ("Via", f"SIP/2.0/{flow.via_transport} {sent_by}{branch_param}{via_params}"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:alice@example.com>;tag={from_tag}"),
        ("To", f"<{uri}>" + (f";tag={to_tag}" if to_tag else "")),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
    ]
    if headers:
        hdrs.extend(headers)
    return Request(method, uri, hdrs, body)


def wire(msg: Message) -> Message:
    """``msg`` as the far end receives it: serialised and parsed again."""
    return parse_datagram(msg.to_bytes())


def sent(layer) -> list[tuple[Message, Flow]]:
    """Drain the layer's datagrams, parsed."""
    return [(parse_datagram(data), flow) for data, flow in layer.datagrams_to_send()]


def events(layer) -> list:
    out = []
    ev = layer.next_event()
    while ev is not None:
        out.append(ev)
        ev = layer.next_event()
    return out


def run_timers(layer, until: float) -> list[tuple[float, Message, Flow]]:
    """Fake clock: fire every timer due up to ``until``, each at its exact deadline, and
    return what was sent, stamped with the time it was sent."""
    out: list[tuple[float, Message, Flow]] = []
    at = layer.get_timer()
    while at is not None and at <= until:
        layer.handle_timer(at)
        out.extend((at, m, f) for m, f in sent(layer))
        at = layer.get_timer()
    return out


def status_of(msg: Message) -> int | str:
    """A response's status or a request's method: what a test usually asserts on."""
    return msg.status if isinstance(msg, Response) else msg.method  # type: ignore[union-attr]
