"""The SBC's configuration: one frozen dataclass, from a TOML file and/or CLI flags.

Every value is checked here, at load time, with a message that names the offending key,
so a bad file fails ``hivepbx sbc`` at start and never a call later.

TOML layout (every key optional except the node list, unless etcd is configured)::

    [sbc]
    listen = ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060"]   # faces phones and carriers
    internal_listen = ["udp:10.0.0.5:5070"]             # faces the nodes ([] = same sockets)
    advertise = "203.0.113.10"      # external address in Via/Contact when bound to a wildcard
    internal_advertise = "10.0.0.5"
    mode = "hash"                   # hash | round_robin | static
    dc = "dc1"
    workers = 1                     # processes sharing the ports (SO_REUSEPORT)
    state_dir = "/var/lib/hivepbx-sbc"  # tenants' call counts and daily usage, kept across restarts
    max_loop_lag = 0.1              # seconds a message may wait (loop lag + socket backlog) before new calls get 503 (0 = never)
    http = "127.0.0.1:9090"         # /metrics (worker i: port + i)
    secret = "long random string"   # seals the tokens in Contact URIs; keep it across restarts
    probe_interval = 2.0            # seconds between OPTIONS probes of each node (0 = none)
    node_timeout = 2.0              # no answer at all from a node within this: try the next one

    [[nodes]]
    id = "n1"
    address = "10.0.0.11:5060"
    transport = "udp"
    dc = "dc1"
    weight = 1

    [tenants."acme.example"]        # per-tenant distribution
    mode = "static"
    nodes = ["n1"]

    [[carriers]]                    # calls from this source belong to that tenant
    address = "198.51.100.7"
    tenant = "acme.example"

    [etcd]                          # node list from cluster membership instead of [[nodes]]
    endpoints = ["127.0.0.1:2379"]
    host_id = "sbc-1"               # this host in the tenants' shared counts (default: hostname)
    limits_ttl = 10                 # seconds a dead host's live calls still count
    limits_timeout = 1.0            # seconds an etcd call of those counts may take (slower = down)

    [protection]                    # handed to sbc.protection.Guard
    [media]                         # handed to sbc.media.MediaAnchor
"""

from __future__ import annotations

import ipaddress
import secrets
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from node.transport.sockets import Listen

MODES = ("hash", "round_robin", "static")
#: towards the nodes
TRANSPORTS = ("udp", "tcp")
#: where the SBC listens for phones and carriers (tls: RFC 3261 §26; ws/wss: RFC 7118)
LISTEN_TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
_DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061, "ws": 80, "wss": 443}


class SbcConfigError(ValueError):
    """A configuration value is wrong; the message says which and why."""


@dataclass(frozen=True, slots=True)
class NodeTarget:
    """One PBX node behind the SBC."""

    id: str
    host: str
    port: int = 5060
    transport: str = "udp"
    dc: str = ""
    weight: int = 1

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    mode: str
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Carrier:
    host: str
    port: int | None
    tenant: str


def _default_listens() -> tuple[Listen, ...]:
    return (Listen("udp", "0.0.0.0", 5060), Listen("tcp", "0.0.0.0", 5060))


