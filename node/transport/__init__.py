"""asyncio transports for SIP: UDP and TCP over IPv4 and IPv6."""
