"""MediaAnchor: the SDP crossing the bridge, without sockets (a stand-in relay session)."""

from __future__ import annotations

import pytest

from node.pbx.media import MediaAnchor
from node.sdp import SdpNotAcceptable, parse

OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
    b"m=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\na=sendrecv\r\n"
)
OTHER_OFFER = OFFER.replace(b"6000", b"7000").replace(b"192.0.2.10", b"192.0.2.11")


class FakeLeg:
    def __init__(self, port: int) -> None:
        self.local_port = port
        self.remotes: list[tuple] = []

    def set_remote(self, *args) -> None:
        self.remotes.append(args)


class FakeSession:
    def __init__(self) -> None:
        self.a, self.b = FakeLeg(40000), FakeLeg(40002)

    def leg(self, name: str) -> FakeLeg:
        return self.a if name == "a" else self.b


def test_checked_offer_is_rewritten_with_its_own_address() -> None:
    s = FakeSession()
    m = MediaAnchor(s, None)  # type: ignore[arg-type]
    m.check_offer(OFFER)
    out = parse(m.rewrite("a", OFFER, "198.51.100.1"))
    assert s.a.remotes == [("192.0.2.10", 6000, 6001, "192.0.2.10")]
    assert out.media[0].port == 40002 and out.connection is not None and out.connection.host == "198.51.100.1"


def test_a_body_other_than_the_checked_offer_is_parsed_afresh() -> None:
    s = FakeSession()
    m = MediaAnchor(s, None)  # type: ignore[arg-type]
    m.check_offer(OFFER)
    m.rewrite("a", OTHER_OFFER, "198.51.100.1")
    assert s.a.remotes == [("192.0.2.11", 7000, 7001, "192.0.2.11")]
    # and the checked offer is not reused later either
    m.rewrite("a", OFFER, "198.51.100.1")
    assert s.a.remotes[-1] == ("192.0.2.10", 6000, 6001, "192.0.2.10")


def test_refused_offer_is_not_kept() -> None:
    m = MediaAnchor(FakeSession(), None)  # type: ignore[arg-type]
    with pytest.raises(SdpNotAcceptable):
        m.check_offer(OFFER.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 18").replace(b"a=rtpmap:0 PCMU/8000\r\n", b""))
    assert m._checked is None


def test_repeated_rewrite_keeps_the_o_line_version() -> None:
    m = MediaAnchor(FakeSession(), None)  # type: ignore[arg-type]
    first = parse(m.rewrite("a", OFFER, "198.51.100.1"))
    again = parse(m.rewrite("a", OFFER, "198.51.100.1"))
    moved = parse(m.rewrite("a", OTHER_OFFER.replace(b"a=sendrecv", b"a=sendonly"), "198.51.100.1"))
    assert first.origin == again.origin
    assert (moved.origin.sess_id, moved.origin.sess_version) == (first.origin.sess_id, first.origin.sess_version + 1)


def test_the_codec_verdict_of_a_known_shape_holds_for_every_body_of_it() -> None:
    """The offer check is memoised per SDP shape (node/sdp/anchoring.py): a refused shape
    stays refused for other addresses and ports, and an accepted one accepted."""
    g729 = OFFER.replace(b"RTP/AVP 0 8 101", b"RTP/AVP 18").replace(b"a=rtpmap:0 PCMU/8000\r\n", b"")
    for host, port in ((b"192.0.2.20", b"6100"), (b"192.0.2.21", b"6102")):
        with pytest.raises(SdpNotAcceptable):
            MediaAnchor(FakeSession(), None).check_offer(  # type: ignore[arg-type]
                g729.replace(b"192.0.2.10", host).replace(b"6000", port))
        s = FakeSession()
        m = MediaAnchor(s, None)  # type: ignore[arg-type]
        body = OFFER.replace(b"192.0.2.10", host).replace(b"6000", port)
        m.check_offer(body)
        m.rewrite("a", body, "198.51.100.1")
        assert s.a.remotes == [(host.decode(), int(port), int(port) + 1, host.decode())]
    held = OFFER.replace(b"c=IN IP4 192.0.2.10", b"c=IN IP4 0.0.0.0")
    s = FakeSession()
    MediaAnchor(s, None).rewrite("a", held, "198.51.100.1")  # type: ignore[arg-type]
    assert s.a.remotes == [("0.0.0.0", 6000, 6001, "0.0.0.0")]
