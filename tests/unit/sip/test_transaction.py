"""RFC 3261 §17 / RFC 6026 transaction layer, driven with a fake clock (now=0.0 and step)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.sip.errors import LocalProtocolError, RemoteProtocolError
from node.sip.flow import Flow
from node.sip.message import Request, make_response
from node.sip.parser import parse_datagram
from node.sip.transaction import (
    ClientTransaction,
    RequestReceived,
    ResponseReceived,
    ServerTransaction,
    TransactionLayer,
    TransactionState,
    TransactionTimedOut,
)
from tests.helpers import TCP, UDP, events, request, run_timers, sent, status_of, wire

T1, T2, T4 = 0.5, 4.0, 5.0
T64 = 64 * T1

#: the far end of our client transactions (a trunk)
TRUNK = Flow("udp", ("127.0.0.3", 5060), ("127.0.0.1", 5060))
TRUNK_TCP = Flow("tcp", ("127.0.0.3", 5060), ("127.0.0.1", 5060), conn_id=9)


@pytest.fixture
def layer() -> TransactionLayer:
    return TransactionLayer(t1=T1, t2=T2, t4=T4)


def our_request(method: str = "INVITE", flow: Flow = TRUNK, **kw) -> Request:
    """A request the TU builds (its Via is ours)."""
    kw.setdefault("sent_by", "127.0.0.1:5060")
    kw.setdefault("uri", "sip:carol@127.0.0.3")
    return request(method, flow=flow, **kw)


def answer(req: Request, status: int, to_tag: str | None = "tt1", **kw):
    """``req``'s response as it arrives from the wire."""
    return wire(make_response(req, status, to_tag=to_tag, **kw))


def drain_all(layer: TransactionLayer) -> None:
    sent(layer)
    events(layer)


def assert_gone(layer: TransactionLayer) -> None:
    """No transaction and no live timer left: nothing leaks."""
    assert layer.transaction_count == 0
    assert layer.get_timer() is None


# ===================================================================== client INVITE
class TestClientInvite:
    def test_timer_a_doubles_without_cap_and_timer_b_times_out(self, layer):
        inv = our_request()
        txn = layer.send_request(inv, TRUNK, 0.0)
        assert isinstance(txn, ClientTransaction) and txn.state is TransactionState.CALLING
        assert [status_of(m) for m, _ in sent(layer)] == ["INVITE"]
        out = run_timers(layer, 100.0)
        retrans = [t for t, m, f in out if status_of(m) == "INVITE"]
        assert retrans == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
        assert all(f == TRUNK for _, _, f in out)
        evs = events(layer)
        assert evs == [TransactionTimedOut(txn)]
        assert txn.state is TransactionState.TERMINATED
        assert_gone(layer)

    def test_timer_b_fires_at_64_t1(self, layer):
        txn = layer.send_request(our_request(), TRUNK, 10.0)
        drain_all(layer)
        run_timers(layer, 10.0 + T64 - 0.001)
        assert events(layer) == [] and layer.transaction_count == 1
        run_timers(layer, 10.0 + T64)
        assert events(layer) == [TransactionTimedOut(txn)]

    def test_provisional_stops_timers_a_and_b(self, layer):
        inv = our_request()
        txn = layer.send_request(inv, TRUNK, 0.0)
        drain_all(layer)
        layer.receive(answer(inv, 100, to_tag=None), TRUNK, 0.1)
        layer.receive(answer(inv, 180), TRUNK, 0.2)
        assert [e.response.status for e in events(layer)] == [100, 180]
        assert txn.state is TransactionState.PROCEEDING and txn.last_response.status == 180
        assert run_timers(layer, 1000.0) == []
        assert events(layer) == []  # §17.1.1.2: no Timer B in Proceeding
        assert layer.get_timer() is None and layer.transaction_count == 1

    def test_non_2xx_is_acked_by_the_layer(self, layer):
        inv = our_request(headers=[("Route", "<sip:p1.example.com;lr>"), ("Route", "<sip:p2.example.com;lr>")])
        txn = layer.send_request(inv, TRUNK, 0.0)
        drain_all(layer)
        busy = answer(inv, 486, to_tag="callee-tag")
        layer.receive(busy, TRUNK, 0.2)
        assert events(layer) == [ResponseReceived(busy, txn)]
        assert txn.state is TransactionState.COMPLETED
        [(ack, flow)] = sent(layer)
        assert flow == TRUNK
        # RFC 3261 §17.1.1.3
        assert ack.method == "ACK" and ack.uri_text == inv.uri_text
        assert ack.top_via.branch == inv.top_via.branch and len(ack.vias) == 1
        assert ack.to.tag == "callee-tag"
        assert ack.from_.tag == inv.from_.tag and ack.call_id == inv.call_id
        assert (ack.cseq.seq, ack.cseq.method) == (inv.cseq.seq, "ACK")
        assert ack.get_all("Route") == ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        assert ack.body == b""

    def test_completed_absorbs_retransmitted_finals_and_reacks_until_timer_d(self, layer):
        inv = our_request()
        txn = layer.send_request(inv, TRUNK, 0.0)
        drain_all(layer)
        busy = answer(inv, 486)
        layer.receive(busy, TRUNK, 0.2)
        [(ack, _)] = sent(layer)
        events(layer)
        for t in (1.0, 2.0):
            layer.receive(answer(inv, 486), TRUNK, t)
            [(again, _)] = sent(layer)
            assert again.to_bytes() == ack.to_bytes()
        assert events(layer) == []  # absorbed
        assert run_timers(layer, 0.2 + 32.0 - 0.001) == [] and layer.transaction_count == 1
        run_timers(layer, 0.2 + 32.0)
        assert txn.state is TransactionState.TERMINATED and events(layer) == []
        assert_gone(layer)

    def test_2xx_moves_to_accepted_and_retransmissions_reach_the_tu(self, layer):
        inv = our_request()
        txn = layer.send_request(inv, TRUNK, 0.0)
        drain_all(layer)
        ok = answer(inv, 200)
        layer.receive(ok, TRUNK, 0.3)
        assert sent(layer) == []  # the TU ACKs a 2xx
        assert events(layer) == [ResponseReceived(ok, txn)]
        assert txn.state is TransactionState.ACCEPTED
        again = answer(inv, 200)
        fork = answer(inv, 200, to_tag="other-fork")
        layer.receive(again, TRUNK, 1.0)
        layer.receive(fork, TRUNK, 1.1)
        layer.receive(answer(inv, 180), TRUNK, 1.2)  # absorbed in Accepted
        layer.receive(answer(inv, 486), TRUNK, 1.3)  # absorbed in Accepted
        assert events(layer) == [ResponseReceived(again, txn), ResponseReceived(fork, txn)]
        assert run_timers(layer, 0.3 + T64 - 0.001) == [] and layer.transaction_count == 1
        run_timers(layer, 0.3 + T64)  # Timer M
        assert events(layer) == []
        assert_gone(layer)
        late = answer(inv, 200)
        layer.receive(late, TRUNK, 40.0)
        assert events(layer) == [ResponseReceived(late, None)]

    def test_reliable_no_retransmission_timer_b_still_runs(self, layer):
        inv = our_request(flow=TRUNK_TCP)
        txn = layer.send_request(inv, TRUNK_TCP, 0.0)
        assert len(sent(layer)) == 1
        assert run_timers(layer, 100.0) == []
        assert events(layer) == [TransactionTimedOut(txn)]
        assert_gone(layer)

    def test_reliable_non_2xx_acked_and_terminated_at_once(self, layer):
        inv = our_request(flow=TRUNK_TCP)
        txn = layer.send_request(inv, TRUNK_TCP, 0.0)
        drain_all(layer)
        layer.receive(answer(inv, 603), TRUNK_TCP, 0.5)
        [(ack, flow)] = sent(layer)
        assert ack.method == "ACK" and flow == TRUNK_TCP
        assert [type(e) for e in events(layer)] == [ResponseReceived]
        assert txn.state is TransactionState.TERMINATED  # Timer D = 0
        assert_gone(layer)

    def test_reliable_2xx_still_waits_timer_m(self, layer):
        inv = our_request(flow=TRUNK_TCP)
        layer.send_request(inv, TRUNK_TCP, 0.0)
        layer.receive(answer(inv, 200), TRUNK_TCP, 0.5)
        assert layer.get_timer() == 0.5 + T64  # RFC 6026 Timer M on any transport
        run_timers(layer, 0.5 + T64)
        assert_gone(layer)

    def test_cancel_is_its_own_transaction_and_guards_the_invite(self, layer):
        inv = our_request()
        inv_txn = layer.send_request(inv, TRUNK, 0.0)
        layer.receive(answer(inv, 180), TRUNK, 0.1)
        drain_all(layer)
        cancel = Request("CANCEL", inv.uri_text, [
            ("Via", inv.get("Via")), ("Max-Forwards", "70"), ("From", inv.get("From")),
            ("To", inv.get("To")), ("Call-ID", inv.call_id), ("CSeq", f"{inv.cseq.seq} CANCEL"),
        ])
        c_txn = layer.send_request(cancel, TRUNK, 1.0)
        assert c_txn is not inv_txn and layer.transaction_count == 2
        ok = answer(cancel, 200)
        layer.receive(ok, TRUNK, 1.1)
        assert events(layer) == [ResponseReceived(ok, c_txn)]
        assert inv_txn.state is TransactionState.PROCEEDING
        # the callee never sends its 487: RFC 3261 §9.1 gives up after 64*T1
        run_timers(layer, 1.0 + T64)
        assert events(layer) == [TransactionTimedOut(inv_txn)]
        assert_gone(layer)

    def test_487_after_cancel_ends_normally(self, layer):
        inv = our_request()
        inv_txn = layer.send_request(inv, TRUNK, 0.0)
        layer.receive(answer(inv, 180), TRUNK, 0.1)
        cancel = Request("CANCEL", inv.uri_text, [
            ("Via", inv.get("Via")), ("From", inv.get("From")), ("To", inv.get("To")),
            ("Call-ID", inv.call_id), ("CSeq", f"{inv.cseq.seq} CANCEL"),
        ])
        layer.send_request(cancel, TRUNK, 1.0)
        layer.receive(answer(cancel, 200), TRUNK, 1.1)
        layer.receive(answer(inv, 487), TRUNK, 1.2)
        drain_all(layer)
        assert inv_txn.state is TransactionState.COMPLETED
        run_timers(layer, 1000.0)
        assert not any(isinstance(e, TransactionTimedOut) for e in events(layer))
        assert_gone(layer)


