"""RFC 3264 answers to real phones' offers, for the audio hivepbx terminates itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.sdp import (
    DEFAULT_CODECS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    Codec,
    Connection,
    LocalOrigin,
    SdpNotAcceptable,
    answer,
    make_offer,
    parse,
)

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str):
    return parse((SAMPLES / name).read_bytes())


def audio_attrs(sd, i: int = 0) -> list[str]:
    return [str(a) for a in sd.media[i].attributes]


def test_answer_to_baresip_keeps_offer_order_and_payload_types() -> None:
    offer = sample("baresip_offer.sdp")
    ans = answer(offer, DEFAULT_CODECS, "198.51.100.7", 20000)
    (m,) = ans.media
    assert (m.type, m.port, m.proto) == ("audio", 20000, "RTP/AVP")
    assert m.formats == ("0", "8", "101")  # opus and G.722 dropped, order kept
    assert audio_attrs(ans) == [
        "rtpmap:0 PCMU/8000",
        "rtpmap:8 PCMA/8000",
        "rtpmap:101 telephone-event/8000",
        "fmtp:101 0-15",  # offer 0-15 ∩ ours 0-16
        "ptime:20",  # echoed
        "sendrecv",
    ]
    assert ans.connection == Connection("198.51.100.7", "IP4")
    assert ans.timing == offer.timing  # RFC 3264 §6
    assert ans.origin.address == "198.51.100.7"
    # the answer is valid SDP that survives the wire
    assert parse(ans.to_bytes()) == ans


def test_answer_to_polycom_skips_its_preferred_g722() -> None:
    ans = answer(sample("polycom_vvx_offer.sdp"), DEFAULT_CODECS, "10.0.0.1", 4000)
    assert ans.media[0].formats == ("0", "8", "127")
    assert ans.media[0].fmtp(127) == "0-15"  # no fmtp offered means 0-15 (RFC 4733 §2.4.1)
    assert ans.media[0].direction == "sendrecv"


def test_answer_to_polycom_hold_is_recvonly() -> None:
    # the offer says sendonly at session level; the answer mirrors it per media
    ans = answer(sample("polycom_vvx_hold.sdp"), DEFAULT_CODECS, "10.0.0.1", 4000)
    assert ans.media[0].direction == "recvonly"


def test_answer_to_cisco_with_media_level_connection() -> None:
    ans = answer(sample("cisco_offer.sdp"), [PCMA, PCMU, TELEPHONE_EVENT], "10.0.0.1", 4000)
    # our preference list does not reorder: the offerer's order wins (RFC 3264 §6.1)
    assert ans.media[0].formats == ("0", "8", "101")


def test_answer_to_linphone_picks_the_8khz_telephone_event_and_rejects_video() -> None:
    offer = sample("linphone_offer_ice_video.sdp")
    ans = answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000)
    audio, video = ans.media
    assert audio.formats == ("0", "8", "100")
    assert audio.rtpmap(100).clock_rate == 8000
    assert "101" not in audio.formats and "99" not in audio.formats
    # RFC 3264 §6: same number of m-lines, rejected one has port 0 and keeps its formats
    assert (video.type, video.port, video.formats) == ("video", 0, ("96", "97"))
    assert video.attributes == ()
    assert not any(a.name.startswith("ice") or a.name == "candidate" for a in ans.attributes + audio.attributes)


def test_answer_to_sipp_default_has_no_telephone_event() -> None:
    ans = answer(sample("sipp_default_offer.sdp"), DEFAULT_CODECS, "127.0.0.1", 4000)
    assert ans.media[0].formats == ("0",)
    assert ans.media[0].ptime is None  # none offered, none forced


def test_ptime_can_be_forced() -> None:
    ans = answer(sample("sipp_default_offer.sdp"), DEFAULT_CODECS, "127.0.0.1", 4000, ptime=30)
    assert ans.media[0].ptime == 30


@pytest.mark.parametrize(
    ("offered", "local", "expected"),
    [
        ("sendrecv", "sendrecv", "sendrecv"),
        ("sendonly", "sendrecv", "recvonly"),
        ("recvonly", "sendrecv", "sendonly"),
        ("inactive", "sendrecv", "inactive"),
        ("sendrecv", "sendonly", "sendonly"),  # we put the call on hold in our answer
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "recvonly", "inactive"),
        ("sendrecv", "inactive", "inactive"),
    ],
)
def test_direction_is_mirrored_and_intersected(offered: str, local: str, expected: str) -> None:
    offer = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        f"m=audio 5000 RTP/AVP 0\r\na={offered}\r\n"
    )
    assert answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000, direction=local).media[0].direction == expected


def test_no_common_codec_is_488() -> None:
    with pytest.raises(SdpNotAcceptable) as exc:
        answer(sample("sipp_default_offer.sdp"), [PCMA, TELEPHONE_EVENT], "10.0.0.1", 4000)
    assert exc.value.status_hint == 488


def test_telephone_event_alone_is_not_an_audio_codec() -> None:
    offer = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 101 18\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    with pytest.raises(SdpNotAcceptable):
        answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000)


def test_srtp_only_audio_is_488() -> None:
    offer = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        "m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
    )
    with pytest.raises(SdpNotAcceptable):
        answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000)


def test_disabled_first_stream_is_rejected_and_second_audio_accepted() -> None:
    offer = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        "m=audio 0 RTP/AVP 0\r\nm=audio 5002 RTP/AVP 8 0\r\nm=audio 5004 RTP/AVP 0\r\n"
    )
    ans = answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000)
    assert [m.port for m in ans.media] == [0, 4000, 0]  # one stream only: the third is refused
    assert ans.media[1].formats == ("8", "0")


def test_offered_dynamic_number_for_a_static_codec_is_kept() -> None:
    offer = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 96 97\r\na=rtpmap:96 pcmu/8000\r\na=rtpmap:97 TELEPHONE-EVENT/8000\r\na=fmtp:97 0-11,16\r\n"
    )
    m = answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000).media[0]
    assert m.formats == ("96", "97")
    assert m.fmtp(97) == "0-11,16"


def test_telephone_event_with_disjoint_events_is_dropped() -> None:
    offer = parse(
        "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n"
        "m=audio 5000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 32-40\r\n"
    )
    assert answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000).media[0].formats == ("0",)


def test_answer_over_ipv6() -> None:
    ans = answer(sample("baresip_offer_ipv6.sdp"), DEFAULT_CODECS, "2001:db8::1", 4000)
    assert ans.connection == Connection("2001:db8::1", "IP6")
    assert ans.origin.addrtype == "IP6"
    assert b"c=IN IP6 2001:db8::1\r\n" in ans.to_bytes()


def test_origin_is_stable_and_versioned_per_rfc3264_s8() -> None:
    origin = LocalOrigin(sess_id=4242, version=7)
    offer = sample("baresip_offer.sdp")
    first = answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000, origin=origin)
    again = answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000, origin=origin)
    held = answer(offer, DEFAULT_CODECS, "10.0.0.1", 4000, origin=origin, direction="sendonly")
    assert (first.origin.sess_id, first.origin.sess_version) == ("4242", 7)
    assert again.origin == first.origin  # nothing changed: same version
    assert held.origin.sess_id == "4242" and held.origin.sess_version == 8


def test_make_offer_is_answerable() -> None:
    offer = make_offer(DEFAULT_CODECS, "10.0.0.1", 4000)
    assert parse(offer.to_bytes()) == offer
    m = offer.media[0]
    assert m.formats == ("0", "8", "101")
    assert m.fmtp(101) == "0-16"
    ans = answer(parse(offer.to_bytes()), [PCMA, TELEPHONE_EVENT], "10.0.0.2", 5000)
    assert ans.media[0].formats == ("8", "101")


def test_make_offer_needs_an_audio_codec() -> None:
    with pytest.raises(ValueError):
        make_offer([TELEPHONE_EVENT], "10.0.0.1", 4000)


def test_codec_matching_is_case_insensitive_and_checks_clock_and_channels() -> None:
    from node.sdp import RtpMap

    assert PCMU.matches(RtpMap(0, "pcmu", 8000))
    assert not PCMU.matches(RtpMap(0, "PCMU", 16000))
    assert not Codec("opus", 48000, 2).matches(RtpMap(96, "opus", 48000))
    assert Codec("opus", 48000, 2).matches(RtpMap(96, "opus", 48000, 2))
