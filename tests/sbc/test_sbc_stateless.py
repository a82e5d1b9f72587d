"""The SBC's cheaper paths (bench/sbc_inproc.py measures them): BYEs forwarded without
transactions, ACKs of 2xx past the transaction layer, the memoised tenant lookup and the
one-timer sweep of silent nodes. In process: a real transaction layer and proxy, the
sockets replaced by a list, the phone and the node scripted here."""

from __future__ import annotations

from node.sip.flow import Flow
from node.sip.message import Request, Response
from node.sip.parser import parse_datagram
from node.sip.transaction import TransactionLayer, _stamp_via
from node.transport.endpoint import SipEndpoint
from node.transport.sockets import Listen
from sbc.config import NodeTarget, SbcConfig
from sbc.dispatch import Dispatcher
from sbc.health import Health
from sbc.proxy import STATELESS_BRANCH, Proxy, SideAddresses
from sbc.stateless import Forwarded, StatelessTable
from sbc.topology import FLOW_PARAM, NODE_PARAM, Sealer, token_of

SBC = ("127.0.0.1", 5060)
PHONE = ("127.0.0.2", 5062)
NODE = ("127.0.0.3", 5070)
NODE2 = ("127.0.0.5", 5070)
UDP_PHONE = Flow("udp", PHONE, SBC)
UDP_NODE = Flow("udp", NODE, SBC)


def msg(start: str, *headers: str, body: bytes = b"") -> bytes:
    return ("\r\n".join([start, *headers, f"Content-Length: {len(body)}", "", ""])).encode() + body


class Wire:
    """The SBC's transports: what it sends, parsed."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Flow]] = []

    def send(self, data: bytes, flow: Flow) -> None:
        self.sent.append((data, flow))

    def flow_to(self, transport: str, host: str, port: int) -> Flow:
        return Flow(transport, (host, port), SBC, 7 if transport == "tcp" else 0)

    def take(self) -> list[tuple[Request | Response, Flow, bytes]]:
        out = [(parse_datagram(d), f, d) for d, f in self.sent]
        self.sent.clear()
        return out


class Guard:
    def __init__(self) -> None:
        self.ended: list[str] = []

    def check_request(self, msg, source):
        return None

    def dialog_ended(self, call_id: str) -> None:
        self.ended.append(call_id)


class Timers:
    """call_later, run by hand."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, object, tuple]] = []

    def __call__(self, delay, fn, *args):
        self.armed.append((delay, fn, args))
        return object()


def build(nodes=((NODE, "n1"),), node_timeout=2.0):
    cfg = SbcConfig(
        listens=(Listen("udp", *SBC),), nodes=tuple(NodeTarget(i, a[0], a[1]) for a, i in nodes), http_port=0,
        probe_interval=0, keepalive_interval=0, secret=b"test-secret-test-secret", node_timeout=node_timeout,
    )
    layer = TransactionLayer()
    endpoint = SipEndpoint(layer)
    wire = Wire()
    endpoint.transports = wire
    guard = Guard()
    timers = Timers()
    sides = SideAddresses({"udp": SBC})
    proxy = Proxy(cfg, endpoint, Dispatcher(cfg.nodes), Health([n.id for n in cfg.nodes], interval=0),
                  Sealer(cfg.secret), sides, sides, guard=guard, call_later=timers)
    endpoint.on_event = proxy.on_event
    return proxy, wire, guard, timers


def invite(i: int = 1, host: str = "127.0.0.1:5060") -> bytes:
    return msg(f"INVITE sip:2000@{host} SIP/2.0",
               f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK-inv{i};rport",
               f"From: <sip:1000@{PHONE[0]}:{PHONE[1]}>;tag=f{i}", f"To: <sip:2000@{host}>",
               f"Call-ID: call-{i}", "CSeq: 1 INVITE", f"Contact: <sip:1000@{PHONE[0]}:{PHONE[1]}>", "Max-Forwards: 70")