# ================================================================= client non-INVITE
class TestClientNonInvite:
    def test_timer_e_doubles_to_t2_and_timer_f_times_out(self, layer):
        txn = layer.send_request(our_request("OPTIONS"), TRUNK, 0.0)
        assert txn.state is TransactionState.TRYING
        sent(layer)
        out = run_timers(layer, 100.0)
        assert [t for t, _, _ in out] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
        assert events(layer) == [TransactionTimedOut(txn)]
        assert_gone(layer)

    def test_after_a_provisional_timer_e_is_t2(self, layer):
        req = our_request("BYE")
        txn = layer.send_request(req, TRUNK, 0.0)
        sent(layer)
        assert [t for t, _, _ in run_timers(layer, 1.0)] == [0.5]
        prov = answer(req, 100, to_tag=None)
        layer.receive(prov, TRUNK, 1.0)
        assert txn.state is TransactionState.PROCEEDING
        assert events(layer) == [ResponseReceived(prov, txn)]
        out = run_timers(layer, 100.0)
        assert [t for t, _, _ in out] == [1.5, 5.5, 9.5, 13.5, 17.5, 21.5, 25.5, 29.5]
        assert events(layer) == [TransactionTimedOut(txn)]  # Timer F still applies

    def test_final_completes_absorbs_retransmissions_timer_k(self, layer):
        req = our_request("BYE")
        txn = layer.send_request(req, TRUNK, 0.0)
        sent(layer)
        ok = answer(req, 200)
        layer.receive(ok, TRUNK, 0.7)
        assert events(layer) == [ResponseReceived(ok, txn)]
        assert txn.state is TransactionState.COMPLETED
        layer.receive(answer(req, 200), TRUNK, 1.0)
        assert events(layer) == [] and sent(layer) == []
        assert run_timers(layer, 0.7 + T4 - 0.001) == [] and layer.transaction_count == 1
        run_timers(layer, 0.7 + T4)
        assert_gone(layer)

    def test_reliable_no_timer_e_and_timer_k_zero(self, layer):
        req = our_request("OPTIONS", flow=TRUNK_TCP)
        txn = layer.send_request(req, TRUNK_TCP, 0.0)
        sent(layer)
        assert layer.get_timer() == T64  # only Timer F
        layer.receive(answer(req, 200), TRUNK_TCP, 0.1)
        assert txn.state is TransactionState.TERMINATED
        assert_gone(layer)

    def test_unmatched_response_goes_to_the_tu_with_no_transaction(self, layer):
        stray = answer(our_request("OPTIONS"), 200)
        layer.receive(stray, TRUNK, 0.0)
        assert events(layer) == [ResponseReceived(stray, None)]

    def test_responses_match_on_branch_and_cseq_method(self, layer):
        inv = our_request()
        t_inv = layer.send_request(inv, TRUNK, 0.0)
        other = our_request("OPTIONS", branch=inv.top_via.branch)  # same branch, other method
        t_opt = layer.send_request(other, TRUNK, 0.0)
        r1, r2 = answer(other, 200), answer(inv, 180)
        layer.receive(r1, TRUNK, 0.1)
        layer.receive(r2, TRUNK, 0.1)
        assert events(layer) == [ResponseReceived(r1, t_opt), ResponseReceived(r2, t_inv)]

    def test_send_request_refuses_ack_and_branch_reuse(self, layer):
        with pytest.raises(LocalProtocolError):
            layer.send_request(our_request("ACK"), TRUNK, 0.0)
        req = our_request("OPTIONS")
        layer.send_request(req, TRUNK, 0.0)
        with pytest.raises(LocalProtocolError):
            layer.send_request(our_request("OPTIONS", branch=req.top_via.branch), TRUNK, 0.0)
        assert layer.transaction_count == 1

    def test_send_stateless(self, layer):
        ack = our_request("ACK")
        layer.send_stateless(ack, TRUNK)
        assert [(status_of(m), f) for m, f in sent(layer)] == [("ACK", TRUNK)]
        assert layer.transaction_count == 0 and layer.get_timer() is None


