"""Call pickup: group validation, which ringing calls a picker may take, tenant isolation."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from node.config_rules import ConfigError
from node.pbx import feature_codes, feature_objects, pickup
from node.pbx.call import CallState


@pytest.mark.parametrize("doc, msg", [
    ({}, "members"), ({"members": []}, "non-empty"), ({"members": ["a"]}, "pickup group member"),
])
def test_validation(doc, msg):
    with pytest.raises(ConfigError) as e:
        pickup.validate(doc)
    assert msg in str(e.value)


async def test_who_may_pick_what(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    for n in ("1001", "1002", "1003", "1004"):
        await c.create_extension(a.id, n, "pw-secret-1")
    await feature_codes.save(c, a.id, "*8", {"action": "pickup"})
    await feature_codes.save(c, a.id, "**", {"action": "directed_pickup"})
    await feature_objects.save(c, a.id, "pickup_group", "sales", {"members": ["1001", "1002"]})
    await feature_objects.save(c, a.id, "pickup_group", "ops", {"members": ["1002", "1003"]})
    with pytest.raises(ConfigError, match="not an extension"):
        await feature_objects.save(c, a.id, "pickup_group", "x", {"members": ["1999"]})
    assert await pickup.wanted(c, a.id, "1002", "*8") == {"1001", "1003"}
    assert await pickup.wanted(c, a.id, "1004", "*8") == set()
    assert await pickup.wanted(c, a.id, "1004", "**1001") == {"1001"}
    assert await pickup.wanted(c, a.id, "1004", "*81") is None  # group pickup takes no number
    assert await pickup.wanted(c, a.id, "1004", "**") is None
    assert await pickup.wanted(c, a.id, "1004", "1001") is None


def _call(tenant_id, start, ext, state=CallState.RINGING, final=0):
    leg = SimpleNamespace(final=final, cancelled=False,
                          target=SimpleNamespace(kind="extension", binding=SimpleNamespace(extension=ext)))
    return SimpleNamespace(tenant=SimpleNamespace(id=tenant_id), state=state, start=start, legs=[leg],
                           invite=SimpleNamespace(body=b"v=0"))


def test_find_ringing_oldest_same_tenant_only():
    calls = [_call(2, 1.0, "1002"), _call(1, 3.0, "1002"), _call(1, 2.0, "1002"),
             _call(1, 0.5, "1002", state=CallState.ANSWERED), _call(1, 0.1, "1002", final=486),
             _call(1, 0.2, "1003")]
    assert pickup.find_ringing(calls, 1, {"1002"}) is calls[2]
    assert pickup.find_ringing(calls, 1, {"1003"}) is calls[5]
    assert pickup.find_ringing(calls, 3, {"1002"}) is None


def _sdp(port: int, *pts: str) -> bytes:
    maps = {"0": "PCMU/8000", "8": "PCMA/8000", "9": "G722/8000", "101": "telephone-event/8000"}
    lines = ["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "c=IN IP4 192.0.2.1", "t=0 0",
             f"m=audio {port} RTP/AVP {' '.join(pts)}"]
    lines += [f"a=rtpmap:{pt} {maps[pt]}" for pt in pts]
    return ("\r\n".join(lines) + "\r\n").encode()


def test_two_offers_meet_with_the_codecs_both_have():
    """Pickup / park retrieval / Replaces answer an offer with another offer's party on the
    far side: the answer lists only codecs both have, at the relay port facing the offerer."""
    from node.pbx import outgoing
    from node.sdp.errors import SdpNotAcceptable
    from node.sdp.origin import LocalOrigin
    from node.sdp.parser import parse

    learned = {}
    media = SimpleNamespace(advertise=None, _origins={"a": LocalOrigin(), "b": LocalOrigin()},
                            rewrite=lambda side, body, ip: learned.setdefault(side, body),
                            session=SimpleNamespace(leg=lambda side: SimpleNamespace(local_port=40000 if side == "a" else 40002)))
    call = SimpleNamespace(media=media)
    offer = _sdp(5000, "9", "8", "0", "101")  # the taker: G.722 first, then G.711
    other = _sdp(6000, "0", "101")  # the caller: PCMU only
    ans = parse(outgoing.relay_answer(call, "b", offer, other, "127.0.0.1"))
    m = ans.media[0]
    assert m.port == 40002 and ans.connection.host == "127.0.0.1"
    assert [m.rtpmap(pt).encoding.upper() for pt in m.payload_types] == ["PCMU", "TELEPHONE-EVENT"]
    assert learned["b"] == offer  # the relay learned where the taker receives
    with pytest.raises(SdpNotAcceptable):
        outgoing.relay_answer(call, "b", _sdp(5000, "8"), other, "127.0.0.1")