def reply(req: Request, status: int, to_tag: str = "n1", contact: str = "") -> bytes:
    to = req.get("To")
    return msg(f"SIP/2.0 {status} X", *[f"Via: {v}" for v in req.get_all("Via")], f"From: {req.get('From')}",
               f"To: {to};tag={to_tag}" if ";tag=" not in to else f"To: {to}", f"Call-ID: {req.call_id}",
               f"CSeq: {req.get('CSeq')}", *([f"Contact: {contact}"] if contact else []))


def deliver(proxy: Proxy, data: bytes, flow: Flow) -> None:
    proxy.message_received(parse_datagram(data), flow)


def set_up_call(proxy: Proxy, wire: Wire, i: int = 1):
    """INVITE → node, 200 with the node's Contact → phone: the phone's view of the dialog."""
    deliver(proxy, invite(i), UDP_PHONE)
    (fwd, flow, _), = [s for s in wire.take() if s[1].remote == NODE]
    deliver(proxy, reply(fwd, 200, contact=f"<sip:2000@{NODE[0]}:{NODE[1]}>"), UDP_NODE)
    (ok, _, _), = wire.take()
    assert ok.status == 200
    return fwd, ok


def bye_from_phone(ok: Response, branch: str = "z9hG4bK-bye1", flow_host: str = PHONE[0]) -> bytes:
    return msg(f"BYE {ok.contacts[0].uri} SIP/2.0", f"Via: SIP/2.0/UDP {flow_host}:{PHONE[1]};branch={branch};rport",
               f"From: {ok.get('From')}", f"To: {ok.get('To')}", f"Call-ID: {ok.call_id}", "CSeq: 2 BYE",
               "Max-Forwards: 70")


# ------------------------------------------------------------------ the table


async def test_stateless_table_keeps_entries_one_to_two_ttls_and_finds_retransmissions():
    t = StatelessTable(ttl=10.0, max_entries=3)
    e = Forwarded([("Via", "v")], UDP_PHONE, UDP_NODE, "c", True, "n1", "")
    t.add(("b1", "udp", PHONE), "s1", e, now=0.0)
    assert t.get("s1") is e and t.branch_for(("b1", "udp", PHONE)) == "s1"
    t.add(("b2", "udp", PHONE), "s2", e, now=10.0)  # a rotation: s1 is in the old generation
    assert t.get("s1") is e and t.branch_for(("b1", "udp", PHONE)) == "s1"
    t.add(("b3", "udp", PHONE), "s3", e, now=20.0)  # a second one: s1 is gone, s2 is old
    assert t.get("s1") is None and t.branch_for(("b1", "udp", PHONE)) is None
    assert t.get("s2") is e and t.get("s3") is e and len(t) == 2
    for k in range(6):  # past max_entries a generation is swapped early (twice here)
        t.add((f"x{k}", "udp", PHONE), f"x{k}", e, now=21.0)
    assert t.get("s3") is None and len(t) == 4


# ------------------------------------------------------------------ BYE without transactions