# ===================================================================== server INVITE
def new_invite(layer, now=0.0, flow=UDP, **kw):
    inv = wire(request("INVITE", flow=flow, **kw))
    layer.receive(inv, flow, now)
    [ev] = events(layer)
    assert isinstance(ev, RequestReceived) and ev.request is inv and ev.flow == flow
    return inv, ev.transaction


class TestServerInvite:
    def test_100_trying_at_once_and_request_delivered_once(self, layer):
        inv, txn = new_invite(layer)
        assert isinstance(txn, ServerTransaction) and txn.state is TransactionState.PROCEEDING
        [(trying, flow)] = sent(layer)
        assert trying.status == 100 and flow == UDP
        assert trying.top_via.branch == inv.top_via.branch and trying.to.tag is None
        assert txn.last_response.status == 100
        # a retransmitted INVITE re-sends the 100, the TU does not see it again
        layer.receive(wire(inv), UDP, 0.5)
        assert events(layer) == []
        assert [m.status for m, _ in sent(layer)] == [100]

    def test_retransmitted_invite_resends_the_last_provisional(self, layer):
        inv, txn = new_invite(layer)
        sent(layer)
        layer.send_response(make_response(inv, 180, to_tag="x"), 0.1)
        assert [m.status for m, _ in sent(layer)] == [180]
        layer.receive(wire(inv), UDP, 0.5)
        assert [m.status for m, _ in sent(layer)] == [180]
        assert events(layer) == []

    def test_without_100_trying(self):
        layer = TransactionLayer(t1=T1, send_100_trying=False)
        inv, txn = new_invite(layer)
        assert sent(layer) == []
        layer.receive(wire(inv), UDP, 0.5)  # nothing to re-send yet: absorbed
        assert sent(layer) == [] and events(layer) == []
        assert txn.last_response is None

    def test_non_2xx_timer_g_until_timer_h(self, layer):
        inv, txn = new_invite(layer)
        sent(layer)
        layer.send_response(make_response(inv, 486, to_tag="x"), 1.0)
        assert [m.status for m, _ in sent(layer)] == [486]
        assert txn.state is TransactionState.COMPLETED
        out = run_timers(layer, 100.0)
        assert [t - 1.0 for t, _, _ in out] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
        assert {m.status for _, m, _ in out} == {486}
        assert events(layer) == [TransactionTimedOut(txn)]  # Timer H: the ACK never came
        assert_gone(layer)

    def test_ack_confirms_stops_g_and_timer_i_ends_it(self, layer):
        inv, txn = new_invite(layer)
        sent(layer)
        resp = make_response(inv, 404, to_tag="x")
        layer.send_response(resp, 0.0)
        sent(layer)
        assert [t for t, _, _ in run_timers(layer, 2.0)] == [0.5, 1.5]
        ack = wire(_ack_of(inv, resp))
        layer.receive(ack, UDP, 2.0)
        assert events(layer) == []  # the ACK of a non-2xx is the transaction's
        assert txn.state is TransactionState.CONFIRMED
        layer.receive(wire(ack), UDP, 3.0)  # retransmitted ACK absorbed
        layer.receive(wire(inv), UDP, 3.5)  # so is a late INVITE retransmission
        assert events(layer) == [] and sent(layer) == []
        assert layer.get_timer() == 2.0 + T4  # Timer I
        assert run_timers(layer, 2.0 + T4) == []
        assert events(layer) == []
        assert_gone(layer)

    def test_retransmitted_invite_in_completed_resends_final(self, layer):
        inv, _ = new_invite(layer)
        sent(layer)
        layer.send_response(make_response(inv, 486, to_tag="x"), 0.0)
        sent(layer)
        layer.receive(wire(inv), UDP, 0.2)
        assert [m.status for m, _ in sent(layer)] == [486]

    def test_2xx_accepted_tu_retransmits_timer_l(self, layer):
        inv, txn = new_invite(layer)
        sent(layer)
        ok = make_response(inv, 200, to_tag="x")
        layer.send_response(ok, 1.0)
        assert [m.status for m, _ in sent(layer)] == [200]
        assert txn.state is TransactionState.ACCEPTED
        assert run_timers(layer, 5.0) == []  # the layer never retransmits a 2xx itself
        layer.receive(wire(inv), UDP, 2.0)  # RFC 6026: absorbed in Accepted
        assert sent(layer) == [] and events(layer) == []
        layer.send_response(ok, 2.0)  # the TU's retransmission goes out
        layer.send_response(make_response(inv, 486, to_tag="x"), 2.1)  # a late final is discarded
        assert [m.status for m, _ in sent(layer)] == [200]
        # the ACK of a 2xx (a new branch) is the TU's
        ack = wire(request("ACK", branch=None, to_tag="x", call_id=inv.call_id, from_tag=inv.from_.tag))
        layer.receive(ack, UDP, 2.5)
        assert events(layer) == [RequestReceived(ack, UDP, None)]
        assert layer.get_timer() == 1.0 + T64
        run_timers(layer, 1.0 + T64)  # Timer L
        assert events(layer) == []
        assert_gone(layer)

    def test_ack_reusing_the_invite_branch_in_accepted_goes_to_the_tu(self, layer):
        inv, txn = new_invite(layer)
        ok = make_response(inv, 200, to_tag="x")
        layer.send_response(ok, 0.0)
        drain_all(layer)
        ack = wire(_ack_of(inv, ok))
        layer.receive(ack, UDP, 0.1)
        assert events(layer) == [RequestReceived(ack, UDP, None)]
        assert txn.state is TransactionState.ACCEPTED

    def test_2xx_after_timer_l_goes_to_the_recorded_flow(self, layer):
        nat = Flow("udp", ("127.0.0.9", 41000), ("127.0.0.1", 5060))  # the phone's NAT binding
        inv, txn = new_invite(layer, flow=nat, sent_by="10.0.0.5:5060", via_params="")
        ok = make_response(inv, 200, to_tag="x")
        layer.send_response(ok, 0.0)
        run_timers(layer, T64)
        assert_gone(layer)
        sent(layer)
        layer.send_response(ok, T64 + 0.1)
        [(again, flow)] = sent(layer)
        assert again.status == 200 and flow == nat

    def test_unmatched_response_is_routed_by_via_received_rport(self, layer):
        # RFC 3261 §18.2.2 + RFC 3581: nothing recorded, so the Via decides
        req = wire(request("OPTIONS", sent_by="10.0.0.5:5060"))
        nat = Flow("udp", ("127.0.0.9", 41000), ("127.0.0.1", 5060))
        # stamp received/rport the way receive() does, through a layer that then forgets it
        other = TransactionLayer()
        other.receive(req, nat, 0.0)
        assert req.top_via.params["received"] == "127.0.0.9" and req.top_via.params["rport"] == "41000"
        layer.send_response(make_response(req, 200), 0.0)
        [(resp, flow)] = sent(layer)
        assert flow.transport == "udp" and flow.remote == ("127.0.0.9", 41000)
        # without rport: received address, sent-by port
        req2 = wire(request("OPTIONS", sent_by="10.0.0.5:5070", via_params=";received=127.0.0.8"))
        layer.send_response(make_response(req2, 200), 0.0)
        [(_, flow2)] = sent(layer)
        assert flow2.remote == ("127.0.0.8", 5070)

    def test_via_is_stamped_with_received_and_rport(self, layer):
        nat = Flow("udp", ("127.0.0.9", 41000), ("127.0.0.1", 5060))
        inv, _ = new_invite(layer, flow=nat, sent_by="10.0.0.5:5060")
        [(trying, _)] = sent(layer)
        for via in (inv.top_via, trying.top_via):
            assert via.params["received"] == "127.0.0.9" and via.params["rport"] == "41000"
            assert (via.host, via.port) == ("10.0.0.5", 5060)
        # a response made from the request still matches its transaction
        layer.send_response(make_response(inv, 180, to_tag="x"), 0.1)
        assert [(m.status, f) for m, f in sent(layer)] == [(180, nat)]

    def test_reliable_no_timer_g_and_timer_i_zero(self, layer):
        inv, txn = new_invite(layer, flow=TCP)
        sent(layer)
        resp = make_response(inv, 480, to_tag="x")
        layer.send_response(resp, 0.0)
        sent(layer)
        assert layer.get_timer() == T64  # Timer H only
        layer.receive(wire(_ack_of(inv, resp)), TCP, 0.3)
        assert txn.state is TransactionState.TERMINATED
        assert_gone(layer)

    def test_reliable_timer_h_still_fires(self, layer):
        inv, txn = new_invite(layer, flow=TCP)
        layer.send_response(make_response(inv, 480, to_tag="x"), 0.0)
        drain_all(layer)
        assert run_timers(layer, T64) == []
        assert events(layer) == [TransactionTimedOut(txn)]
        assert_gone(layer)

    def test_same_branch_other_sent_by_is_another_transaction(self, layer):
        inv, t1 = new_invite(layer, branch="z9hG4bKsame")
        inv2, t2 = new_invite(layer, branch="z9hG4bKsame", sent_by="127.0.0.4:5060")
        assert t1 is not t2 and layer.transaction_count == 2


