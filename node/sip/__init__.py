"""Sans-I/O SIP core (RFC 3261): parse, serialize, transactions, dialogs, digest. No sockets, no clock, no asyncio."""
