"""``hivepbx``: run a node, and manage its tenants, extensions, DIDs, trunks and routes.

Management commands write the node's SQLite file directly, also while the node runs: the
node notices the change within a second (``PRAGMA data_version``), no restart or API
needed. Errors print ``error: ...`` on stderr and exit 2; a CSV import with bad rows
imports the good ones and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import importlib
import ipaddress
import json
import os
import secrets
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from node.embedded import DB_FILENAME, ConfigError, DatabaseError, EmbeddedBackend, open_embedded
from node.model import Tenant

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2
CSV_COLUMNS = ("number", "password", "name", "cid")


class CliError(Exception):
    """A user mistake the CLI itself detects (unknown tenant, bad flag value)."""


# ------------------------------------------------------------------ output


class Output:
    """Plain aligned tables for people, JSON for scripts."""

    def __init__(self, as_json: bool, out: TextIO, err: TextIO) -> None:
        self.json = as_json
        self.out = out
        self.err = err

    def table(self, headers: Sequence[str], rows: list[Sequence[Any]], records: list[dict], empty: str) -> None:
        if self.json:
            self.emit(records)
            return
        if not rows:
            print(empty, file=self.out)
            return
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for r in cells:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=self.out)

    def done(self, message: str, record: dict) -> None:
        if self.json:
            self.emit(record)
        else:
            print(message, file=self.out)

    def emit(self, data: Any) -> None:
        json.dump(data, self.out, indent=2, sort_keys=True)
        print(file=self.out)

    def error(self, message: str) -> None:
        print(f"error: {message}", file=self.err)


def _record(obj: Any, *, hide: Sequence[str] = ()) -> dict:
    d = dataclasses.asdict(obj)
    for key in hide:
        d.pop(key, None)
    return d


# ------------------------------------------------------------------ helpers


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir is not None:
        return Path(args.data_dir)
    from node.runtime.config import default_data_dir  # lazily: the management CLI needs no runtime

    return default_data_dir()


async def _tenant(backend: EmbeddedBackend, ref: str) -> Tenant:
    """A tenant by id, name (any case) or SIP domain."""
    config = backend.config
    ref = ref.strip()
    if ref.isdigit():
        t = await config.get_tenant(int(ref))
        if t is not None:
            return t
    for t in await config.list_tenants():
        if t.name.lower() == ref.lower() or t.domain == ref.lower().rstrip("."):
            return t
    raise CliError(f"no tenant {ref!r}: give its name, domain or id (see `hivepbx tenant list`)")


def _generated_password() -> str:
    return secrets.token_urlsafe(12)


def _hostport(value: str, what: str, default_port: int | None = None) -> tuple[str, int]:
    """'HOST:PORT', '[V6]:PORT', or without the port when ``default_port`` is given."""
    v = value.strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise CliError(f"invalid {what} {value!r}: expected [IPv6]:PORT")
        port_s = rest[1:] if rest else ""
    elif v.count(":") == 1:
        host, port_s = v.split(":")
    elif default_port is not None:
        host, port_s = v, ""  # an IPv4 address or a bare IPv6 address without a port
    else:
        raise CliError(f"invalid {what} {value!r}: expected HOST:PORT (IPv6 as [ADDR]:PORT)")
    if not port_s:
        if default_port is None:
            raise CliError(f"invalid {what} {value!r}: the port is missing")
        port = default_port
    elif not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise CliError(f"invalid {what} {value!r}: port must be 0-65535")
    else:
        port = int(port_s)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise CliError(f"invalid {what} {value!r}: {host!r} is not an IP address") from None
    return host, port


def _listen(value: str, default_port: int):
    from node.transport.sockets import Listen

    transport, sep, rest = value.partition(":")
    transport = transport.lower()
    if not sep or transport not in ("udp", "tcp"):
        raise CliError(f"invalid --listen {value!r}: expected udp:HOST:PORT or tcp:HOST:PORT")
    host, port = _hostport(rest, "--listen address", default_port)
    return Listen(transport, host, port)


def _port_range(value: str) -> tuple[int, int]:
    lo, sep, hi = value.partition("-")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise CliError(f"invalid --rtp-ports {value!r}: expected MIN-MAX, such as 20000-30000")
    a, b = int(lo), int(hi)
    if not 1024 <= a < b <= 65535:
        raise CliError(f"invalid --rtp-ports {value!r}: need 1024 <= MIN < MAX <= 65535")
    return a, b


def _since(expires_at: float, now: float) -> str:
    return f"{max(0, int(expires_at - now))}s"


def _utc(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


# ------------------------------------------------------------------ run


def cmd_run(args: argparse.Namespace, output: Output) -> int:
    from node.runtime.config import NodeConfig, default_listens

    listens = tuple(_listen(v, args.sip_port) for v in args.listen) if args.listen else default_listens(args.sip_port)
    http_host, http_port = _hostport(args.http, "--http address")
    rtp_min, rtp_max = _port_range(args.rtp_ports)
    advertise = None
    if args.advertise_address:
        try:
            advertise = str(ipaddress.ip_address(args.advertise_address.strip("[]")))
        except ValueError:
            raise CliError(f"invalid --advertise-address {args.advertise_address!r}: expected an IP address") from None
    config = NodeConfig(
        data_dir=_data_dir(args),
        listens=listens,
        advertise_address=advertise,
        http_host=http_host,
        http_port=http_port,
        rtp_port_min=rtp_min,
        rtp_port_max=rtp_max,
        log_level=args.log_level,
        demo=args.demo,
        ring_timeout=args.ring_timeout,
        otel_exporter=args.otel_exporter,
        trusted_sbcs=_ip_list(getattr(args, "trusted_sbc", []), "--trusted-sbc"),
        **_smtp_settings(args),
        **_media_settings(args),
        **getattr(args, "cluster_settings", {}),
    )
    try:
        app = importlib.import_module("node.runtime.app")
    except ImportError as e:
        raise CliError(f"the node runtime cannot be loaded: {e}") from None
    return int(app.run(config) or 0)


def _ip_list(values: list[str], what: str) -> tuple[str, ...]:
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_address(v.strip().strip("[]"))))
        except ValueError:
            raise CliError(f"invalid {what} {v!r}: expected an IP address") from None
    return tuple(out)


def _media_settings(args: argparse.Namespace) -> dict:
    """--media-relay / --rtpengine-ng, else HIVEPBX_MEDIA_RELAY / HIVEPBX_RTPENGINE_NG, else
    media_relay / rtpengine_ng in the --config TOML (``hivepbx node``)."""
    from node.pbx.media_rtpengine import ng_addresses

    file = _config_file(getattr(args, "config", None))
    relay = getattr(args, "media_relay", None) or os.environ.get("HIVEPBX_MEDIA_RELAY") or file.get("media_relay") or "local"
    ng = getattr(args, "rtpengine_ng", None) or os.environ.get("HIVEPBX_RTPENGINE_NG") or file.get("rtpengine_ng") or ()
    if relay not in ("local", "rtpengine"):
        raise CliError(f'invalid media relay {relay!r}: "local" or "rtpengine"')
    addrs = _list_setting(ng, "rtpengine ng addresses") if ng else ()
    if relay == "rtpengine":
        try:
            ng_addresses(addrs)
        except ValueError as e:
            raise CliError(str(e)) from None
    return {"media_relay": relay, "rtpengine_ng": addrs}


def _smtp_settings(args: argparse.Namespace) -> dict:
    smtp = getattr(args, "smtp", "") or ""
    if not smtp:
        return {}
    host, _, port = smtp.rpartition(":") if smtp.count(":") == 1 else (smtp, "", "")
    try:
        port_n = int(port) if port else 25
    except ValueError:
        raise CliError(f"invalid --smtp {smtp!r}: expected HOST or HOST:PORT") from None
    return {"smtp_host": host or smtp, "smtp_port": port_n, "smtp_from": args.smtp_from}


# ------------------------------------------------------------------ cluster node

#: settings of `hivepbx node`: flag, environment variable, key in the --config TOML file
CLUSTER_SETTINGS = (
    ("etcd", "HIVEPBX_ETCD", "etcd"),
    ("etcd_prefix", "HIVEPBX_ETCD_PREFIX", "etcd_prefix"),
    ("kafka", "HIVEPBX_KAFKA", "kafka"),
    ("cassandra", "HIVEPBX_CASSANDRA", "cassandra"),
    ("node_id", "HIVEPBX_NODE_ID", "node_id"),
)


def _config_file(path: str | None) -> dict:
    if not path:
        return {}
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CliError(f"{path} is not valid TOML: {e}") from None
    known = {key for _, _, key in CLUSTER_SETTINGS} | {"data_dir", "media_relay", "rtpengine_ng"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CliError(f"{path}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return data


def _list_setting(value: Any, what: str) -> tuple[str, ...]:
    """'a:1,b:2' or a TOML list -> ('a:1', 'b:2')."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise CliError(f"invalid {what} {value!r}: expected HOST:PORT[,HOST:PORT...]")
    return tuple(i.strip() for i in items if i.strip())