def _ack_of(inv: Request, resp) -> Request:
    """The ACK a UAC sends for a non-2xx (same branch), or that a sloppy UA sends for a 2xx."""
    return Request("ACK", inv.uri_text, [
        ("Via", inv.get("Via")), ("Max-Forwards", "70"), ("From", inv.get("From")), ("To", resp.get("To")),
        ("Call-ID", inv.call_id), ("CSeq", f"{inv.cseq.seq} ACK"),
    ])


# ================================================================= server non-INVITE
class TestServerNonInvite:
    def test_retransmissions_absorbed_then_answered_then_timer_j(self, layer):
        req = wire(request("BYE", to_tag="x"))
        layer.receive(req, UDP, 0.0)
        [ev] = events(layer)
        txn = ev.transaction
        assert txn.state is TransactionState.TRYING and sent(layer) == []
        layer.receive(wire(req), UDP, 0.5)  # Trying: absorbed, nothing to send
        assert sent(layer) == [] and events(layer) == []
        layer.send_response(make_response(req, 200), 0.6)
        assert [m.status for m, _ in sent(layer)] == [200]
        assert txn.state is TransactionState.COMPLETED
        layer.receive(wire(req), UDP, 1.5)
        assert [m.status for m, _ in sent(layer)] == [200]
        layer.send_response(make_response(req, 500), 1.6)  # second final: discarded (§17.2.2)
        assert sent(layer) == []
        layer.receive(wire(req), UDP, 1.7)  # still the 200 that went out first
        assert [m.status for m, _ in sent(layer)] == [200]
        # Completed holds only what a retransmission needs: the parsed messages are let go
        assert txn.request is None and txn.last_response is None
        assert layer.get_timer() == 0.6 + T64
        run_timers(layer, 0.6 + T64)
        assert events(layer) == []
        assert_gone(layer)

    def test_provisional_then_final(self, layer):
        req = wire(request("REGISTER"))
        layer.receive(req, UDP, 0.0)
        txn = events(layer)[0].transaction
        layer.send_response(make_response(req, 100), 0.0)
        assert txn.state is TransactionState.PROCEEDING
        sent(layer)
        layer.receive(wire(req), UDP, 0.5)
        assert [m.status for m, _ in sent(layer)] == [100]
        layer.send_response(make_response(req, 200, to_tag="r"), 1.0)
        assert txn.state is TransactionState.COMPLETED

    def test_reliable_timer_j_zero(self, layer):
        req = wire(request("OPTIONS", flow=TCP))
        layer.receive(req, TCP, 0.0)
        txn = events(layer)[0].transaction
        layer.send_response(make_response(req, 200, to_tag="r"), 0.0)
        assert [(m.status, f) for m, f in sent(layer)] == [(200, TCP)]
        assert txn.state is TransactionState.TERMINATED
        assert_gone(layer)

    def test_cancel_has_its_own_transaction_and_finds_its_invite(self, layer):
        inv, inv_txn = new_invite(layer)
        cancel = wire(request("CANCEL", branch=inv.top_via.branch, call_id=inv.call_id, from_tag=inv.from_.tag))
        layer.receive(cancel, UDP, 0.2)
        [ev] = events(layer)
        assert ev.request is cancel and ev.transaction is not None and ev.transaction is not inv_txn
        assert layer.find_invite_server(cancel) is inv_txn
        drain_all(layer)
        layer.send_response(make_response(cancel, 200), 0.3)
        assert ev.transaction.state is TransactionState.COMPLETED
        assert inv_txn.state is TransactionState.PROCEEDING
        layer.send_response(make_response(inv, 487, to_tag="x"), 0.3)
        assert [(m.status, m.cseq.method) for m, _ in sent(layer)] == [(200, "CANCEL"), (487, "INVITE")]

    def test_cancel_matching_nothing(self, layer):
        inv, _ = new_invite(layer)
        stray = wire(request("CANCEL", call_id=inv.call_id))  # another branch
        assert layer.find_invite_server(stray) is None
        moved = wire(request("CANCEL", branch=inv.top_via.branch, sent_by="127.0.0.4:5060"))
        assert layer.find_invite_server(moved) is None  # sent-by differs (§17.2.3)


