"""Early dialogs for a semi-attended transfer: which ringing dialog a Replaces names (both
tags must match, either order), and the refusals before anything is taken over."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from node.model import Extension, Tenant
from node.pbx import replaces
from node.pbx.call import CallState
from node.pbx.transfer import ReferError

ALPHA = Tenant(id=1, name="alpha", domain="alpha.example")


def _ext(number):
    return Extension(id=1, tenant_id=1, number=number, password="x")


def _invite(call_id, from_tag):
    return SimpleNamespace(call_id=call_id, from_=SimpleNamespace(tag=from_tag))


def _leg(final=0, cancelled=False):
    return SimpleNamespace(final=final, cancelled=cancelled, txn=object(), invite=_invite("fork-1", "nodetag"))


def _ringing(caller="1002", **kw):
    call = SimpleNamespace(state=CallState.RINGING, invite=_invite("consult-1", "phonetag"), a_tag="ourtag",
                           legs=[_leg()], tenant=ALPHA, transfer=None, late_offer=False, media=object(),
                           caller=SimpleNamespace(extension=_ext(caller)), plan=SimpleNamespace(callee="1003"))
    for k, v in kw.items():
        setattr(call, k, v)
    return call


def _host(*calls):
    return SimpleNamespace(_dialogs={}, calls={i: c for i, c in enumerate(calls)})


def test_find_early_dialog_of_the_caller_needs_both_tags():
    call = _ringing()
    host = _host(call)
    assert replaces.find(host, replaces.DialogId("consult-1", "ourtag", "phonetag")) == (call, "a", True)
    assert replaces.find(host, replaces.DialogId("consult-1", "phonetag", "ourtag")) == (call, "a", True)
    assert replaces.find(host, replaces.DialogId("consult-1", "ourtag", "guessed")) is None
    assert replaces.find(host, replaces.DialogId("other", "ourtag", "phonetag")) is None
    # the node's own fork: named by its from-tag (its to-tag may be unknown)
    assert replaces.find(host, replaces.DialogId("fork-1", "x", "nodetag")) == (call, "b", True)
    assert replaces.find(host, replaces.DialogId("fork-1", "x", "y")) is None
    call.state = CallState.ENDED
    assert replaces.find(host, replaces.DialogId("consult-1", "ourtag", "phonetag")) is None


def _answered(side_ext="1002"):
    leg = SimpleNamespace(target=SimpleNamespace(kind="extension"))
    return SimpleNamespace(caller=SimpleNamespace(extension=_ext("1001")), tenant=ALPHA, media=object(),
                           plan=SimpleNamespace(callee_ext=_ext(side_ext)), answered_leg=leg,
                           invite=SimpleNamespace(body=b"v=0 offer"), a_sdp=None, b_sdp=b"v=0 answer")


@pytest.mark.parametrize("change, side2, status, why", [
    ({}, "b", 403, "places"),                                   # the fork, not the transferor's call
    ({"transfer": object()}, "a", 403, "places"),
    ({"late_offer": True}, "a", 488, "SDP"),
    ({"media": None}, "a", 488, "SDP"),
    ({"legs": [_leg(final=180 + 300)]}, "a", 481, "rings nobody"),
    ({"legs": [_leg(cancelled=True)]}, "a", 481, "rings nobody"),
])
def test_semi_attended_refusals(change, side2, status, why):
    with pytest.raises(ReferError) as e:
        replaces.SemiAttended.check(_answered(), "b", _ringing(**change), side2)
    assert e.value.status == status and why in e.value.reason


def test_semi_attended_accepts_the_transferors_ringing_call():
    call2 = _ringing()
    semi = replaces.SemiAttended.check(_answered(), "b", call2, "a")
    assert semi.call2 is call2 and semi.ringing_legs == call2.legs and semi.number == "1003"
    assert semi.side == "b" and semi.other == "a"


def test_refer_on_calls_rtpengine_relays_is_taken_and_moves_the_media_first(monkeypatch):
    """Both calls in rtpengine: 202 at once, the transfer stands in the call (BYEs reach it)
    and starts once the transferee's call is on the node's relay (node/pbx/reanchor.py,
    tests/unit/pbx/test_reanchor.py)."""
    from node.pbx.transfer import ReferTarget

    sent, spawned = [], []
    call2 = _ringing(media=SimpleNamespace(where="rtpengine", local=None))
    host = _host(call2)
    host.endpoint = SimpleNamespace(send_response=sent.append)
    host._spawn = spawned.append
    call1 = _answered()
    call1.host, call1.transfer = host, None
    call1.media = SimpleNamespace(where="rtpengine", local=None)
    monkeypatch.setattr(replaces, "make_response", lambda req, status, reason, **kw: (status, reason))
    did = "consult-1;to-tag=ourtag;from-tag=phonetag"
    replaces.on_attended_refer(call1, "b", SimpleNamespace(method="REFER"), ReferTarget("1003", "alpha.example", did))
    assert sent == [(202, None)]
    assert isinstance(call1.transfer, replaces.SemiAttended) and call1.transfer.call2 is call2
    assert len(spawned) == 1 and spawned[0].__name__ == "_semi_on_local_relay"
    assert call2.state is CallState.RINGING  # nothing taken over before the move
    spawned[0].close()
