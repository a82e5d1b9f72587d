"""Sans-I/O SDP (RFC 4566) and offer/answer (RFC 3264)."""