# ============================================================ RFC 2543 matching, errors
class TestRfc2543AndErrors:
    @pytest.mark.parametrize("branch", ["", "1234-old-style"])
    def test_legacy_requests_match_without_magic_cookie(self, layer, branch):
        inv, txn = new_invite(layer, branch=branch)
        sent(layer)
        layer.receive(wire(inv), UDP, 0.3)
        assert events(layer) == [] and [m.status for m, _ in sent(layer)] == [100]
        resp = make_response(inv, 486, to_tag="x")
        layer.send_response(resp, 0.4)
        assert [m.status for m, _ in sent(layer)] == [486]
        layer.receive(wire(_ack_of(inv, resp)), UDP, 0.5)
        assert txn.state is TransactionState.CONFIRMED and events(layer) == []
        # another CSeq of the same call is another transaction
        new_invite(layer, branch=branch, call_id=inv.call_id, cseq=2)
        assert layer.transaction_count == 2

    def test_legacy_transactions_with_the_same_via_and_cseq_text_stay_apart(self, layer):
        # an RFC 2543 UA without branches: only Call-ID tells its two calls apart
        a, ta = new_invite(layer, branch="", call_id="call-a")
        b, tb = new_invite(layer, branch="", call_id="call-b")
        assert a.get("Via") == b.get("Via") and a.get("CSeq") == b.get("CSeq") and ta is not tb
        sent(layer)
        layer.send_response(make_response(b, 486, to_tag="x"), 0.1)
        assert (ta.state, tb.state) == (TransactionState.PROCEEDING, TransactionState.COMPLETED)

    def test_response_built_by_hand_still_matches(self, layer):
        inv, txn = new_invite(layer, via_params="")
        sent(layer)
        resp = make_response(inv, 486, to_tag="x")
        # same Via, spelled differently: the text fast path misses, parsed matching finds it
        resp.set("Via", inv.get("Via").replace("SIP/2.0/UDP ", "SIP / 2.0 / UDP  "))
        layer.send_response(resp, 0.1)
        assert txn.state is TransactionState.COMPLETED and txn.last_response is resp

    def test_client_matching_reads_only_the_top_via(self, layer):
        req = our_request("OPTIONS")
        txn = layer.send_request(req, TRUNK, 0.0)
        decoy = our_request("OPTIONS")
        layer.send_request(decoy, TRUNK, 0.0)
        resp = make_response(req, 200, to_tag="x")
        # a top Via without branch= but ours further down must not match by the regex
        resp.set("Via", f"SIP/2.0/UDP 127.0.0.9:5060;rport, {decoy.get('Via')}")
        stray = wire(resp)
        layer.receive(stray, TRUNK, 0.1)
        assert events(layer) == [ResponseReceived(stray, None)]
        assert txn.state is TransactionState.TRYING
        resp2 = make_response(req, 200, to_tag="x")
        resp2.set("Via", f"SIP/2.0/UDP 127.0.0.1:5060 ;Branch = {req.top_via.branch}")  # odd spelling
        layer.receive(wire(resp2), TRUNK, 0.2)
        assert txn.state is TransactionState.COMPLETED

    def test_malformed_via_raises_with_the_message_and_changes_nothing(self, layer):
        bad = request("INVITE")
        bad.set("Via", "SIP/2.0/UDP")
        with pytest.raises(RemoteProtocolError) as ei:
            layer.receive(bad, UDP, 0.0)
        assert ei.value.message is bad
        assert layer.transaction_count == 0 and sent(layer) == [] and events(layer) == []

    def test_malformed_response_raises(self, layer):
        resp = make_response(wire(request("OPTIONS")), 200)
        resp.set("Via", "garbage")
        with pytest.raises(RemoteProtocolError):
            layer.receive(resp, TRUNK, 0.0)
        assert events(layer) == []


