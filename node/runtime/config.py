"""The node's configuration: one frozen dataclass, filled from CLI flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from node.transport.sockets import Listen


def default_data_dir() -> Path:
    """Where the embedded node keeps SQLite and prompts; ``HIVEPBX_DATA_DIR`` overrides."""
    env = os.environ.get("HIVEPBX_DATA_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "hivepbx"


def default_listens(port: int = 5060) -> tuple[Listen, ...]:
    return (
        Listen("udp", "0.0.0.0", port),
        Listen("tcp", "0.0.0.0", port),
        Listen("udp", "::", port),
        Listen("tcp", "::", port),
    )


@dataclass(frozen=True, slots=True)
class NodeConfig:
    #: directory holding hivepbx.db (config, registrations, CDRs)
    data_dir: Path = field(default_factory=default_data_dir)
    #: SIP sockets; default UDP and TCP on 5060 of all IPv4 and IPv6 addresses
    listens: tuple[Listen, ...] = field(default_factory=default_listens)
    #: address put in Via/Contact/SDP when a socket is bound to a wildcard; None = detect
    advertise_address: str | None = None
    #: HTTP for /metrics and /health
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: RTP relay port range (inclusive, even ports used for RTP)
    rtp_port_min: int = 20000
    rtp_port_max: int = 30000
    #: address RTP sockets bind to; '' = '::' dual-stack where IPv6 works, else '0.0.0.0'
    rtp_bind: str = ""
    #: identifies this node in registrations and CDRs
    node_id: str = "local"
    #: registrar bounds (RFC 3261 §10.3: 423 below min)
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    #: seconds between OPTIONS keep-alives to UDP phones behind NAT (0 = off)
    nat_ping_interval: float = 20.0
    #: digest nonce lifetime, seconds; an older nonce gets stale=true
    nonce_ttl: int = 300
    #: digest algorithms offered, one challenge each, in this order (RFC 8760 §2.4). MD5 only
    #: by default: libre before 3.12 (baresip up to 3.11, Debian 12's baresip 1.0) reads every
    #: challenge and abandons the request at the first one that is not MD5, whatever the order,
    #: and SIPp 3.6 reads only the first. Add "SHA-256" where every phone copes with it.
    digest_algorithms: tuple[str, ...] = ("MD5",)
    #: SBC addresses whose X-Hive-Source header (the real source of a request, see sbc/README.md)
    #: is believed, so carrier trunks are recognised by address behind them; nobody else's is
    trusted_sbcs: tuple[str, ...] = ()
    #: refuse SIP messages larger than this (bytes)
    max_message_size: int = 65535
    #: seconds before an unanswered outbound leg gets 480 when the tenant has no own value
    ring_timeout: int = 30
    #: backend name for config/location/CDR stores ('embedded' is built in)
    backend: str = "embedded"
    #: cluster backend: etcd endpoints ('host:port'), key prefix shared by the cluster's nodes,
    #: seconds a dead node stays a member; Kafka bootstrap servers and Cassandra contact points
    #: for the parts that use them
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/hivepbx/"
    membership_ttl: int = 3
    kafka_bootstrap: tuple[str, ...] = ()
    cassandra_contact_points: tuple[str, ...] = ()
    #: durable local CDR spool (<data_dir>/cdr-spool.db) in front of the backend's CDR store;
    #: None = on for every backend but 'embedded', whose SQLite store is local and durable itself
    cdr_spool: bool | None = None
    #: OpenTelemetry span exporter: None (not recorded), 'console' or 'otlp'
    otel_exporter: str | None = None
    #: log level name
    log_level: str = "INFO"
    #: create the demo tenant on start when the store has no tenant
    demo: bool = False
    #: voicemail e-mail notification (node/pbx/notify_mail.py): SMTP server ('' = off), port, sender
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "voicemail@localhost"
    #: who relays plain bridged calls' RTP: 'local' (the node's relay) or 'rtpengine' (the
    #: instances of rtpengine_ng, ng protocol, 'host:port'; node/pbx/media_rtpengine.py).
    #: Calls needing the node's media (recording, applications) stay local either way.
    media_relay: str = "local"
    rtpengine_ng: tuple[str, ...] = ()
    #: seconds an ng command waits for each try (it is tried twice) before the next instance
    rtpengine_timeout: float = 0.5
    #: seconds a re-INVITE moving a call off rtpengine (node/pbx/reanchor.py), or moving it
    #: back, waits for its final response before it is CANCELled and the move rolled back.
    #: Why bounded: a silent phone would hold the feature (and the transferor's NOTIFY) for
    #: the 32 s INVITE transaction timeout; a phone answers a re-INVITE in milliseconds.
    reanchor_answer_wait: float = 4.0