def _cluster_settings(args: argparse.Namespace) -> dict:
    """Flags over environment over --config file."""
    file = _config_file(getattr(args, "config", None))
    got = {}
    for attr, env, key in CLUSTER_SETTINGS:
        value = getattr(args, attr, None)
        if value is None:
            value = os.environ.get(env) or None
        if value is None:
            value = file.get(key)
        got[attr] = value
    if args.data_dir is None and file.get("data_dir"):
        args.data_dir = str(file["data_dir"])
    return got


def cmd_node(args: argparse.Namespace, output: Output) -> int:
    """`hivepbx run` with the cluster backend: config and registrations in etcd."""
    import socket

    got = _cluster_settings(args)
    if not got["etcd"]:
        raise CliError("a cluster node needs etcd: --etcd HOST:PORT[,...], HIVEPBX_ETCD or etcd in --config")
    node_id = got["node_id"] or socket.gethostname()
    if not isinstance(node_id, str) or not node_id.strip() or "/" in node_id:
        raise CliError(f"invalid node id {node_id!r}: non-empty, without '/'")
    args.cluster_settings = {
        "backend": "cluster",
        "etcd_endpoints": _list_setting(got["etcd"], "etcd endpoints"),
        "etcd_prefix": got["etcd_prefix"] or "/hivepbx/",
        "kafka_bootstrap": _list_setting(got["kafka"], "Kafka bootstrap servers") if got["kafka"] else (),
        "cassandra_contact_points": (
            _list_setting(got["cassandra"], "Cassandra contact points") if got["cassandra"] else ()
        ),
        "node_id": node_id.strip(),
    }
    return cmd_run(args, output)