# ============================================================ random interleavings
_SERVER_SCRIPT = st.tuples(
    st.sampled_from(["INVITE", "OPTIONS", "BYE"]),
    st.sampled_from([200, 404, 486, 603]),
    st.booleans(),  # the TU sends a provisional first
    st.floats(0.0, 40.0),  # TU answer delay
    st.lists(st.floats(0.0, 31.5), max_size=4),  # request retransmissions (the client's 64*T1 window)
    st.one_of(st.none(), st.floats(0.0, 40.0)),  # ACK delay after the final (None: lost)
    st.booleans(),  # reliable flow
)


@settings(max_examples=150, deadline=None)
@given(scripts=st.lists(_SERVER_SCRIPT, min_size=1, max_size=6), send_100=st.booleans())
def test_random_server_interleavings_deliver_once_and_leak_nothing(scripts, send_100):
    layer = TransactionLayer(t1=T1, t2=T2, t4=T4, send_100_trying=send_100)
    # build a time-ordered plan of inputs for every transaction
    plan: list[tuple[float, int, str, object]] = []
    reqs = []
    for i, (method, status, ring, delay, retrans, ack_delay, reliable) in enumerate(scripts):
        flow = TCP if reliable else Flow("udp", ("127.0.0.2", 6000 + i), ("127.0.0.1", 5060))
        req = request(method, flow=flow, call_id=f"c{i}", to_tag=None if method != "BYE" else "t")
        reqs.append((req, flow))
        start = float(i)
        plan.append((start, i, "request", None))
        ack_at = None
        if method == "INVITE" and status >= 300 and ack_delay is not None:
            ack_at = start + delay + ack_delay
            plan.append((ack_at, i, "ack", status))
        if not reliable:  # only UDP clients retransmit, and never after their ACK
            plan.extend((start + r, i, "request", None) for r in retrans if ack_at is None or start + r < ack_at)
        if ring:
            plan.append((start + delay / 2, i, "answer", 180 if method == "INVITE" else 100))
        plan.append((start + delay, i, "answer", status))
    rank = {"request": 0, "answer": 1, "ack": 2}
    plan.sort(key=lambda p: (p[0], p[1], rank[p[2]]))
    delivered: dict[int, object] = {}
    finals: dict[int, object] = {}
    timed_out = []
    now = 0.0
    for at, i, what, arg in plan:
        run_timers(layer, at)
        now = at
        req, flow = reqs[i]
        if what == "request":
            layer.receive(wire(req), flow, now)
        elif what == "answer":
            if i in delivered:
                resp = make_response(req, arg, to_tag="x")
                layer.send_response(resp, now)
                if arg >= 200:
                    finals[i] = resp
        else:
            layer.receive(wire(_ack_of(req, finals[i])), flow, now)
        for data, _ in layer.datagrams_to_send():
            parse_datagram(data)  # everything sent is well-formed
        for ev in events(layer):
            if isinstance(ev, RequestReceived):
                n = int(ev.request.call_id[1:])
                if ev.request.method == "ACK":
                    # an ACK after Timer H is unmatched: the TU gets it as if for a 2xx
                    assert ev.transaction is None and delivered[n] in timed_out
                    continue
                assert ev.transaction is not None and n not in delivered  # once per transaction
                delivered[n] = ev.transaction
            else:
                assert isinstance(ev, TransactionTimedOut)
                timed_out.append(ev.transaction)
    run_timers(layer, now + 1000.0)
    timed_out.extend(e.transaction for e in events(layer) if isinstance(e, TransactionTimedOut))
    assert set(delivered) == set(range(len(scripts)))
    assert layer.transaction_count == 0 and layer.get_timer() is None
    for txn in delivered.values():
        assert txn.state is TransactionState.TERMINATED
    # Timer H fired exactly for the INVITEs whose non-2xx was never ACKed in time
    expected = {
        i for i, (method, status, _, delay, _, ack_delay, _) in enumerate(scripts)
        if method == "INVITE" and status >= 300 and (ack_delay is None or ack_delay >= T64)
    }
    assert sorted(int(t.request.call_id[1:]) for t in timed_out) == sorted(expected)


@settings(max_examples=150, deadline=None)
@given(
    responses=st.lists(st.tuples(st.floats(0.0, 40.0), st.sampled_from([100, 180, 200, 404, 503])), max_size=8),
    method=st.sampled_from(["INVITE", "OPTIONS"]),
    reliable=st.booleans(),
)
def test_random_client_interleavings(responses, method, reliable):
    layer = TransactionLayer(t1=T1, t2=T2, t4=T4)
    flow = TRUNK_TCP if reliable else TRUNK
    req = our_request(method, flow=flow)
    txn = layer.send_request(req, flow, 0.0)
    sent(layer)
    delivered = []
    acks = 0
    for at, status in sorted(responses):
        for _, m, _ in run_timers(layer, at):
            assert status_of(m) == method  # timers only retransmit the request...
        layer.receive(answer(req, status), flow, at)
        for m, _ in sent(layer):
            assert status_of(m) == "ACK" and method == "INVITE"  # ...or re-send the ACK
            acks += 1
        for e in events(layer):
            # after the transaction ends, responses reach the TU unmatched
            assert e.transaction is txn or (e.transaction is None and txn.state is TransactionState.TERMINATED)
            if e.transaction is txn:
                delivered.append(e)
    if txn.state is TransactionState.PROCEEDING:
        # only provisionals: an INVITE waits for the TU's CANCEL (no Timer B in Proceeding)
        assert layer.transaction_count == 1
        cancel = Request("CANCEL", req.uri_text, [
            ("Via", req.get("Via")), ("From", req.get("From")), ("To", req.get("To")),
            ("Call-ID", req.call_id), ("CSeq", f"{req.cseq.seq} CANCEL"),
        ])
        layer.send_request(cancel, flow, 41.0)
        sent(layer)
    for _, m, _ in run_timers(layer, 1000.0):
        assert status_of(m) in (method, "CANCEL")
    delivered.extend(e for e in events(layer) if e.transaction is txn)
    assert_gone(layer)
    assert txn.state is TransactionState.TERMINATED
    finals = [e for e in delivered if isinstance(e, ResponseReceived) and e.response.status >= 200]
    timeouts = [e for e in delivered if isinstance(e, TransactionTimedOut)]
    # exactly one outcome: a final response or a timeout (2xx may repeat in Accepted)
    assert bool(finals) != bool(timeouts)
    if finals and finals[0].response.status >= 300:
        assert len(finals) == 1 and (acks >= 1) == (method == "INVITE")
    if finals and method == "OPTIONS":
        assert len(finals) == 1
    if finals and finals[0].response.status < 300 and method == "INVITE":
        assert {e.response.status for e in finals if e.transaction is txn} <= {200}


