"""Where a feature may send a call, written as one short string everywhere (hunt group
members and fallbacks, call forwarding, follow-me, time switches, feature codes).

  "1002"                 an internal number of the same tenant: extension, hunt group or time switch
  "tel:0301234" / "+49…" an external number, dialled through the tenant's outbound routes
  "sip:user@host:port"   a SIP URI rung directly (host must be an IP address)

Digits alone always mean an internal number, so a typo cannot leak a call out of the
tenant; a bare number longer than an extension (11+ digits) is external.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from node.config_rules import ConfigError
from node.pbx import routing
from node.ports import ConfigStore
from node.sip.errors import SipError
from node.sip.uri import Uri

#: kinds of feature objects reached by dialling their name (a number)
DIALLABLE_KINDS = ("hunt_group", "time_switch")

_INTERNAL = re.compile(r"[0-9]{2,10}")
_EXTERNAL = re.compile(r"\+?[0-9]{2,20}")


@dataclass(frozen=True, slots=True)
class Destination:
    #: 'internal', 'external' or 'uri'
    kind: str
    #: the number (internal/external) or the URI text
    value: str
    uri: Uri | None = None

    def __str__(self) -> str:
        if self.kind == "external":
            return self.value if self.value.startswith("+") else f"tel:{self.value}"
        return self.value


def parse(value: object, what: str = "destination") -> Destination:
    """The destination a string names, or ConfigError saying how to write one."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{what} must be a non-empty text such as '1002', 'tel:0301234' or 'sip:bob@192.0.2.1'")
    v = value.strip()
    if v.lower().startswith("sip:"):
        try:
            uri = Uri.parse(v)
        except SipError as e:
            raise ConfigError(f"{what} {v!r} is not a SIP URI: {e}") from None
        try:
            ipaddress.ip_address(uri.host_bare)
        except ValueError:
            raise ConfigError(f"{what} {v!r}: the host of a SIP URI must be an IP address") from None
        if uri.transport not in (None, "udp", "tcp"):
            raise ConfigError(f"{what} {v!r}: transport must be udp or tcp")
        return Destination("uri", v, uri)
    number = v[4:] if v.lower().startswith("tel:") else v
    number = number.replace(" ", "").replace("-", "")
    if v.lower().startswith("tel:") or number.startswith("+") or len(number) > 10:
        if not _EXTERNAL.fullmatch(number):
            raise ConfigError(f"{what} {v!r}: an external number is 2-20 digits, optionally with a leading +")
        return Destination("external", number)
    if not _INTERNAL.fullmatch(number):
        raise ConfigError(
            f"{what} {v!r}: use an internal number (2-10 digits), tel:NUMBER / +NUMBER for an external one,"
            " or sip:user@IP"
        )
    return Destination("internal", number)


def app_kinds() -> tuple[str, ...]:
    """Applications the node answers itself (IVR, ...: node/pbx/routing.py)."""
    return tuple(getattr(routing, "APP_KINDS", ()))


async def internal_kind(config: ConfigStore, tenant_id: int, number: str) -> str | None:
    """What an internal number reaches in this tenant: a feature object wins over an
    extension of the same number (that is how an extension number becomes a hunt group)."""
    for kind in DIALLABLE_KINDS + app_kinds():
        if await config.get_object(tenant_id, kind, number) is not None:
            return kind
    if await config.get_extension(tenant_id, number) is not None:
        return "extension"
    return None


async def check(config: ConfigStore, tenant_id: int, value: object, what: str = "destination") -> str:
    """Parse and check that an internal destination exists in *this* tenant; the normalised text."""
    dest = parse(value, what)
    if dest.kind == "internal" and await internal_kind(config, tenant_id, dest.value) is None:
        raise ConfigError(
            f"{what} {dest.value} is no extension, hunt group, time switch or application of this tenant"
            f" (write tel:{dest.value} for an external number)",
            404,
        )
    return str(dest)
