"""What a valid tenant configuration is, checked before anything is written.

The messages are shown as they are to the operator (``hivepbx ext add ...``), so each says
which value is wrong and what would be right. Every check returns the normalised value.
"""

from __future__ import annotations

import ipaddress
import json
import re
import zoneinfo


class ConfigError(ValueError):
    """A configuration change that cannot be applied. ``status_hint`` is the HTTP status an
    API would answer with: 400 invalid value, 404 unknown referent, 409 conflict."""

    status_hint: int = 400

    def __init__(self, message: str, status_hint: int | None = None) -> None:
        super().__init__(message)
        if status_hint is not None:
            self.status_hint = status_hint


_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_EXT = re.compile(r"[0-9]{2,10}")
_E164ISH = re.compile(r"\+?[0-9]{2,20}")
_PREFIX = re.compile(r"\+?[0-9]{0,20}")
_CTRL = re.compile(r"[\x00-\x1f\x7f]")

TRANSPORTS = ("udp", "tcp")
#: besides an extension, a DID may lead to a feature object of that kind named by its number
DID_DEST_TYPES = ("extension", "hunt_group", "time_switch", "ivr", "conference", "voicemail")


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text, not {type(value).__name__}")
    return value.strip()


def _int(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be a whole number, not {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{what} must be between {lo} and {hi}, not {value}")
    return value


def _matching(value: object, what: str, pattern: re.Pattern, hint: str) -> str:
    v = _text(value, what)
    if not pattern.fullmatch(v):
        raise ConfigError(f"invalid {what} {v!r}: {hint}")
    return v


_NAME_HINT = "use 1-63 letters, digits, '-' or '_', starting with a letter"


def tenant_name(value: object) -> str:
    # no dots and a leading letter: a name can never be mistaken for a domain or an id
    return _matching(value, "tenant name", _NAME, _NAME_HINT)


def domain(value: object, what: str = "domain") -> str:
    """A DNS host name (RFC 1035 §2.3.1, RFC 1123 §2.1), lower-cased, at least two labels."""
    v = _text(value, what).lower().rstrip(".")
    labels = v.split(".")
    if (
        len(v) > 253
        or len(labels) < 2
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ConfigError(
            f"invalid {what} {v!r}: expected a DNS name such as pbx.example.com "
            "(letters, digits and '-', at least one dot, not an IP address)"
        )
    return v


def max_calls(value: object) -> int:
    return _int(value, "max calls", 0, 1_000_000)


def ring_timeout(value: object) -> int:
    return _int(value, "ring timeout (seconds)", 1, 3600)


def timezone(value: object) -> str:
    v = _text(value, "timezone")
    if v == "UTC":
        return v  # valid even where no tz database is installed (slim containers)
    try:
        zoneinfo.ZoneInfo(v)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown timezone {v!r}: use an IANA name such as Europe/Berlin or UTC") from None
    return v


def extension_number(value: object) -> str:
    return _matching(value, "extension number", _EXT, "use 2 to 10 digits")


def password(value: object, what: str = "password") -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text")
    if len(value) < 6:
        raise ConfigError(f"{what} too short: use at least 6 characters")
    if len(value) > 128:
        raise ConfigError(f"{what} too long: use at most 128 characters")
    if _CTRL.search(value):
        raise ConfigError(f"{what} must not contain control characters")
    return value


def display_name(value: object) -> str:
    # it goes into From/To display-names (RFC 3261 §25.1 quoted-string): keep it plain
    v = _text(value, "display name")
    if len(v) > 64:
        raise ConfigError("display name too long: use at most 64 characters")
    if _CTRL.search(v) or any(c in v for c in '"\\<>'):
        raise ConfigError('display name must not contain control characters or any of " \\ < >')
    return v


def callerid_number(value: object) -> str:
    v = _text(value, "caller ID number")
    if v and not _E164ISH.fullmatch(v):
        raise ConfigError(f"invalid caller ID number {v!r}: use 2 to 20 digits, optionally with a leading +")
    return v


def did_number(value: object) -> str:
    v = _text(value, "DID number").replace(" ", "")
    if not _E164ISH.fullmatch(v):
        raise ConfigError(f"invalid DID number {v!r}: use 2 to 20 digits, optionally with a leading +")
    return v


def did_key(number: str) -> str:
    """One owner per number however it is written: '+4930123' and '4930123' are the same DID."""
    return number.removeprefix("+")


def did_dest_type(value: object) -> str:
    v = _text(value, "DID destination type")
    if v not in DID_DEST_TYPES:
        raise ConfigError(f"unsupported DID destination type {v!r}: use one of {', '.join(DID_DEST_TYPES)}")
    return v


def trunk_name(value: object) -> str:
    return _matching(value, "trunk name", _NAME, _NAME_HINT)


def host(value: object) -> str:
    """An IP address (normalised as sockets report it, so source matching works) or a DNS name."""
    v = _text(value, "trunk host")
    bare = v[1:-1] if v.startswith("[") and v.endswith("]") else v
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        return domain(bare, "trunk host")
    except ConfigError:
        raise ConfigError(f"invalid trunk host {v!r}: expected an IP address or a DNS name") from None


def port(value: object) -> int:
    return _int(value, "port", 1, 65535)


def transport(value: object) -> str:
    v = _text(value, "transport").lower()
    if v not in TRANSPORTS:
        raise ConfigError(f"invalid transport {v!r}: use udp or tcp")
    return v


def credential(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be text")
    if len(value) > 128 or _CTRL.search(value):
        raise ConfigError(f"invalid {what}: at most 128 characters, no control characters")
    return value


def route_prefix(value: object) -> str:
    return _matching(
        value, "route prefix", _PREFIX, "use digits (optionally a leading +), or an empty prefix for the default route"
    )


def strip(value: object) -> int:
    return _int(value, "strip", 0, 20)


def prepend(value: object) -> str:
    return _matching(value, "prepend", _PREFIX, "use digits, optionally with a leading +")


def priority(value: object) -> int:
    return _int(value, "priority", 0, 1_000_000)


def unknown_options(kind: str, opts: dict, allowed: tuple[str, ...]) -> None:
    extra = sorted(set(opts) - set(allowed))
    if extra:
        raise TypeError(f"unknown {kind} option(s): {', '.join(extra)} (allowed: {', '.join(allowed)})")


# --- whole records: every ConfigStore backend checks a new record here, then writes it


def new_tenant(name: object, domain_name: object, opts: dict) -> tuple[str, str, int, int, str]:
    """(name, domain, max_calls, ring_timeout, timezone) of a tenant to create."""
    unknown_options("tenant", opts, ("max_calls", "ring_timeout", "timezone"))
    return (
        tenant_name(name),
        domain(domain_name),
        max_calls(opts.get("max_calls", 0)),
        ring_timeout(opts.get("ring_timeout", 30)),
        timezone(opts.get("timezone", "UTC")),
    )


def new_extension(number: object, secret: object, opts: dict) -> tuple[str, str, str, str, bool]:
    """(number, password, display_name, callerid_number, voicemail_enabled) of an extension to create."""
    unknown_options("extension", opts, ("display_name", "callerid_number", "voicemail_enabled"))
    return (
        extension_number(number),
        password(secret),
        display_name(opts.get("display_name", "")),
        callerid_number(opts.get("callerid_number", "")),
        bool(opts.get("voicemail_enabled", False)),
    )


def new_did(number: object, dest_type: object, dest_value: object) -> tuple[str, str, str]:
    """(number, dest_type, dest_value) of a DID to create."""
    return did_number(number), did_dest_type(dest_type), extension_number(dest_value)


def new_trunk(name: object, host_value: object, opts: dict) -> tuple[str, str, int, str, str, str, bool, str]:
    """(name, host, port, transport, username, password, register, from_domain) of a trunk to create."""
    unknown_options("trunk", opts, ("port", "transport", "username", "password", "register", "from_domain"))
    name = trunk_name(name)
    host_value = host(host_value)
    port_value = port(opts.get("port", 5060))
    transport_value = transport(opts.get("transport", "udp"))
    username = credential(opts.get("username", ""), "trunk username")
    secret = credential(opts.get("password", ""), "trunk password")
    register = bool(opts.get("register", False))
    from_domain = opts.get("from_domain", "")
    from_domain = domain(from_domain, "from domain") if from_domain else ""
    if register and not username:
        raise ConfigError("a trunk that registers needs a username")
    return name, host_value, port_value, transport_value, username, secret, register, from_domain


def new_route(prefix: object, opts: dict) -> tuple[str, int, str, int]:
    """(prefix, strip, prepend, priority) of an outbound route to create."""
    unknown_options("route", opts, ("strip", "prepend", "priority"))
    return (
        route_prefix(prefix),
        strip(opts.get("strip", 0)),
        prepend(opts.get("prepend", "")),
        priority(opts.get("priority", 0)),
    )


#: feature object kinds: lower-case word, like 'ivr', 'voicemail', 'hunt_group', 'queue'
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")
#: object names: what a tenant calls it ('main', '2001', 'sales queue')
_OBJ_NAME = re.compile(r"[A-Za-z0-9_.+*# -]{1,64}\Z")
#: a document's size once encoded as JSON, bytes
MAX_OBJECT_BYTES = 64 * 1024


def object_kind(value: object) -> str:
    v = _text(value, "object kind")
    if not _KIND.match(v):
        raise ConfigError(f"object kind {v!r}: use a lower-case word (a-z, 0-9, _), up to 32 characters")
    return v


def object_name(value: object) -> str:
    v = _text(value, "object name")
    if not _OBJ_NAME.match(v) or v != v.strip():
        raise ConfigError(f"object name {v!r}: 1-64 characters of letters, digits, space and _ . + * # -")
    return v


def object_document(value: object) -> str:
    """The document as canonical JSON text (sorted keys): what every backend stores."""
    if not isinstance(value, dict):
        raise ConfigError(f"object document must be a JSON object, not {type(value).__name__}")
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"object document is not JSON: {e}") from None
    if len(text.encode()) > MAX_OBJECT_BYTES:
        raise ConfigError(f"object document too large ({len(text)} bytes, at most {MAX_OBJECT_BYTES})")
    return text