# ============================================================ the timer heap
def test_timer_heap_order_lazy_cancel_and_compaction():
    from node.sip.timers import Timers

    timers = Timers()
    entries = [timers.schedule(float(i % 100), i, 0) for i in range(5000)]
    for e in entries[:4000]:
        timers.cancel(e)
    timers.cancel(entries[0])  # twice: no effect
    assert len(timers) < 5000  # compacted once dead entries outnumbered live ones
    assert timers.next_deadline() == 0.0
    fired = []
    e = timers.pop_due(49.0)
    while e is not None:
        fired.append((e[0], e[2]))
        timers.cancel(e)  # cancelling a fired entry is a no-op
        e = timers.pop_due(49.0)
    assert fired == sorted(fired) and all(at <= 49.0 for at, _ in fired)
    assert {i for _, i in fired} == {i for i in range(4000, 5000) if i % 100 <= 49}
    assert timers.next_deadline() == 50.0


def test_many_answered_client_transactions_do_not_bloat_the_heap(layer):
    # Timer A and B of every INVITE are cancelled by its 100 Trying: dead entries are reclaimed
    for i in range(5000):
        inv = our_request(call_id=f"c{i}")
        layer.send_request(inv, TRUNK, i * 0.001)
        layer.receive(answer(inv, 100, to_tag=None), TRUNK, i * 0.001)
    assert len(layer._timers) < 2000
    assert layer.get_timer() is None and layer.transaction_count == 5000


def test_fixed_delay_fifos_come_due_in_order_with_the_heap():
    from node.sip.timers import Timers

    timers = Timers()
    assert timers.linger(32.0, 0.0, "j1") and timers.linger(32.0, 1.0, "j2")
    assert timers.linger(5.0, 0.5, "k1")
    assert not timers.linger(32.0, 0.5, "late")  # before j2's deadline: refused, not scheduled
    heap = timers.schedule(3.0, "h", 1)
    assert len(timers) == 4
    assert timers.next_deadline() == 3.0
    timers.cancel(heap)
    assert timers.next_deadline() == 5.5  # the FIFOs' earliest head once the heap is empty
    assert timers.pop_lingering(5.4) is None
    assert timers.pop_lingering(5.5) == "k1" and timers.pop_lingering(5.5) is None
    assert timers.next_deadline() == 32.0
    assert [timers.pop_lingering(40.0), timers.pop_lingering(40.0), timers.pop_lingering(40.0)] == ["j1", "j2", None]
    assert timers.next_deadline() is None and timers.pop_due(100.0) is None


def test_completed_non_invite_server_transactions_cost_no_heap_entry(layer):
    """Timer J of thousands of answered REGISTERs: FIFO entries, and the text-match entry of
    each is gone with its answer; retransmissions and Timer J behave as before."""
    reqs = []
    for i in range(2000):
        req = wire(request("REGISTER", uri="sip:example.com", call_id=f"r{i}"))
        layer.receive(req, UDP, i * 0.001)
        layer.send_response(make_response(req, 200, to_tag="r"), i * 0.001)
        reqs.append(req)
    drain_all(layer)
    assert len(layer._timers._heap) == 0 and layer._servers_by_text == {}
    assert layer.transaction_count == 2000 and layer.get_timer() == T64
    layer.receive(wire(reqs[1500]), UDP, 10.0)  # a retransmission still gets the 200
    assert [m.status for m, _ in sent(layer)] == [200]
    layer.send_response(make_response(reqs[1500], 500), 10.0)  # a second final: still discarded
    assert sent(layer) == []
    run_timers(layer, T64 + 0.9995)
    assert layer.transaction_count == 1000  # each ended exactly at its own Timer J
    run_timers(layer, T64 + 2.0)
    assert_gone(layer)


def test_timer_j_still_exact_when_the_clock_goes_back(layer):
    """A FIFO holds deadlines in order; a transaction completed at an earlier ``now`` than the
    last one takes the heap, so its Timer J is neither early nor late."""
    a, b = wire(request("OPTIONS", call_id="a")), wire(request("OPTIONS", call_id="b"))
    layer.receive(a, UDP, 10.0)
    layer.receive(b, UDP, 10.0)
    layer.send_response(make_response(a, 200, to_tag="x"), 10.0)
    layer.send_response(make_response(b, 200, to_tag="x"), 4.0)  # the caller's clock went back
    drain_all(layer)
    assert layer.get_timer() == 4.0 + T64
    run_timers(layer, 4.0 + T64)
    assert layer.transaction_count == 1
    layer.receive(wire(a), UDP, 4.0 + T64)  # a is still in Completed
    assert [m.status for m, _ in sent(layer)] == [200]
    assert layer.get_timer() == 10.0 + T64
    run_timers(layer, 10.0 + T64)
    assert_gone(layer)


_via_rport = st.sampled_from(["", ";rport", ";RPORT", "; rport", ";rport=5999"])
_via_received = st.sampled_from(["", ";received=10.9.9.9", ";Received=1.2.3.4", ";received=127.0.0.9"])
_via_others = st.lists(st.sampled_from([";branch=z9hG4bKabc", ";maddr=10.1.1.1", ";ttl=5", ';x="a;rport"', ";rportx", ";alias"]),
                       max_size=4, unique=True)


@settings(max_examples=300, deadline=None)
@given(parts=st.tuples(_via_rport, _via_received, _via_others).flatmap(
           lambda p: st.permutations([x for x in (p[0], p[1], *p[2]) if x])),
       sent_by=st.sampled_from(["127.0.0.2:5062", "10.0.0.5", "[::1]:5070"]),
       second=st.sampled_from(["", ", SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKnext"]),
       remote=st.sampled_from([("127.0.0.2", 5062), ("127.0.0.9", 41000), ("::1", 5070)]))