async def test_bye_from_a_phone_crosses_statelessly_with_nothing_of_either_side_leaking():
    proxy, wire, guard, _ = build()
    _, ok = set_up_call(proxy, wire)
    layer = proxy.endpoint.layer
    before = layer.transaction_count
    deliver(proxy, bye_from_phone(ok), UDP_PHONE)
    assert layer.transaction_count == before  # no server or client transaction for it
    (bye, flow, data), = wire.take()
    assert flow.remote == NODE and bye.method == "BYE"
    assert bye.uri_text == f"sip:2000@{NODE[0]}:{NODE[1]}"  # the node's own Contact, from the token
    assert bye.get_all("Via")[0].startswith("SIP/2.0/UDP 127.0.0.1:5060;branch=" + STATELESS_BRANCH)
    assert len(bye.get_all("Via")) == 1 and PHONE[0] not in bye.get("Via")  # From/To are the phone's own
    assert bye.get("X-Hive-Source") == f"udp:{PHONE[0]}:{PHONE[1]}"
    assert bye.get("Max-Forwards") == "69"
    # a retransmission reaches the node as the same transaction (its layer absorbs it)
    deliver(proxy, bye_from_phone(ok), UDP_PHONE)
    (again, _, _), = wire.take()
    assert again.top_via.branch == bye.top_via.branch
    # the node's answer goes back with the phone's Via, stamped as a server transaction would
    deliver(proxy, reply(bye, 200), UDP_NODE)
    (resp, flow, data), = wire.take()
    assert flow.remote == PHONE and resp.status == 200
    assert resp.get_all("Via") == [f"SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK-bye1;rport={PHONE[1]}"
                                   f";received={PHONE[0]}"]
    assert NODE[0].encode() not in data and b"sbcl" not in data
    assert guard.ended == ["call-1"]
    deliver(proxy, reply(bye, 200), UDP_NODE)  # a retransmitted 200: relayed, the call ends once
    assert len(wire.take()) == 1 and guard.ended == ["call-1"]


async def test_answer_vias_are_stamped_as_a_server_transaction_stamps_them():
    proxy, wire, _, _ = build()
    _, ok = set_up_call(proxy, wire)
    for i, (via_host, rport, more) in enumerate([("192.168.1.20", ";rport", ""), (PHONE[0], "", ""),
                                                 ("192.168.1.20", "", ", SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKx"),
                                                 (PHONE[0], f";rport=1;received={PHONE[0]}", "")]):
        data = bye_from_phone(ok, f"z9hG4bK-n{i}", flow_host=via_host).replace(b";rport", rport.encode() + more.encode())
        want = parse_datagram(data)
        _stamp_via(want, want.top_via, UDP_PHONE)  # what the transaction layer does to a request it keeps
        deliver(proxy, data, UDP_PHONE)
        (bye, _, _), = wire.take()
        deliver(proxy, reply(bye, 200), UDP_NODE)
        (resp, _, _), = wire.take()
        assert resp.get_all("Via") == want.get_all("Via"), data


async def test_bye_from_a_node_goes_to_the_phones_flow_and_its_answer_back():
    proxy, wire, guard, _ = build()
    fwd, _ = set_up_call(proxy, wire)
    target = fwd.contacts[0].uri  # the phone's Contact as the node sees it: an SBC URI with the flow token
    assert token_of(str(target), FLOW_PARAM)
    deliver(proxy, msg(f"BYE {target} SIP/2.0", f"Via: SIP/2.0/UDP {NODE[0]}:{NODE[1]};branch=z9hG4bKnb;rport",
                       "From: <sip:2000@x>;tag=n1", "To: <sip:1000@y>;tag=f1", "Call-ID: call-1", "CSeq: 5 BYE"),
            UDP_NODE)
    (bye, flow, data), = wire.take()
    assert flow.remote == PHONE and bye.uri_text == f"sip:1000@{PHONE[0]}:{PHONE[1]}"
    assert NODE[0].encode() not in data and b"X-Hive" not in data and proxy.endpoint.layer.transaction_count <= 2
    deliver(proxy, reply(bye, 200), UDP_PHONE)
    (resp, flow, data), = wire.take()
    assert flow.remote == NODE and resp.top_via.branch == "z9hG4bKnb" and PHONE[0].encode() not in data
    assert guard.ended == ["call-1"]


async def test_bye_over_tcp_to_a_udp_node_keeps_its_transactions():
    """Nobody would retransmit it towards the node (RFC 3261 §16.11): the stateful path."""
    proxy, wire, _, _ = build()
    _, ok = set_up_call(proxy, wire)
    layer = proxy.endpoint.layer
    before = layer.transaction_count
    deliver(proxy, bye_from_phone(ok).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), Flow("tcp", PHONE, SBC, 3))
    (bye, _, _), = wire.take()
    assert not bye.top_via.branch.startswith(STATELESS_BRANCH)
    assert layer.transaction_count == before + 2 and len(proxy.stateless) == 0


