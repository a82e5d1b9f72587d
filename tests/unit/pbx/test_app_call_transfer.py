"""Hold and attended-transfer rules of a bridged application call (node/pbx/app_call.py),
with fake endpoints: which endpoint hears music, when the bridge comes back, and which
pairs of calls an attended REFER may join."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from node.pbx.app_call import AppCall, check_attended
from node.pbx.call import CallState
from node.pbx.transfer import ReferError

HOLD = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n"
RESUME = HOLD.replace(b"a=sendonly", b"a=sendrecv")


class FakeEp:
    def __init__(self, name: str) -> None:
        self.name = name
        self.peer = None
        self.playing = None

    def bridge(self, other: "FakeEp") -> None:
        self.peer, other.peer = other, self
        self.playing = other.playing = None

    def unbridge(self) -> None:
        if self.peer is not None:
            self.peer.peer = None
        self.peer = None

    def listen(self, moh) -> None:
        self.playing = "music"

    def tone(self, name: str) -> None:
        self.playing = name

    def stop_output(self) -> None:
        self.playing = None


def _bridged_call(tmp_path) -> AppCall:
    call = AppCall.__new__(AppCall)
    call.ep, call.b_ep = FakeEp("caller"), FakeEp("answerer")
    call.ep.bridge(call.b_ep)
    call.answered_leg = object()
    call._refer = None
    call.held_by = None
    call.span = None
    call.tenant = SimpleNamespace(id=1, name="alpha")
    call.apps = SimpleNamespace(engine=object())
    call.host = SimpleNamespace(cfg=SimpleNamespace(data_dir=tmp_path))
    return call


@pytest.mark.parametrize("holder,held", [("a", "b_ep"), ("b", "ep")])
def test_hold_plays_to_the_held_party_and_resume_bridges_again(tmp_path, holder, held):
    call = _bridged_call(tmp_path)
    call._hold_changed(holder, HOLD)
    held_ep = getattr(call, held)
    holder_ep = call.ep if held == "b_ep" else call.b_ep
    assert call.held_by == holder and call.ep.peer is None
    assert held_ep.playing in ("music", "ringback") and holder_ep.playing is None
    call._hold_changed(holder, HOLD)  # a refreshed hold changes nothing
    assert call.held_by == holder
    other = "b" if holder == "a" else "a"
    call._hold_changed(other, RESUME)  # the other side's re-INVITE does not resume this hold
    assert call.held_by == holder and call.ep.peer is None
    call._hold_changed(holder, RESUME)
    assert call.held_by is None and call.ep.peer is call.b_ep and held_ep.playing is None


def test_hold_is_left_alone_while_a_transfer_runs_or_before_the_bridge(tmp_path):
    call = _bridged_call(tmp_path)
    call._refer = object()
    call._hold_changed("b", HOLD)
    assert call.held_by is None and call.ep.peer is call.b_ep
    call = _bridged_call(tmp_path)
    call.answered_leg = None
    call._hold_changed("a", HOLD)
    assert call.held_by is None


def _app(tenant_id=1, state=CallState.ANSWERED, bridged=True) -> AppCall:
    call = AppCall.__new__(AppCall)
    call.tenant = SimpleNamespace(id=tenant_id)
    call.state = state
    call.answered_leg = object() if bridged else None
    call._refer = None
    call._xfer = None
    return call


def _plain(tenant_id=1, state=CallState.ANSWERED, rtpengine=False, relayed=True):
    media = (SimpleNamespace(where="rtpengine", local=None) if rtpengine
             else SimpleNamespace(session=object() if relayed else None))
    return SimpleNamespace(tenant=SimpleNamespace(id=tenant_id), state=state, transfer=None, media=media)


def test_attended_join_pairs():
    ext = object()
    check_attended(_app(), "b", _plain(), "a", False, ext)  # REFER on the application call
    check_attended(_plain(), "a", _app(), "b", False, ext)  # REFER on the plain call
    check_attended(_app(), "b", _plain(rtpengine=True), "a", False, ext)  # moved off rtpengine by the join
    joining = _app()
    joining._joining = True
    cases = [
        ((_app(), "b", _app(), "b", False, ext), 488, "two application calls"),
        ((_app(), "b", _plain(), "a", True, ext), 488, "ringing"),
        ((_app(), "b", _plain(tenant_id=2), "a", False, ext), 403, "another tenant"),
        ((_app(bridged=False), "b", _plain(), "a", False, ext), 403, "bridged"),
        ((_app(), "b", _plain(state=CallState.RINGING), "a", False, ext), 403, "answered"),
        ((_app(), "b", _plain(relayed=False), "a", False, ext), 488, "does not relay"),
        ((joining, "b", _plain(), "a", False, ext), 491, "in progress"),
        ((_app(), "b", _plain(), "a", False, None), 403, "extension"),
    ]
    for args, status, words in cases:
        with pytest.raises(ReferError) as e:
            check_attended(*args)
        assert e.value.status == status and words in e.value.reason, (words, e.value.reason)
    same = _app()
    with pytest.raises(ReferError) as e:
        check_attended(same, "b", same, "a", False, ext)
    assert e.value.status == 400
