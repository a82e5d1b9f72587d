"""asyncio RTP relay: port pool and per-call anchored media."""