@dataclass(frozen=True, slots=True)
class SbcConfig:
    listens: tuple[Listen, ...] = field(default_factory=_default_listens)
    #: sockets towards the nodes; empty = the external sockets serve both sides
    internal_listens: tuple[Listen, ...] = ()
    #: certificate chain and key (PEM files) for tls and wss listeners
    tls_cert: str | None = None
    tls_key: str | None = None
    advertise_address: str | None = None
    internal_advertise_address: str | None = None
    nodes: tuple[NodeTarget, ...] = ()
    mode: str = "hash"
    tenants: dict[str, TenantPolicy] = field(default_factory=dict)
    carriers: tuple[Carrier, ...] = ()
    dc: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 9090
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    #: seconds between OPTIONS probes of each node (0: no probes, passive failure detection only)
    probe_interval: float = 2.0
    #: a probe without an answer within this counts as failed
    probe_timeout: float = 1.0
    #: consecutive failed probes before a node is down / good ones before it is back
    down_after: int = 2
    up_after: int = 2
    #: seconds without any response from a node before a new request moves to another node
    node_timeout: float = 2.0
    #: seconds between CRLF keep-alives to phones registered over UDP (0 = off)
    keepalive_interval: float = 25.0
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/hivepbx/"
    #: this SBC host in the tenants' cross-host counts (sbc/protection/cluster_counts.py);
    #: stable across restarts, unique per host; "" = hostname + state dir hash (or + pid)
    host_id: str = ""
    #: lease TTL of this host's published live calls (a dead host's calls count this long)
    limits_ttl: int = 10
    #: deadline of each etcd call of those counts: a slower (stalled) etcd counts as down
    limits_timeout: float = 1.0
    max_message_size: int = 65535
    log_level: str = "INFO"
    #: OpenTelemetry span exporter: None (no spans recorded), 'console' or 'otlp'
    otel_exporter: str | None = None
    protection: dict = field(default_factory=dict)
    media: dict = field(default_factory=dict)
    #: processes sharing the listening ports (SO_REUSEPORT; see sbc/workers.py)
    workers: int = 1
    #: how long a message may wait (seconds, smoothed: event-loop lag + the UDP receive
    #: backlog) before new INVITEs/REGISTERs get 503 + Retry-After (sbc/overload.py); 0 = never
    max_loop_lag: float = 0.1
    #: the Retry-After of those 503s (seconds)
    shed_retry_after: int = 2
    #: where the tenants' call counters and daily usage are kept across restarts
    #: (sbc/protection/counters.py); "" = in memory only
    state_dir: str = ""

    def with_(self, **kw: Any) -> "SbcConfig":
        return replace(self, **kw)

    def node(self, node_id: str) -> NodeTarget | None:
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None


# ------------------------------------------------------------------ parsing helpers


