"""asyncio RTP relay: port pool and per-call anchored media."""

from node.rtp_engine.errors import BadRemote, PortsExhausted, RelayError
from node.rtp_engine.port_pool import PortPool
from node.rtp_engine.relay import LegStats, RelayLeg, RelaySession, RtpRelay, SessionStats

__all__ = [
    "PortPool", "RtpRelay", "RelaySession", "RelayLeg", "LegStats", "SessionStats",
    "RelayError", "PortsExhausted", "BadRemote",
]