async def test_a_bye_with_a_forged_token_gets_the_stateful_answer():
    proxy, wire, _, _ = build()
    deliver(proxy, msg(f"BYE sip:2000@127.0.0.1:5060;{NODE_PARAM}=forged SIP/2.0",
                       f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK-f;rport", "From: <sip:a@b>;tag=1",
                       "To: <sip:c@d>;tag=2", "Call-ID: x", "CSeq: 2 BYE"), UDP_PHONE)
    (resp, flow, _), = wire.take()
    assert resp.status == 404 and flow.remote == PHONE and len(proxy.stateless) == 0


# ------------------------------------------------------------------ ACK, tenant, silent nodes


async def test_ack_of_a_2xx_is_forwarded_and_a_non_2xx_ack_stays_with_the_transaction():
    proxy, wire, _, _ = build()
    _, ok = set_up_call(proxy, wire)
    ack = bye_from_phone(ok, "z9hG4bK-ack1").replace(b"BYE ", b"ACK ").replace(b"2 BYE", b"1 ACK")
    deliver(proxy, ack, UDP_PHONE)
    (out, flow, _), = wire.take()
    assert out.method == "ACK" and flow.remote == NODE and out.uri_text == f"sip:2000@{NODE[0]}:{NODE[1]}"
    # a rejected INVITE: the ACK of the 486 is the server transaction's, the node never sees it
    deliver(proxy, invite(2), UDP_PHONE)
    (fwd, _, _), = [s for s in wire.take() if s[1].remote == NODE]
    deliver(proxy, reply(fwd, 486), UDP_NODE)
    sent = wire.take()
    (busy, _, _), = [s for s in sent if s[1].remote == PHONE]
    assert busy.status == 486
    deliver(proxy, msg("ACK sip:2000@127.0.0.1:5060 SIP/2.0", f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK-inv2",
                       f"From: {busy.get('From')}", f"To: {busy.get('To')}", "Call-ID: call-2", "CSeq: 1 ACK"),
            UDP_PHONE)
    assert wire.take() == []


async def test_memoised_tenant_is_what_the_uris_say():
    proxy, _, _, _ = build()
    cases = [
        ("INVITE sip:2000@127.0.0.1 SIP/2.0", "<sip:1000@10.0.0.9>;tag=a", "<sip:2000@127.0.0.1>", "127.0.0.1"),
        ("INVITE sip:2000@127.0.0.1 SIP/2.0", '"A" <sip:1000@alpha.example>;tag=b', "<sip:2000@127.0.0.1>",
         "alpha.example"),
        ("INVITE sip:2000@beta.example SIP/2.0", "<sip:1000@10.0.0.9>;tag=c", "<sip:2000@gamma.example>",
         "beta.example"),
        ("INVITE sip:2000@127.0.0.1 SIP/2.0", "<sip:1000@10.0.0.9>;tag=d", "<sip:2000@gamma.example>",
         "gamma.example"),
        ("INVITE sip:2000@127.0.0.1 SIP/2.0", "sip:1000@delta.example;tag=e", "sip:2000@127.0.0.1", "delta.example"),
    ]
    for _ in range(2):  # the second round answers from the memo
        for start, frm, to, want in cases:
            req = parse_datagram(msg(start, "Via: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKt", f"From: {frm}", f"To: {to}",
                                     "Call-ID: t", "CSeq: 1 INVITE"))
            assert proxy.tenant_of(req, UDP_PHONE) == want, (frm, to)
    assert len(proxy._tenants) == 4  # the addr-spec form is not memoised


