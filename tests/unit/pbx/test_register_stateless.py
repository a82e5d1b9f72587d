"""The first REGISTER of a phone (no credentials) is challenged statelessly, as Kamailio's sl
does: no server transaction, no timer, no task. The credentialed REGISTER keeps its
transaction, so its retransmissions are absorbed (RFC 3261 §17.2.2) and never register twice."""

from __future__ import annotations

import asyncio
import os
import time

from node.embedded import open_embedded
from node.pbx.authn import Authenticator
from node.pbx.service import PbxService
from node.runtime.config import NodeConfig
from node.sip.auth import answer_challenge, choose_challenge
from node.sip.flow import Flow
from node.sip.parser import parse_datagram
from node.sip.transaction import TransactionLayer
from node.transport.endpoint import SipEndpoint

PHONE = ("127.0.0.2", 5062)
FLOW = Flow("udp", PHONE, ("127.0.0.1", 5060))


class _Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, flow: Flow) -> None:
        self.sent.append(data)

    def bound(self, *a):
        return None


def _register(cseq: int, *, branch: str | None = None, call_id: str = "st-1", auth: str | None = None,
              extra: tuple[str, ...] = ()) -> bytes:
    lines = [
        "REGISTER sip:st.example SIP/2.0",
        f"Via: SIP/2.0/UDP {PHONE[0]}:{PHONE[1]};branch={branch or f'z9hG4bK-st{cseq}'};rport",
        "From: <sip:1001@st.example>;tag=f1", "To: <sip:1001@st.example>",
        f"Call-ID: {call_id}", f"CSeq: {cseq} REGISTER", f"Contact: <sip:1001@{PHONE[0]}:{PHONE[1]}>",
        "Max-Forwards: 70", "Expires: 600", *extra,
    ]
    if auth:
        lines.append(f"Authorization: {auth}")
    return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


async def _node(tmp_path):
    backend = open_embedded(tmp_path)
    t = await backend.config.create_tenant("st", "st.example")
    await backend.config.create_extension(t.id, "1001", "secret-pw-1001")
    layer = TransactionLayer()
    endpoint = SipEndpoint(layer)
    sink = endpoint.transports = _Sink()
    service = PbxService(
        NodeConfig(data_dir=tmp_path, nat_ping_interval=0), endpoint, backend.config,
        backend.locations, backend.cdrs, Authenticator(os.urandom(32)), media_factory=None,
    )
    endpoint.on_event = service.on_event

    async def send(data: bytes, answers: int = 1) -> list:
        sink.sent.clear()
        endpoint.message_received(parse_datagram(data), FLOW)
        for _ in range(100):
            if len(sink.sent) >= answers:
                break
            await asyncio.sleep(0.01)
        return [parse_datagram(raw) for raw in sink.sent]

    return backend, t, layer, sink, send


async def test_the_challenge_leaves_no_transaction_and_a_retransmission_gets_the_same_tag(tmp_path):
    backend, _, layer, sink, send = await _node(tmp_path)
    (first,) = await send(_register(1))
    assert first.status == 401 and first.get("WWW-Authenticate", "").startswith("Digest ")
    assert layer.transaction_count == 0 and layer.get_timer() is None
    via = first.top_via.params
    assert via["rport"] == str(PHONE[1]) and via["received"] == PHONE[0]
    raw = sink.sent[0]
    (again,) = await send(_register(1))
    # RFC 3261 §8.2.7: a stateless UAS gives the same request the same To tag
    assert again.status == 401 and again.to.tag == first.to.tag
    if again.get("WWW-Authenticate") == first.get("WWW-Authenticate"):
        assert sink.sent[0] == raw  # same second, same nonce: the very same bytes
    # another request (another branch and Call-ID) gets another tag
    (other,) = await send(_register(1, branch="z9hG4bK-other", call_id="st-2"))
    assert other.status == 401 and other.to.tag != first.to.tag
    assert layer.transaction_count == 0
    backend.close()


async def test_the_credentialed_register_keeps_its_transaction_and_absorbs_retransmissions(tmp_path):
    backend, t, layer, sink, send = await _node(tmp_path)
    (challenge,) = await send(_register(1))
    ch = choose_challenge([v for k, v in challenge.headers if k == "WWW-Authenticate"])
    cred = answer_challenge(ch, "REGISTER", "sip:st.example", "1001", "secret-pw-1001", "0a0b0c0d", 1, b"")
    (ok,) = await send(_register(2, auth=cred))
    assert ok.status == 200 and ok.to.tag
    raw = sink.sent[0]
    assert layer.transaction_count == 1  # Completed, for Timer J
    (again,) = await send(_register(2, auth=cred))
    assert sink.sent == [raw]  # the transaction's answer again, nothing handled twice
    bindings = await backend.locations.lookup(t.id, "1001", time.time())
    assert [b.contact for b in bindings] == [f"sip:1001@{PHONE[0]}:{PHONE[1]}"]
    backend.close()


async def test_unusual_registers_take_the_full_path(tmp_path):
    backend, _, layer, _, send = await _node(tmp_path)
    # RFC 3261 §8.2.2.3: an unsupported extension is refused before any challenge
    (resp,) = await send(_register(1, extra=("Require: frobnicate",)))
    assert resp.status == 420 and resp.get("Unsupported") == "frobnicate"
    raw = _register(1, branch="z9hG4bK-mf").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    (resp,) = await send(raw)
    assert resp.status == 483
    assert layer.transaction_count == 2  # the 420's and the 483's (Timer J)
    backend.close()