def test_received_and_rport_by_text_edit_match_the_formatted_via(parts, sent_by, second, remote):
    """The Via text the layer stamps (edited in place when simple) parses to exactly what
    formatting the updated Via afresh gives: same sent-by, same parameters in the same order."""
    from unittest import mock

    from node.sip import transaction as tx
    from node.sip.headers import Via

    flow = Flow("udp", remote, ("127.0.0.1", 5060))
    line = f"SIP/2.0/UDP {sent_by}{''.join(parts)}{second}"

    def stamped(edit: bool):
        req = wire(Request("OPTIONS", "sip:x@example.com", [
            ("Via", line), ("From", "<sip:a@example.com>;tag=1"), ("To", "<sip:x@example.com>"),
            ("Call-ID", "c"), ("CSeq", "1 OPTIONS"),
        ]))
        via = req.top_via
        if edit:
            text = tx._stamp_via(req, via, flow)
        else:
            with mock.patch.object(tx, "_edited_via", lambda *a: None):
                text = tx._stamp_via(req, via, flow)
        assert text == req.get("Via")
        first = Via.parse(split_first(text))
        return (first.transport, first.host, first.port, list(first.params.items()), text.count(","))

    assert stamped(True) == stamped(False)


def split_first(text: str) -> str:
    from node.sip.uri import split_header_list

    return split_header_list(text)[0]


# ============================================================ stateless answers (the TU's sl)
def test_stateless_responder_answers_without_a_transaction(layer):
    seen = []

    def responder(req, flow):
        seen.append((req.method, flow))
        return make_response(req, 401, to_tag="st1") if req.method == "REGISTER" else None

    layer.stateless_responder = responder
    reg = request("REGISTER", uri="sip:example.com")
    layer.receive(wire(reg), UDP, 0.0)
    ((resp, flow),) = sent(layer)
    assert resp.status == 401 and flow == UDP
    # the answer routes back by its Via alone (RFC 3581): rport and received are filled in
    assert resp.top_via.params["rport"] == str(UDP.remote[1]) and resp.top_via.params["received"] == UDP.remote[0]
    assert events(layer) == [] and layer.transaction_count == 0 and layer.get_timer() is None
    # a retransmission is answered again, still without a transaction
    layer.receive(wire(reg), UDP, 0.2)
    assert [status_of(m) for m, _ in sent(layer)] == [401]
    assert_gone(layer)
    # what the responder declines gets the usual server transaction
    opt = request("OPTIONS")
    layer.receive(wire(opt), UDP, 0.3)
    (ev,) = events(layer)
    assert isinstance(ev, RequestReceived) and ev.transaction is not None
    assert layer.transaction_count == 1
    # an INVITE never reaches the responder (its 100 Trying and Timer G/H need a transaction)
    layer.receive(wire(request("INVITE")), UDP, 0.4)
    assert [m for m, _ in seen] == ["REGISTER", "REGISTER", "OPTIONS"]


# ============================================================ a 100 taken without an event
def _twin_layers(method: str, before: list[int], cancel: bool = False):
    """Two layers with the same client transaction after the ``before`` answers."""
    out = []
    for _ in range(2):
        layer = TransactionLayer(t1=T1, t2=T2, t4=T4)
        req = our_request(method)
        txn = layer.send_request(req, TRUNK, 0.0)
        for status in before:
            layer.receive(answer(req, status, to_tag=None if status == 100 else "tt1"), TRUNK, 0.1)
        if cancel:
            layer.send_request(Request("CANCEL", req.uri_text, [
                ("Via", req.get("Via")), ("Max-Forwards", "70"), ("From", req.get("From")),
                ("To", req.get("To")), ("Call-ID", req.call_id), ("CSeq", f"{req.cseq.seq} CANCEL"),
            ]), TRUNK, 0.15)
        drain_all(layer)
        out.append((layer, req, txn))
    return out


@pytest.mark.parametrize("method, before, cancel, took", [
    ("INVITE", [], False, True),         # Calling: Timers A and B stop
    ("INVITE", [180], False, True),      # Proceeding
    ("INVITE", [200], False, False),     # Accepted: a late 100 changes nothing
    ("INVITE", [486], False, False),     # Completed
    ("INVITE", [], True, None),          # CANCELled in Calling: its §9.1 guard is receive()'s
    ("OPTIONS", [], False, True),        # Trying
    ("OPTIONS", [100], False, True),     # Proceeding
    ("OPTIONS", [200], False, False),    # Completed
])
def test_absorb_trying_moves_the_state_as_receive_does_without_an_event(method, before, cancel, took):
    (a, req_a, txn_a), (b, req_b, txn_b) = _twin_layers(method, before, cancel)
    trying_a = answer(req_a, 100, to_tag=None)
    assert a.find_client(trying_a) is txn_a
    got = a.absorb_trying(txn_a, trying_a)
    assert got is took
    if took is None:
        assert txn_a.state is txn_b.state and a.get_timer() == b.get_timer()
        return
    b.receive(answer(req_b, 100, to_tag=None), TRUNK, 0.2)
    assert [type(e) for e in events(b)] == ([ResponseReceived] if took else [])
    assert events(a) == [] and sent(a) == sent(b) == []
    assert txn_a.state is txn_b.state
    assert (txn_a.last_response is trying_a) == (txn_b.last_response is not None and txn_b.last_response.status == 100)
    assert a.get_timer() == b.get_timer() and a.transaction_count == b.transaction_count
    retransmitted = [[(t, status_of(m)) for t, m, _ in run_timers(x, 100.0)] for x in (a, b)]
    assert retransmitted[0] == retransmitted[1]
    assert [type(e) for e in events(a)] == [type(e) for e in events(b)]  # Timer F alike


def test_absorb_trying_refuses_anything_but_a_100(layer):
    req = our_request()
    txn = layer.send_request(req, TRUNK, 0.0)
    ringing = answer(req, 180)
    assert layer.absorb_trying(txn, ringing) is None and txn.state is TransactionState.CALLING
    assert layer.find_client(answer(our_request(branch="z9hG4bKother"), 100, to_tag=None)) is None
