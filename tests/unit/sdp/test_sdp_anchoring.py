"""Rewriting peers' SDP so media flows through the node's relay."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.sdp import (
    Connection,
    LocalOrigin,
    MediaAddress,
    SdpError,
    media_address,
    parse,
    rewrite_for_relay,
)

SAMPLES = Path(__file__).parent / "samples"
RELAY = "203.0.113.1"


def raw(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def all_attribute_names(sd) -> set[str]:
    names = {a.name for a in sd.attributes}
    for m in sd.media:
        names |= {a.name for a in m.attributes}
    return names


def test_baresip_offer_moves_to_the_relay_and_keeps_its_codecs() -> None:
    before = parse(raw("baresip_offer.sdp"))
    after = rewrite_for_relay(raw("baresip_offer.sdp"), RELAY, 30000)
    assert after.connection == Connection(RELAY)
    m, m0 = after.media[0], before.media[0]
    assert m.port == 30000
    assert (m.formats, m.attributes, m.proto) == (m0.formats, m0.attributes, m0.proto)
    assert after.origin.address == RELAY
    assert after.origin.sess_version == before.origin.sess_version  # no LocalOrigin: only the address
    assert b"192.0.2.2" not in after.to_bytes()
    assert parse(after.to_bytes()) == after


def test_media_address_of_baresip() -> None:
    assert media_address(parse(raw("baresip_offer.sdp"))) == MediaAddress("192.0.2.2", 12098, "192.0.2.2", 12099)


def test_linphone_loses_ice_keeps_feedback_and_points_rtcp_at_the_relay() -> None:
    sd = parse(raw("linphone_offer_ice_video.sdp"))
    assert media_address(sd) == MediaAddress("192.168.0.23", 7078, "192.168.0.23", 7079)
    after = rewrite_for_relay(sd, RELAY, 30000)
    names = all_attribute_names(after)
    assert not names & {"candidate", "ice-ufrag", "ice-pwd"}
    assert "rtcp-fb" in names and "rtcp-xr" in names
    audio, video = after.media
    assert audio.attribute("rtcp") == "30001"
    # the relay carries one stream: video is disabled rather than left to bypass it
    assert video.port == 0 and video.attribute("rtcp") is None
    assert video.formats == ("96", "97")
    wire = after.to_bytes()
    assert b"192.168.0.23" not in wire and b"203.0.113.5" not in wire


def test_rtcp_attribute_with_address_is_rewritten_whole() -> None:
    sd = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        "m=audio 49170 RTP/AVP 0\r\na=rtcp:53020 IN IP4 126.16.64.4\r\n"
    )
    assert media_address(sd) == MediaAddress("10.0.0.9", 49170, "126.16.64.4", 53020)
    after = rewrite_for_relay(sd, RELAY, 30000)
    assert after.media[0].attribute("rtcp") == f"30001 IN IP4 {RELAY}"


@pytest.mark.parametrize("value", ["", " ", "abc", "0", "70000", "53020 IN IP4"])
def test_malformed_rtcp_attribute_falls_back_to_rtp_port_plus_one(value: str) -> None:
    sd = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        f"m=audio 49170 RTP/AVP 0\r\na=rtcp:{value}\r\n"
    )
    addr = media_address(sd)
    assert (addr.rtcp_host, addr.rtcp_port) == ("10.0.0.9", 53020 if value == "53020 IN IP4" else 49171)
    assert rewrite_for_relay(sd, RELAY, 30000).media[0].attribute("rtcp") == "30001"


def test_cisco_media_level_connection_is_replaced_without_adding_a_session_one() -> None:
    after = rewrite_for_relay(raw("cisco_offer.sdp"), RELAY, 30000)
    assert after.connection is None
    assert after.media[0].connection == Connection(RELAY)
    assert after.media[0].direction == "sendrecv"


def test_cisco_zero_address_hold_survives() -> None:
    sd = parse(raw("cisco_hold_zero_address.sdp"))
    assert media_address(sd).host == "0.0.0.0"
    after = rewrite_for_relay(sd, RELAY, 30000)
    m = after.media[0]
    assert m.connection == Connection("0.0.0.0")
    assert m.direction == "sendonly"
    assert m.port == 30000


def test_polycom_session_level_hold_survives() -> None:
    after = rewrite_for_relay(raw("polycom_vvx_hold.sdp"), RELAY, 30000)
    assert after.direction == "sendonly"
    assert after.media_direction(after.media[0]) == "sendonly"
    assert after.other == (("b", "AS:512"),)  # bandwidth and other lines pass through


def test_ipv6_offer_to_ipv4_relay_and_back() -> None:
    v4 = rewrite_for_relay(raw("baresip_offer_ipv6.sdp"), RELAY, 30000)
    assert v4.connection == Connection(RELAY, "IP4") and v4.origin.addrtype == "IP4"
    v6 = rewrite_for_relay(raw("baresip_offer.sdp"), "2001:db8::10", 30000)
    assert v6.connection == Connection("2001:db8::10", "IP6")
    assert v6.origin.addrtype == "IP6"
    assert b"c=IN IP6 2001:db8::10\r\n" in v6.to_bytes()


def test_ipv6_unspecified_address_is_hold_too() -> None:
    sd = parse("v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
    assert rewrite_for_relay(sd, "2001:db8::10", 30000).connection == Connection("::", "IP6")


def test_sipp_answer_with_bracketed_origin_is_cleaned() -> None:
    after = rewrite_for_relay(raw("sipp_default_answer_ipv6.sdp"), "::1", 30002)
    assert after.origin.address == "::1"
    assert after.media[0].port == 30002


def test_missing_connection_gets_the_relay_one() -> None:
    sd = parse("v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
    assert rewrite_for_relay(sd, RELAY, 30000).connection == Connection(RELAY)


def test_answer_rejecting_everything_passes_through() -> None:
    sd = parse("v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n")
    assert media_address(sd) is None
    after = rewrite_for_relay(sd, RELAY, 30000)
    assert after.media[0].port == 0
    assert after.connection == Connection(RELAY)


def test_local_origin_keeps_one_o_line_per_leg() -> None:
    leg = LocalOrigin(sess_id=99, version=1)
    offer = rewrite_for_relay(raw("baresip_offer.sdp"), RELAY, 30000, leg)
    assert (offer.origin.username, offer.origin.sess_id, offer.origin.sess_version) == ("hivepbx", "99", 1)
    # the phone refreshes the session (new o= version of its own, same content): no change for the far end
    refreshed = parse(raw("baresip_offer.sdp").replace(b"2076275274", b"2076275275"))
    assert rewrite_for_relay(refreshed, RELAY, 30000, leg).origin == offer.origin
    # hold changes content: version + 1, same session id
    hold = parse(raw("baresip_offer.sdp").replace(b"a=sendrecv", b"a=sendonly"))
    held = rewrite_for_relay(hold, RELAY, 30000, leg)
    assert (held.origin.sess_id, held.origin.sess_version) == ("99", 2)
    assert held.media[0].direction == "sendonly"
    resumed = rewrite_for_relay(raw("baresip_offer.sdp"), RELAY, 30000, leg)
    assert resumed.origin.sess_version == 3
    # the other leg has its own origin, unaffected
    other = LocalOrigin(sess_id=100)
    assert rewrite_for_relay(raw("sipp_default_offer.sdp"), RELAY, 30002, other).origin.sess_version == 1


def test_origin_follows_the_peer_even_when_its_ip_family_changes() -> None:
    leg = LocalOrigin(sess_id=5)
    a = rewrite_for_relay(raw("baresip_offer.sdp"), RELAY, 30000, leg)
    b = rewrite_for_relay(raw("baresip_offer.sdp"), "2001:db8::10", 30000, leg)
    assert a.origin.addrtype == "IP4" and b.origin.addrtype == "IP6"
    assert b.origin.sess_version == a.origin.sess_version + 1


def test_malformed_bytes_raise_sdp_error() -> None:
    with pytest.raises(SdpError) as exc:
        rewrite_for_relay(b"v=0\r\nnonsense\r\n", RELAY, 30000)
    assert exc.value.status_hint == 400
