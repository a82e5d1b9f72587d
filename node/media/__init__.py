"""Sans-I/O media: RTP packets (rtp), RFC 4733 events (dtmf), G.711 (g711), tones (tones),
in-band DTMF detection (dtmf_detect), mix-minus (mixer), receive jitter buffer (jitter), the
20 ms frame clock (clock), 8 kHz WAV files (wav), RTCP reports and receiver statistics (rtcp).
The asyncio side is node.media_engine."""