async def test_a_silent_node_is_swept_once_and_the_request_moves_to_the_next():
    proxy, wire, _, timers = build(nodes=((NODE, "n1"), (NODE2, "n2")))
    deliver(proxy, invite(3), UDP_PHONE)
    deliver(proxy, invite(4), UDP_PHONE)
    first = {s[0].call_id: s[1].remote for s in wire.take() if s[1].remote in (NODE, NODE2)}
    assert len(timers.armed) == 1  # one timer for both requests
    delay, fn, args = timers.armed.pop()
    assert delay == 2.0
    proxy._now = lambda: proxy.endpoint.now() + 2.5  # node_timeout later, without a word from the nodes
    fn(*args)
    moved = {s[0].call_id: s[1].remote for s in wire.take() if s[0].method == "INVITE"}
    assert set(moved) == {"call-3", "call-4"}
    assert all(moved[c] != first[c] for c in moved)  # each went to the other node
    assert len(timers.armed) == 1  # re-armed for the moved requests


async def test_memoised_long_number_is_what_the_user_part_says():
    proxy, _, _, _ = build()
    for _ in range(2):  # the second round answers from the memo
        for user, want in (("2000", False), ("15557770000", True), ("%2B1555777", True), ("+1-555", False),
                           ("alice", False)):
            req = parse_datagram(msg(f"INVITE sip:{user}@127.0.0.1 SIP/2.0", "Via: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKt",
                                     "From: <sip:a@b>;tag=1", "To: <sip:c@d>", "Call-ID: t", "CSeq: 1 INVITE"))
            assert proxy._long_number(req) is want, user
    assert len(proxy._long_numbers) == 5


def _trying_from_node(fwd: Request) -> bytes:
    return msg("SIP/2.0 100 Trying", *[f"Via: {v}" for v in fwd.get_all("Via")], f"From: {fwd.get('From')}",
               f"To: {fwd.get('To')}", f"Call-ID: {fwd.call_id}", f"CSeq: {fwd.get('CSeq')}")


async def test_a_nodes_100_stops_the_invites_retransmissions_without_an_event():
    from node.sip.transaction import ResponseReceived, TransactionState
    from sbc import metrics as M

    proxy, wire, _, _ = build()
    deliver(proxy, invite(), UDP_PHONE)
    (fwd, _, _), = [s for s in wire.take() if s[1].remote == NODE]
    client, = proxy.endpoint.layer.client_invites()
    assert client.state is TransactionState.CALLING and client._retx is not None
    seen = []
    proxy.endpoint.on_event = lambda ev: (seen.append(ev), proxy.on_event(ev))
    counted = M.RESPONSES.value("1xx", "outside")
    deliver(proxy, _trying_from_node(fwd), UDP_NODE)
    assert wire.take() == [] and not [e for e in seen if isinstance(e, ResponseReceived)]
    assert client.state is TransactionState.PROCEEDING and client._retx is None and client._end is None
    assert client.tu.any_response and M.RESPONSES.value("1xx", "outside") == counted + 1
    deliver(proxy, _trying_from_node(fwd), UDP_NODE)  # a retransmitted 100: still nothing sent
    assert wire.take() == [] and client.state is TransactionState.PROCEEDING


async def test_a_nodes_100_to_a_cancelled_invite_still_sends_the_cancel():
    proxy, wire, _, _ = build()
    deliver(proxy, invite(), UDP_PHONE)
    (fwd, _, _), = [s for s in wire.take() if s[1].remote == NODE]
    deliver(proxy, msg("CANCEL sip:2000@127.0.0.1:5060 SIP/2.0",
                       f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch=z9hG4bK-inv1;rport",
                       f"From: <sip:1000@{PHONE[0]}:{PHONE[1]}>;tag=f1", "To: <sip:2000@127.0.0.1:5060>",
                       "Call-ID: call-1", "CSeq: 1 CANCEL", "Max-Forwards: 70"), UDP_PHONE)
    assert [(m.status, f.remote) for m, f, _ in wire.take()] == [(200, PHONE)]  # no CANCEL before a 1xx
    deliver(proxy, _trying_from_node(fwd), UDP_NODE)
    (cancel, flow, _), = wire.take()
    assert cancel.method == "CANCEL" and flow.remote == NODE and cancel.top_via.branch == fwd.top_via.branch