# ------------------------------------------------------------------ tenants


async def tenant_add(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await backend.config.create_tenant(
        args.name, args.domain, max_calls=args.max_calls, ring_timeout=args.ring_timeout, timezone=args.timezone
    )
    output.done(f"created tenant {t.name} (id {t.id}), SIP domain {t.domain}", _record(t))
    return EXIT_OK


async def tenant_list(args, backend: EmbeddedBackend, output: Output) -> int:
    tenants = await backend.config.list_tenants()
    counts = [len(await backend.config.list_extensions(t.id)) for t in tenants]
    output.table(
        ("id", "name", "domain", "extensions", "max calls", "ring timeout", "timezone"),
        [(t.id, t.name, t.domain, n, t.max_calls or "unlimited", f"{t.ring_timeout}s", t.timezone)
         for t, n in zip(tenants, counts)],
        [_record(t) | {"extensions": n} for t, n in zip(tenants, counts)],
        "no tenants",
    )
    return EXIT_OK


async def tenant_del(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    await backend.config.delete_tenant(t.id)
    output.done(
        f"deleted tenant {t.name} (id {t.id}) with its extensions, DIDs, trunks and routes; its CDRs are kept",
        {"deleted": "tenant", **_record(t)},
    )
    return EXIT_OK


# ------------------------------------------------------------------ extensions


async def ext_add(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    generated = args.password is None
    password = _generated_password() if generated else args.password
    e = await backend.config.create_extension(
        t.id, args.number, password, display_name=args.name, callerid_number=args.cid
    )
    msg = f"created extension {e.number} in tenant {t.name}; register as {e.number}@{t.domain}"
    if generated:
        msg += f"\npassword: {e.password}"
    output.done(msg, _record(e, hide=() if generated else ("password",)))
    return EXIT_OK


async def ext_list(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    exts = await backend.config.list_extensions(t.id)
    now = time.time()
    regs = [len(await backend.locations.lookup(t.id, e.number, now)) for e in exts]
    headers = ["number", "name", "caller id", "registered"]
    rows = [[e.number, e.display_name, e.callerid_number, n] for e, n in zip(exts, regs)]
    if args.show_passwords:
        headers.append("password")
        for row, e in zip(rows, exts):
            row.append(e.password)
    hide = () if args.show_passwords else ("password",)
    output.table(
        headers, rows, [_record(e, hide=hide) | {"registered": n} for e, n in zip(exts, regs)],
        f"no extensions in tenant {t.name}",
    )
    return EXIT_OK


async def ext_del(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if not await backend.config.delete_extension(t.id, args.number.strip()):
        raise CliError(f"no extension {args.number} in tenant {t.name}")
    output.done(
        f"deleted extension {args.number} of tenant {t.name}",
        {"deleted": "extension", "tenant_id": t.id, "number": args.number},
    )
    return EXIT_OK


async def ext_import(args, backend: EmbeddedBackend, output: Output) -> int:
    """Rows are imported one by one: a bad row is reported and skipped, the others stay."""
    t = await _tenant(backend, args.tenant)
    try:
        # utf-8-sig: spreadsheets often start the file with a byte order mark
        with open(args.file, encoding="utf-8-sig", newline="") as f:
            rows = list(enumerate(csv.reader(f), start=1))
    except OSError as e:
        raise CliError(f"cannot read {args.file}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CliError(f"{args.file} is not UTF-8 text") from None
    except csv.Error as e:
        raise CliError(f"{args.file} is not valid CSV: {e}") from None
    if not rows:
        raise CliError(f"{args.file} is empty: expected a header row {','.join(CSV_COLUMNS)}")
    header = [h.strip().lower() for h in rows[0][1]]
    unknown = [h for h in header if h not in CSV_COLUMNS]
    if "number" not in header or unknown or len(set(header)) != len(header):
        raise CliError(
            f"{args.file}: the first row must be a header naming the columns {','.join(CSV_COLUMNS)}"
            f" (number required, the others optional); got {','.join(rows[0][1])!r}"
        )
    imported: list[dict] = []
    errors: list[dict] = []
    for row_no, row in rows[1:]:
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) > len(header):
            errors.append({"row": row_no, "error": f"{len(row)} fields but the header has {len(header)}"})
            continue
        fields = dict(zip(header, (cell.strip() for cell in row)))
        number = fields.get("number", "")
        generated = not fields.get("password")
        password = _generated_password() if generated else fields["password"]
        try:
            e = await backend.config.create_extension(
                t.id, number, password, display_name=fields.get("name", ""), callerid_number=fields.get("cid", "")
            )
        except ConfigError as err:
            errors.append({"row": row_no, "error": str(err)})
            continue
        imported.append(
            {"row": row_no, "number": e.number, "display_name": e.display_name,
             "password": e.password if generated else None}
        )
    for err in errors:
        output.error(f"row {err['row']}: {err['error']}")
    if output.json:
        output.emit({"tenant": t.name, "imported": imported, "errors": errors})
    else:
        if imported:
            output.table(
                ("row", "number", "name", "password"),
                [(i["row"], i["number"], i["display_name"], i["password"] or "(from file)") for i in imported],
                [], "",
            )
        print(f"imported {len(imported)} extension(s) into tenant {t.name}, {len(errors)} row(s) failed",
              file=output.out)
    return EXIT_PARTIAL if errors else EXIT_OK


# ------------------------------------------------------------------ DIDs


async def did_add(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    d = await backend.config.create_did(t.id, args.number, "extension", args.ext)
    output.done(f"created DID {d.number} -> extension {d.dest_value} in tenant {t.name}", _record(d))
    return EXIT_OK


async def did_list(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    dids = await backend.config.list_dids(t.id)
    output.table(
        ("number", "destination"),
        [(d.number, f"{d.dest_type} {d.dest_value}") for d in dids],
        [_record(d) for d in dids],
        f"no DIDs in tenant {t.name}",
    )
    return EXIT_OK


async def did_del(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if not await backend.config.delete_did(t.id, args.number):
        raise CliError(f"no DID {args.number} in tenant {t.name}")
    output.done(f"deleted DID {args.number} of tenant {t.name}",
                {"deleted": "did", "tenant_id": t.id, "number": args.number})
    return EXIT_OK


# ------------------------------------------------------------------ trunks


async def trunk_add(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    tr = await backend.config.create_trunk(
        t.id, args.name, args.host, port=args.port, transport=args.transport, username=args.username,
        password=args.password, register=args.register, from_domain=args.from_domain,
    )
    output.done(f"created trunk {tr.name} ({tr.transport}:{tr.host}:{tr.port}) in tenant {t.name}",
                _record(tr, hide=("password",)))
    return EXIT_OK


async def trunk_list(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    trunks = await backend.config.list_trunks(t.id)
    output.table(
        ("name", "host", "port", "transport", "username", "register", "from domain"),
        [(tr.name, tr.host, tr.port, tr.transport, tr.username, "yes" if tr.register else "no", tr.from_domain)
         for tr in trunks],
        [_record(tr, hide=("password",)) for tr in trunks],
        f"no trunks in tenant {t.name}",
    )
    return EXIT_OK


async def trunk_del(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if not await backend.config.delete_trunk(t.id, args.name):
        raise CliError(f"no trunk {args.name!r} in tenant {t.name}")
    output.done(f"deleted trunk {args.name} of tenant {t.name}",
                {"deleted": "trunk", "tenant_id": t.id, "name": args.name})
    return EXIT_OK


# ------------------------------------------------------------------ routes


async def route_add(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    prefix = "" if args.prefix.strip().lower() in ("default", "*") else args.prefix
    r = await backend.config.create_route(
        t.id, prefix, args.trunk, strip=args.strip, prepend=args.prepend, priority=args.priority
    )
    output.done(f"created route {r.id}: {r.prefix or '(default)'} via trunk {args.trunk} in tenant {t.name}",
                _record(r) | {"trunk": args.trunk})
    return EXIT_OK


async def route_list(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    routes = await backend.config.list_routes(t.id)
    names = {tr.id: tr.name for tr in await backend.config.list_trunks(t.id)}
    output.table(
        ("id", "prefix", "trunk", "strip", "prepend", "priority"),
        [(r.id, r.prefix or "(default)", names.get(r.trunk_id, r.trunk_id), r.strip, r.prepend, r.priority)
         for r in routes],
        [_record(r) | {"trunk": names.get(r.trunk_id)} for r in routes],
        f"no routes in tenant {t.name}",
    )
    return EXIT_OK


async def route_del(args, backend: EmbeddedBackend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if not await backend.config.delete_route(t.id, args.id):
        raise CliError(f"no route {args.id} in tenant {t.name}")
    output.done(f"deleted route {args.id} of tenant {t.name}", {"deleted": "route", "tenant_id": t.id, "id": args.id})
    return EXIT_OK


# ------------------------------------------------------------------ registrations, CDRs


async def reg_list(args, backend: EmbeddedBackend, output: Output) -> int:
    tenant = await _tenant(backend, args.tenant) if args.tenant else None
    names = {t.id: t.name for t in await backend.config.list_tenants()}
    now = time.time()
    bindings = await backend.locations.list(tenant.id if tenant else None, now)
    output.table(
        ("tenant", "extension", "contact", "source", "expires in", "user agent"),
        [(names.get(b.tenant_id, b.tenant_id), b.extension, b.contact,
          f"{b.transport}:{b.source_host}:{b.source_port}", _since(b.expires_at, now), b.user_agent)
         for b in bindings],
        [_record(b) | {"expires_in": max(0, int(b.expires_at - now))} for b in bindings],
        "no registrations" + (f" in tenant {tenant.name}" if tenant else ""),
    )
    return EXIT_OK


async def cdr_list(args, backend: EmbeddedBackend, output: Output) -> int:
    try:
        t = await _tenant(backend, args.tenant)
        tenant_id, label = t.id, t.name
    except CliError:
        # CDRs outlive their tenant: a deleted tenant's records are still readable by id
        if not args.tenant.strip().isdigit():
            raise
        tenant_id, label = int(args.tenant), f"id {args.tenant.strip()}"
    cdrs = await backend.cdrs.list(tenant_id, limit=args.limit)
    output.table(
        ("start", "direction", "caller", "callee", "disposition", "code", "duration", "billsec", "trunk", "cause"),
        [(_utc(c.start), c.direction, c.caller, c.callee, c.disposition, c.sip_code, f"{c.duration:.0f}s",
          f"{c.billsec:.0f}s", c.trunk, c.hangup_cause) for c in cdrs],
        [_record(c) | {"duration": c.duration, "billsec": c.billsec} for c in cdrs],
        f"no CDRs for tenant {label}",
    )
    return EXIT_OK


# ------------------------------------------------------------------ parser


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must not be negative")
    return n


def _port_arg(value: str) -> int:
    n = _positive(value)
    if n > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port (0-65535)")
    return n


class _VersionAction(argparse.Action):
    """--version, computed only when asked: it imports the hot path to see what is compiled."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and whether the SIP hot path is compiled")

    def __call__(self, parser: argparse.ArgumentParser, namespace: object, values: object,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        from node.compiled import describe
        try:
            v = version("hivepbx")
        except PackageNotFoundError:
            v = "(not installed)"
        print(f"hivepbx {v}; {describe()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR",
                        help="directory of hivepbx.db (default: $HIVEPBX_DATA_DIR or ~/.local/share/hivepbx)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = argparse.ArgumentParser(prog="hivepbx", description="hivepbx: multi-tenant hosted PBX")
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", parents=[common], help="run the PBX node")
    # `node` is the same PBX as `run`, with the cluster backend
    node = sub.add_parser("node", parents=[common],
                          help="run the PBX as a cluster node (config and registrations in etcd)")
    for q in (run, node):
        q.add_argument("--sip-port", type=_port_arg, default=5060, help="SIP port of the default listeners")
        q.add_argument("--listen", action="append", default=[], metavar="udp|tcp:HOST:PORT",
                       help="SIP listener (repeatable; replaces the default UDP+TCP on all addresses)")
        q.add_argument("--advertise-address", metavar="IP", help="address put in Via/Contact/SDP")
        q.add_argument("--http", default="127.0.0.1:8080", metavar="HOST:PORT", help="/metrics and /health")
        q.add_argument("--rtp-ports", default="20000-30000", metavar="MIN-MAX", help="RTP relay port range")
        q.add_argument("--demo", action="store_true", help="create the demo tenant with two extensions")
        q.add_argument("--ring-timeout", type=int, default=30, metavar="SECONDS",
                       help="seconds a call rings before 480 when the tenant sets none")
        q.add_argument("--otel-exporter", choices=("console", "otlp"), default=None,
                       help="export OpenTelemetry spans (default: spans are not recorded)")
        q.add_argument("--trusted-sbc", action="append", default=[], metavar="IP",
                       help="an SBC whose X-Hive-Source header names the real source (repeatable)")
        q.add_argument("--smtp", metavar="HOST[:PORT]", default="",
                       help="SMTP server for voicemail e-mails (default: no e-mails)")
        q.add_argument("--smtp-from", default="voicemail@localhost", metavar="ADDRESS",
                       help="sender address of voicemail e-mails")
        q.add_argument("--media-relay", choices=("local", "rtpengine"), default=None,
                       help="who relays plain calls' RTP (default local; $HIVEPBX_MEDIA_RELAY)")
        q.add_argument("--rtpengine-ng", metavar="HOST:PORT[,...]", default=None,
                       help="rtpengine ng control addresses for --media-relay rtpengine ($HIVEPBX_RTPENGINE_NG)")
        q.add_argument("--log-level", default="INFO", type=str.upper,
                       choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.set_defaults(sync_handler=cmd_run)
    sub.add_parser("sbc", help="run the session border controller (hivepbx sbc --help)", add_help=False)

    node.add_argument("--config", metavar="FILE.toml",
                      help="TOML with etcd, etcd_prefix, kafka, cassandra, node_id, data_dir, media_relay, rtpengine_ng")
    node.add_argument("--etcd", metavar="HOST:PORT[,...]", help="etcd endpoints (default: $HIVEPBX_ETCD)")
    node.add_argument("--etcd-prefix", metavar="PREFIX", help="key prefix of this cluster (default /hivepbx/)")
    node.add_argument("--kafka", metavar="HOST:PORT[,...]", help="Kafka bootstrap servers ($HIVEPBX_KAFKA)")
    node.add_argument("--cassandra", metavar="HOST[,...]", help="Cassandra contact points ($HIVEPBX_CASSANDRA)")
    node.add_argument("--node-id", metavar="ID", help="this node's name in the cluster (default: host name)")
    node.set_defaults(sync_handler=cmd_node)

    cluster_opts = argparse.ArgumentParser(add_help=False)
    cluster_opts.add_argument("--etcd", metavar="HOST:PORT[,...]",
                              help="manage a cluster's configuration in etcd (default: $HIVEPBX_ETCD)")
    cluster_opts.add_argument("--etcd-prefix", metavar="PREFIX", help="key prefix of the cluster (default /hivepbx/)")

    def group(name: str, help: str):
        g = sub.add_parser(name, help=help)
        return g.add_subparsers(dest="action", metavar="ACTION", required=True)

    def leaf(g, name: str, handler, help: str, *, create: bool = False):
        q = g.add_parser(name, parents=[common, cluster_opts], help=help)
        q.set_defaults(handler=handler, create=create)
        return q

    g = group("tenant", "tenants (virtual PBXs)")
    q = leaf(g, "add", tenant_add, "add a tenant", create=True)
    q.add_argument("name")
    q.add_argument("domain", help="SIP domain phones register to")
    q.add_argument("--max-calls", type=_positive, default=0, help="concurrent external calls, 0 = unlimited")
    q.add_argument("--ring-timeout", type=_positive, default=30, metavar="SECONDS")
    q.add_argument("--timezone", default="UTC", metavar="TZ")
    leaf(g, "list", tenant_list, "list tenants")
    q = leaf(g, "del", tenant_del, "delete a tenant and its configuration (CDRs are kept)")
    q.add_argument("tenant", metavar="NAME|ID")

    g = group("ext", "extensions")
    q = leaf(g, "add", ext_add, "add an extension")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")
    q.add_argument("--password", help="SIP password (generated and printed if omitted)")
    q.add_argument("--name", default="", help="display name")
    q.add_argument("--cid", default="", metavar="NUMBER", help="caller ID number on external calls")
    q = leaf(g, "list", ext_list, "list extensions")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("--show-passwords", action="store_true")
    q = leaf(g, "del", ext_del, "delete an extension")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")
    q = leaf(g, "import", ext_import, "add extensions from a CSV file (header: number,password,name,cid)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("file", metavar="FILE.csv")

    g = group("did", "inbound numbers")
    q = leaf(g, "add", did_add, "route an inbound number to an extension")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")
    q.add_argument("--ext", required=True, metavar="NUMBER", help="destination extension")
    q = leaf(g, "list", did_list, "list DIDs")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "del", did_del, "delete a DID")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")

    g = group("trunk", "carrier trunks")
    q = leaf(g, "add", trunk_add, "add a trunk")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("name")
    q.add_argument("host")
    q.add_argument("--port", type=_port_arg, default=5060)
    q.add_argument("--transport", default="udp", type=str.lower, choices=("udp", "tcp"))
    q.add_argument("--username", default="")
    q.add_argument("--password", default="")
    q.add_argument("--register", action="store_true", help="REGISTER to the carrier")
    q.add_argument("--from-domain", default="", metavar="DOMAIN")
    q = leaf(g, "list", trunk_list, "list trunks")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "del", trunk_del, "delete a trunk")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("name")

    g = group("route", "outbound routes")
    q = leaf(g, "add", route_add, "add an outbound route")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("prefix", help='digits; "" or "default" for the default route')
    q.add_argument("trunk")
    q.add_argument("--strip", type=_positive, default=0, metavar="N", help="digits removed from the front")
    q.add_argument("--prepend", default="", metavar="DIGITS", help="digits added after stripping")
    q.add_argument("--priority", type=_positive, default=0, metavar="N", help="lower is tried first")
    q = leaf(g, "list", route_list, "list routes in the order they are tried")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "del", route_del, "delete a route")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("id", type=_positive)

    g = group("reg", "registrations")
    q = leaf(g, "list", reg_list, "list registered phones")
    q.add_argument("tenant", metavar="TENANT", nargs="?")

    g = group("cdr", "call detail records")
    q = leaf(g, "list", cdr_list, "list CDRs, newest first")
    q.add_argument("tenant", metavar="TENANT", help="name, domain or id (a deleted tenant's id works)")
    q.add_argument("--limit", type=_positive, default=50, metavar="N")

    from node.cli_ivr import add_commands as add_ivr_commands  # IVR menus and prompts

    add_ivr_commands(sub, group, leaf, common)
    from node.cli_routing import add_commands as add_routing_commands  # hunt groups, forwarding, ...

    add_routing_commands(sub, group, leaf, common)
    from node.cli_voicemail import add_commands as add_vm_commands  # mailboxes, messages, greetings

    add_vm_commands(sub, group, leaf, common)
    from node.cli_media import add_commands as add_media_commands  # conferences, music on hold, recording

    add_media_commands(sub, group, leaf, common)
    # the SBC's per-tenant edge policies, checked by the SBC's own rules; node/ never imports
    # sbc/ (import-linter), so by name, as `hivepbx sbc` below
    importlib.import_module("sbc.policy_cli").add_commands(sub, group, leaf, common)
    return p


def _open(args: argparse.Namespace) -> EmbeddedBackend:
    data_dir = _data_dir(args)
    if not args.create and not (data_dir / DB_FILENAME).exists():
        raise CliError(
            f"no hivepbx database in {data_dir}: nothing is configured yet (`hivepbx tenant add ...` creates it),"
            " or pass --data-dir"
        )
    return open_embedded(data_dir)


async def _open_cluster(args: argparse.Namespace, endpoints: str):
    """The cluster backend through its entry point (node/ never imports cluster/). CDRs of a
    cluster are still per node: `cdr list` reads the local data directory's."""
    from node.runtime.backends import open_backend
    from node.runtime.config import NodeConfig

    prefix = args.etcd_prefix or os.environ.get("HIVEPBX_ETCD_PREFIX") or "/hivepbx/"
    cfg = NodeConfig(
        data_dir=_data_dir(args), backend="cluster", etcd_endpoints=_list_setting(endpoints, "--etcd"),
        etcd_prefix=prefix,
    )
    try:
        return await open_backend(cfg)
    except ValueError as e:
        raise CliError(str(e)) from None


async def _dispatch(args: argparse.Namespace, output: Output) -> int:
    endpoints = getattr(args, "etcd", None) or os.environ.get("HIVEPBX_ETCD")
    if endpoints:
        backend = await _open_cluster(args, endpoints)
        try:
            return await args.handler(args, backend, output)
        finally:
            await backend.aclose()
    with _open(args) as backend:
        return await args.handler(args, backend, output)


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sbc"]:
        # the SBC is its own program (sbc/cli.py); node/ must not import sbc/, so by name
        return importlib.import_module("sbc.cli").main(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed usage or help
        return e.code if isinstance(e.code, int) else EXIT_ERROR
    output = Output(getattr(args, "json", False), out, err)
    if args.command is None:
        parser.print_help(err)
        return EXIT_ERROR
    try:
        if hasattr(args, "sync_handler"):
            return args.sync_handler(args, output)
        return asyncio.run(_dispatch(args, output))
    except (ConfigError, CliError, DatabaseError) as e:
        output.error(str(e))
    except sqlite3.Error as e:
        output.error(f"database: {e}")
    except OSError as e:
        output.error(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}")
    except KeyboardInterrupt:
        output.error("interrupted")
    except Exception as e:  # never a traceback for the operator; the type says where to look
        output.error(f"unexpected {type(e).__name__}: {e}")
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
