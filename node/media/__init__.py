"""Sans-I/O media: RTP packets, G.711, DTMF."""