def parse_hostport(value: str, what: str, default_port: int | None = 5060) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` → (host, port); host is an IP literal or a name."""
    if not isinstance(value, str) or not value:
        raise SbcConfigError(f"{what}: expected host[:port], got {value!r}")
    v = value.strip()
    if v.startswith("["):
        host, _, rest = v[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise SbcConfigError(f"{what}: bad address {value!r}")
    elif v.count(":") == 1:
        host, port_s = v.split(":")
    elif v.count(":") > 1:  # bare IPv6
        host, port_s = v, ""
    else:
        host, port_s = v, ""
    if not host:
        raise SbcConfigError(f"{what}: missing host in {value!r}")
    if port_s:
        if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
            raise SbcConfigError(f"{what}: bad port in {value!r} (0-65535)")
        port = int(port_s)
    elif default_port is None:
        raise SbcConfigError(f"{what}: a port is needed in {value!r}")
    else:
        port = default_port
    return host, port


def parse_listen(value: str, what: str = "listen", transports: tuple[str, ...] = LISTEN_TRANSPORTS) -> Listen:
    """``udp:HOST:PORT`` / ``tcp:[::]:5060`` / ``tls:0.0.0.0:5061`` / ``wss:0.0.0.0:8443``."""
    transport, sep, rest = value.partition(":") if isinstance(value, str) else ("", "", "")
    transport = transport.lower()
    if not sep or transport not in transports:
        raise SbcConfigError(f"{what}: expected {'|'.join(transports)}:HOST:PORT, got {value!r}")
    host, port = parse_hostport(rest, what, _DEFAULT_PORTS[transport])
    return Listen(transport, host, port)


def ip_address(value: str, what: str) -> str:
    """``value`` as a normalised IP address literal, or SbcConfigError naming ``what``."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise SbcConfigError(f"{what}: {value!r} is not an IP address") from None


def _num(d: dict, key: str, kind: type, default, lo: float, what: str):
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
        raise SbcConfigError(f"{what}.{key}: expected a {kind.__name__}, got {v!r}")
    if v < lo:
        raise SbcConfigError(f"{what}.{key}: must be at least {lo}, got {v!r}")
    return kind(v)


def _str_list(d: dict, key: str, what: str) -> list[str]:
    v = d.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise SbcConfigError(f"{what}.{key}: expected a list of strings")
    return v


def parse_node(d: Any, index: int) -> NodeTarget:
    what = f"nodes[{index}]"
    if not isinstance(d, dict):
        raise SbcConfigError(f"{what}: expected a table")
    unknown = set(d) - {"id", "address", "transport", "dc", "weight"}
    if unknown:
        raise SbcConfigError(f"{what}: unknown key(s) {sorted(unknown)}")
    if "address" not in d:
        raise SbcConfigError(f"{what}: address is required")
    host, port = parse_hostport(d["address"], f"{what}.address")
    node_id = d.get("id", f"{host}:{port}")
    if not isinstance(node_id, str) or not node_id:
        raise SbcConfigError(f"{what}.id: expected a non-empty string")
    transport = str(d.get("transport", "udp")).lower()
    if transport not in TRANSPORTS:
        raise SbcConfigError(f"{what}.transport: {transport!r} is not one of {TRANSPORTS}")
    dc = d.get("dc", "")
    if not isinstance(dc, str):
        raise SbcConfigError(f"{what}.dc: expected a string")
    weight = _num(d, "weight", int, 1, 1, what)
    return NodeTarget(node_id, host, port, transport, dc, weight)


def parse_node_flag(value: str) -> NodeTarget:
    """``--node ID=HOST:PORT[,dc=DC][,weight=N][,transport=tcp]`` (ID= optional)."""
    parts = value.split(",")
    head = parts[0]
    d: dict[str, Any] = {}
    if "=" in head:
        d["id"], d["address"] = head.split("=", 1)
    else:
        d["address"] = head
    for p in parts[1:]:
        k, sep, v = p.partition("=")
        if not sep:
            raise SbcConfigError(f"--node {value!r}: expected key=value after the address, got {p!r}")
        d[k.strip()] = int(v) if k.strip() == "weight" and v.isdigit() else v
    return parse_node(d, 0)


def _check_nodes(nodes: tuple[NodeTarget, ...]) -> None:
    seen: set[str] = set()
    for n in nodes:
        if n.id in seen:
            raise SbcConfigError(f"nodes: id {n.id!r} appears twice")
        seen.add(n.id)


def _parse_tenants(d: Any, node_ids: set[str], have_etcd: bool) -> dict[str, TenantPolicy]:
    if not isinstance(d, dict):
        raise SbcConfigError("tenants: expected a table of tenant domains")
    out: dict[str, TenantPolicy] = {}
    for domain, t in d.items():
        what = f"tenants.{domain}"
        if not isinstance(t, dict):
            raise SbcConfigError(f"{what}: expected a table")
        mode = t.get("mode", "static" if t.get("nodes") else "hash")
        if mode not in MODES:
            raise SbcConfigError(f"{what}.mode: {mode!r} is not one of {MODES}")
        nodes = tuple(_str_list(t, "nodes", what))
        if mode == "static" and not nodes:
            raise SbcConfigError(f"{what}: static mode needs a nodes list")
        for n in nodes:
            if n not in node_ids and not have_etcd:
                raise SbcConfigError(f"{what}.nodes: unknown node id {n!r}")
        out[domain.lower()] = TenantPolicy(mode, nodes)
    return out


def _parse_carriers(v: Any) -> tuple[Carrier, ...]:
    if not isinstance(v, list):
        raise SbcConfigError("carriers: expected an array of tables")
    out = []
    for i, c in enumerate(v):
        what = f"carriers[{i}]"
        if not isinstance(c, dict) or "address" not in c or "tenant" not in c:
            raise SbcConfigError(f"{what}: needs address and tenant")
        addr = str(c["address"])
        host, port = parse_hostport(addr, f"{what}.address", default_port=0)
        out.append(Carrier(ip_address(host, f"{what}.address"), port or None, str(c["tenant"]).lower()))
    return tuple(out)


def from_dict(data: dict, base: SbcConfig | None = None, *, check: bool = True) -> SbcConfig:
    """A config from parsed TOML (``base`` supplies what the file does not set; ``check=False``
    leaves the final validation to the caller, whose flags may complete it)."""
    cfg = base or SbcConfig()
    unknown = set(data) - {"sbc", "nodes", "tenants", "carriers", "etcd", "protection", "media"}
    if unknown:
        raise SbcConfigError(f"unknown section(s) {sorted(unknown)}")
    s = data.get("sbc", {})
    if not isinstance(s, dict):
        raise SbcConfigError("sbc: expected a table")
    known = {
        "listen", "internal_listen", "tls_cert", "tls_key", "advertise", "internal_advertise", "mode", "dc", "http", "secret",
        "probe_interval", "probe_timeout", "down_after", "up_after", "node_timeout", "keepalive_interval",
        "max_message_size", "log_level", "otel_exporter", "workers", "max_loop_lag", "shed_retry_after",
        "state_dir",
    }
    unknown = set(s) - known
    if unknown:
        raise SbcConfigError(f"sbc: unknown key(s) {sorted(unknown)}")
    kw: dict[str, Any] = {}
    if "listen" in s:
        kw["listens"] = tuple(parse_listen(v, "sbc.listen") for v in _str_list(s, "listen", "sbc"))
    if "internal_listen" in s:
        kw["internal_listens"] = tuple(
            parse_listen(v, "sbc.internal_listen", TRANSPORTS) for v in _str_list(s, "internal_listen", "sbc")
        )
    for key in ("tls_cert", "tls_key"):
        if key in s:
            if not isinstance(s[key], str) or not s[key]:
                raise SbcConfigError(f"sbc.{key}: expected a file path")
            kw[key] = s[key]
    if "advertise" in s:
        kw["advertise_address"] = ip_address(s["advertise"], "sbc.advertise")
    if "internal_advertise" in s:
        kw["internal_advertise_address"] = ip_address(s["internal_advertise"], "sbc.internal_advertise")
    if "mode" in s:
        if s["mode"] not in MODES:
            raise SbcConfigError(f"sbc.mode: {s['mode']!r} is not one of {MODES}")
        kw["mode"] = s["mode"]
    if "dc" in s:
        kw["dc"] = str(s["dc"])
    if "http" in s:
        kw["http_host"], kw["http_port"] = parse_hostport(s["http"], "sbc.http", None)
    if "secret" in s:
        if not isinstance(s["secret"], str) or len(s["secret"]) < 16:
            raise SbcConfigError("sbc.secret: use a string of at least 16 characters")
        kw["secret"] = s["secret"].encode()
    for key in ("probe_timeout", "node_timeout"):
        if key in s:
            kw[key] = _num(s, key, float, 0, 0.05, "sbc")
    if "probe_interval" in s:
        kw["probe_interval"] = _num(s, "probe_interval", float, 0, 0, "sbc")
        if 0 < kw["probe_interval"] < 0.05:
            raise SbcConfigError("sbc.probe_interval: 0 (no probes) or at least 0.05")
    if "keepalive_interval" in s:
        kw["keepalive_interval"] = _num(s, "keepalive_interval", float, 0, 0, "sbc")
    for key in ("down_after", "up_after"):
        if key in s:
            kw[key] = _num(s, key, int, 1, 1, "sbc")
    if "workers" in s:
        kw["workers"] = _num(s, "workers", int, 1, 1, "sbc")
    if "max_loop_lag" in s:
        kw["max_loop_lag"] = _num(s, "max_loop_lag", float, 0, 0, "sbc")
    if "shed_retry_after" in s:
        kw["shed_retry_after"] = _num(s, "shed_retry_after", int, 1, 1, "sbc")
    if "max_message_size" in s:
        kw["max_message_size"] = _num(s, "max_message_size", int, 0, 1024, "sbc")
    if "log_level" in s:
        kw["log_level"] = str(s["log_level"]).upper()
    if "state_dir" in s:
        if not isinstance(s["state_dir"], str):
            raise SbcConfigError("sbc.state_dir: expected a directory path")
        kw["state_dir"] = s["state_dir"]
    if "otel_exporter" in s:
        if s["otel_exporter"] not in ("console", "otlp"):
            raise SbcConfigError("sbc.otel_exporter: 'console' or 'otlp'")
        kw["otel_exporter"] = s["otel_exporter"]
    if "nodes" in data:
        if not isinstance(data["nodes"], list):
            raise SbcConfigError("nodes: expected an array of tables ([[nodes]])")
        kw["nodes"] = tuple(parse_node(n, i) for i, n in enumerate(data["nodes"]))
        _check_nodes(kw["nodes"])
    etcd = data.get("etcd", {})
    if etcd:
        if not isinstance(etcd, dict):
            raise SbcConfigError("etcd: expected a table")
        kw["etcd_endpoints"] = tuple(_str_list(etcd, "endpoints", "etcd"))
        if "prefix" in etcd:
            kw["etcd_prefix"] = str(etcd["prefix"])
        unknown = set(etcd) - {"endpoints", "prefix", "host_id", "limits_ttl", "limits_timeout"}
        if unknown:
            raise SbcConfigError(f"etcd: unknown key(s) {sorted(unknown)}")
        if "host_id" in etcd:
            hid = etcd["host_id"]
            if not isinstance(hid, str) or not hid or "/" in hid:
                raise SbcConfigError("etcd.host_id: a non-empty name without '/', unique per SBC host")
            kw["host_id"] = hid
        if "limits_ttl" in etcd:
            kw["limits_ttl"] = _num(etcd, "limits_ttl", int, 10, 1, "etcd")
        if "limits_timeout" in etcd:
            kw["limits_timeout"] = _num(etcd, "limits_timeout", float, 1.0, 0.05, "etcd")
    nodes = kw.get("nodes", cfg.nodes)
    if "tenants" in data:
        kw["tenants"] = _parse_tenants(data["tenants"], {n.id for n in nodes}, bool(kw.get("etcd_endpoints")))
    if "carriers" in data:
        kw["carriers"] = _parse_carriers(data["carriers"])
    for section in ("protection", "media"):
        if section in data:
            if not isinstance(data[section], dict):
                raise SbcConfigError(f"{section}: expected a table")
            kw[section] = dict(data[section])
    cfg = cfg.with_(**kw)
    return validate(cfg) if check else cfg


def load(path: str | Path, base: SbcConfig | None = None, *, check: bool = True) -> SbcConfig:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise SbcConfigError(f"{p}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise SbcConfigError(f"{p}: not valid TOML: {e}") from None
    return from_dict(data, base, check=check)


def validate(cfg: SbcConfig) -> SbcConfig:
    if not cfg.listens:
        raise SbcConfigError("sbc.listen: at least one listening socket is needed")
    if not cfg.nodes and not cfg.etcd_endpoints:
        raise SbcConfigError("no nodes: give [[nodes]] (or --node) or an [etcd] section")
    _check_nodes(cfg.nodes)
    secure = [ls for ls in cfg.listens if ls.transport in ("tls", "wss")]
    if secure and not (cfg.tls_cert and cfg.tls_key):
        raise SbcConfigError(f"sbc.listen: {secure[0].transport} needs sbc.tls_cert and sbc.tls_key")
    for key in ("tls_cert", "tls_key"):
        path = getattr(cfg, key)
        if path and not Path(path).is_file():
            raise SbcConfigError(f"sbc.{key}: no such file {path!r}")
    if cfg.mode not in MODES:
        raise SbcConfigError(f"mode: {cfg.mode!r} is not one of {MODES}")
    if cfg.workers < 1 or cfg.workers > 256:
        raise SbcConfigError(f"sbc.workers: 1 to 256, got {cfg.workers}")
    if cfg.workers > 1:
        for ls in cfg.listens + cfg.internal_listens:
            if ls.port == 0:
                raise SbcConfigError(f"sbc.workers: {ls.transport}:{ls.host}:0 — workers share fixed ports, give one")
    return cfg
