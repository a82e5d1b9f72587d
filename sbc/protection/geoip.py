"""Country of an address, from a MaxMind-format database (GeoLite2/GeoIP2 Country or City).

Read with the ``maxminddb`` reader (its C extension when available). Lookups run only when
a call starts from a tenant whose IP filter lists countries, never per packet.
"""

from __future__ import annotations

import maxminddb


class GeoIp:
    def __init__(self, path: str) -> None:
        try:
            self._reader = maxminddb.open_database(path)
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:
            raise ValueError(f"GeoIP database {path!r} cannot be read: {e}") from None

    def country(self, ip: str) -> str | None:
        """ISO 3166 alpha-2 code (upper case) or None when unknown (private, unlisted, bad)."""
        try:
            rec = self._reader.get(ip)
        except ValueError:
            return None
        if not isinstance(rec, dict):
            return None
        for key in ("country", "registered_country"):
            c = rec.get(key)
            if isinstance(c, dict) and isinstance(c.get("iso_code"), str):
                return c["iso_code"].upper()
        return None

    def close(self) -> None:
        self._reader.close()
