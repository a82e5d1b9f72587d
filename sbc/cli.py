"""``hivepbx sbc`` / ``hivepbx-sbc``: run the SBC from a TOML file and/or flags (flags win).

Errors print ``error: ...`` on stderr and exit 2, as the node's CLI does.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sbc.config import (
    MODES,
    TRANSPORTS,
    SbcConfig,
    SbcConfigError,
    ip_address,
    load,
    parse_hostport,
    parse_listen,
    parse_node_flag,
    validate,
)

EXIT_OK, EXIT_ERROR = 0, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hivepbx sbc", description="run the hivepbx session border controller")
    p.add_argument("--config", metavar="FILE.toml", help="configuration file (see sbc/config.py)")
    p.add_argument("--listen", action="append", default=[], metavar="udp|tcp|tls|ws|wss:HOST:PORT",
                   help="socket facing phones and carriers (repeatable; default udp+tcp 0.0.0.0:5060)")
    p.add_argument("--tls-cert", metavar="PEM", help="certificate chain for tls/wss listeners")
    p.add_argument("--tls-key", metavar="PEM", help="private key for tls/wss listeners")
    p.add_argument("--internal-listen", action="append", default=[], metavar="udp|tcp:HOST:PORT",
                   help="socket facing the nodes (repeatable; default: the outside sockets)")
    p.add_argument("--advertise", metavar="IP", help="outside address put in Via/Contact")
    p.add_argument("--internal-advertise", metavar="IP", help="inside address put in Via/Contact")
    p.add_argument("--node", action="append", default=[], metavar="ID=HOST:PORT[,dc=DC][,weight=N][,transport=T]",
                   help="a PBX node (repeatable; replaces the file's node list)")
    p.add_argument("--etcd", action="append", default=[], metavar="HOST:PORT",
                   help="take the node list from the cluster's etcd membership (repeatable)")
    p.add_argument("--etcd-prefix", metavar="PREFIX", help="the nodes' etcd key prefix (default /hivepbx/)")
    p.add_argument("--mode", choices=MODES, help="how calls and registrations are spread over the nodes")
    p.add_argument("--dc", help="this SBC's datacenter label")
    p.add_argument("--http", metavar="HOST:PORT", help="/metrics and /health (default 127.0.0.1:9090)")
    p.add_argument("--secret", help="key of the Contact tokens (default: random per start)")
    p.add_argument("--probe-interval", type=float, metavar="SECONDS")
    p.add_argument("--node-timeout", type=float, metavar="SECONDS",
                   help="no answer from a node within this: the request moves to the next node")
    p.add_argument("--workers", type=int, metavar="N",
                   help="N processes share the listening ports (SO_REUSEPORT), one event loop each")
    p.add_argument("--state-dir", metavar="DIR",
                   help="keep the tenants' call counts and daily usage here across restarts (default: memory only)")
    p.add_argument("--otel-exporter", choices=("console", "otlp"), help="export OpenTelemetry spans")
    p.add_argument("--log-level", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--check", action="store_true", help="validate the configuration, print it and exit")
    return p


def config_from_args(args: argparse.Namespace) -> SbcConfig:
    cfg = load(args.config, check=False) if args.config else SbcConfig()
    kw: dict = {}
    if args.listen:
        kw["listens"] = tuple(parse_listen(v, "--listen") for v in args.listen)
    if args.internal_listen:
        kw["internal_listens"] = tuple(parse_listen(v, "--internal-listen", TRANSPORTS) for v in args.internal_listen)
    if args.tls_cert:
        kw["tls_cert"] = args.tls_cert
    if args.tls_key:
        kw["tls_key"] = args.tls_key
    if args.advertise:
        kw["advertise_address"] = ip_address(args.advertise, "--advertise")
    if args.internal_advertise:
        kw["internal_advertise_address"] = ip_address(args.internal_advertise, "--internal-advertise")
    if args.node:
        kw["nodes"] = tuple(parse_node_flag(v) for v in args.node)
    if args.etcd:
        kw["etcd_endpoints"] = tuple(args.etcd)
    if args.etcd_prefix:
        kw["etcd_prefix"] = args.etcd_prefix
    if args.mode:
        kw["mode"] = args.mode
    if args.dc is not None:
        kw["dc"] = args.dc
    if args.http:
        kw["http_host"], kw["http_port"] = parse_hostport(args.http, "--http", None)
    if args.secret:
        if len(args.secret) < 16:
            raise SbcConfigError("--secret: use at least 16 characters")
        kw["secret"] = args.secret.encode()
    for name in ("probe_interval", "node_timeout"):
        v = getattr(args, name)
        if v is not None:
            if v < 0.05 and not (name == "probe_interval" and v == 0):
                raise SbcConfigError(f"--{name.replace('_', '-')}: must be at least 0.05")
            kw[name] = v
    if args.workers is not None:
        kw["workers"] = args.workers
    if args.log_level:
        kw["log_level"] = args.log_level
    if args.otel_exporter:
        kw["otel_exporter"] = args.otel_exporter
    if args.state_dir:
        kw["state_dir"] = args.state_dir
    return validate(cfg.with_(**kw))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    try:
        cfg = config_from_args(args)
    except SbcConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.check:
        print(f"configuration ok: {len(cfg.nodes)} node(s), mode {cfg.mode}")
        return EXIT_OK
    from sbc.runtime import run

    try:
        return run(cfg)
    except OSError as e:
        print(f"error: {e.strerror or e}", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
