"""Sans-I/O SDP (RFC 8866) and offer/answer (RFC 3264)."""

from node.sdp.anchoring import MediaAddress, media_address, relayed_stream, rewrite_for_relay
from node.sdp.errors import SdpError, SdpNotAcceptable
from node.sdp.model import (
    DIRECTIONS,
    INACTIVE,
    RECVONLY,
    SENDONLY,
    SENDRECV,
    Attribute,
    Connection,
    Media,
    Origin,
    RtpMap,
    SessionDescription,
)
from node.sdp.offer_answer import DEFAULT_CODECS, PCMA, PCMU, TELEPHONE_EVENT, Codec, answer, make_offer
from node.sdp.origin import LocalOrigin
from node.sdp.parser import parse

__all__ = [
    "parse", "SessionDescription", "Media", "Origin", "Connection", "Attribute", "RtpMap",
    "DIRECTIONS", "SENDRECV", "SENDONLY", "RECVONLY", "INACTIVE",
    "SdpError", "SdpNotAcceptable",
    "Codec", "PCMU", "PCMA", "TELEPHONE_EVENT", "DEFAULT_CODECS", "answer", "make_offer",
    "LocalOrigin", "rewrite_for_relay", "media_address", "relayed_stream", "MediaAddress",
]
