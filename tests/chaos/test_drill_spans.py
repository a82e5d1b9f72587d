"""How the chaos drill tells a double offer from the agents' SIPp traces (chaos/drill.py
``offer_spans``/``overlapping``), on traces shaped like the ones the drill gets."""

from __future__ import annotations

from chaos.drill import offer_spans, overlapping
from tests.peers.sipp import TracedMessage

SURVIVOR, DEAD = 5061, 5063


def _msg(method: str, call_id: str, at: float, port: int = SURVIVOR, user: str = "3001") -> TracedMessage:
    text = (f"{method} sip:2001@127.0.0.1:7000 SIP/2.0\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id}{method}\n"
            f"From: <sip:{user}@drill.example>;tag=t{call_id}\n"
            f"To: <sip:2001@drill.example>\nCall-ID: {call_id}\nCSeq: 1 {method}\nContent-Length: 0\n")
    return TracedMessage("received", "UDP", text, at)


def _bye_retransmitted(call_id: str, at: float) -> list[TracedMessage]:
    """A BYE the phone never answers, repeated at T1=0.5 s doubling up to T2=4 s for 32 s."""
    out, gap, after = [], 0.5, 0.0
    while after <= 31.5:
        out.append(_msg("BYE", call_id, round(at + after, 3)))
        after += gap
        gap = min(gap * 2, 4.0)
    return out


def test_the_ci_failure_a_retransmitted_bye_is_not_a_call_going_on() -> None:
    """The CI failure: x's caller hung up as the agent answered; the node's CANCEL crossed the
    200 (SIPp aborts its side on it) and its ACK+BYE went unanswered, so the BYE was repeated
    until 36.57 s. The next offer (5.09 s) came after that BYE (5.06 s): one call at a time."""
    trace = [_msg("INVITE", "x", 5.05, user="3003"), _msg("CANCEL", "x", 5.058), _msg("ACK", "x", 5.06),
             *_bye_retransmitted("x", 5.06), _msg("INVITE", "y", 5.09, user="4004"), _msg("ACK", "y", 5.1),
             _msg("BYE", "y", 8.1)]
    trace.sort(key=lambda m: m.at)
    spans = offer_spans(trace, DEAD, kill_at=4.04)
    assert [(s, round(e, 3)) for s, e, _ in spans] == [(5.05, 5.06), (5.09, 8.1)]
    assert overlapping(spans) == []
    assert max(m.at for m in trace if m.header("Call-ID") == "x") == 36.56  # what was taken as its end


def test_an_offer_before_the_previous_one_ended_is_caught() -> None:
    trace = [_msg("INVITE", "x", 5.05), _msg("ACK", "x", 5.06), _msg("INVITE", "y", 5.07, user="4004"),
             _msg("BYE", "x", 5.08), _msg("BYE", "y", 9.0)]
    ((earlier, later),) = overlapping(offer_spans(trace, DEAD, kill_at=4.0))
    assert (earlier[0], later[0]) == (5.05, 5.07)


def test_an_unanswered_offer_ends_at_its_cancel_and_one_never_ended_lasts() -> None:
    trace = [_msg("INVITE", "x", 1.0), _msg("CANCEL", "x", 2.0), _msg("INVITE", "y", 3.0), _msg("INVITE", "z", 9.0)]
    spans = offer_spans(trace, DEAD, kill_at=100.0)
    assert [(s, e) for s, e, _ in spans] == [(1.0, 2.0), (3.0, float("inf")), (9.0, float("inf"))]
    assert [(a[0], b[0]) for a, b in overlapping(spans)] == [(3.0, 9.0)]


def test_an_offer_by_the_dead_node_ends_when_it_died() -> None:
    trace = [_msg("INVITE", "x", 3.0, port=DEAD), _msg("INVITE", "y", 5.0)]
    assert overlapping(offer_spans(trace, DEAD, kill_at=4.0)) == []
    assert len(overlapping(offer_spans(trace, DEAD, kill_at=6.0))) == 1  # it was alive at 5 s
