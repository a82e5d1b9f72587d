"""``hivepbx conf|moh|rec ...``: conference rooms, music on hold, call recording.

    hivepbx conf add acme 700 --talker-pin 1111 --listener-pin 2222 --max 10 --did +4930555700
    hivepbx conf list acme / del acme 700
    hivepbx moh upload acme music.mp3       # any format sox reads → 8 kHz mono WAV
    hivepbx moh show acme / del acme        # del: the generated default tune plays again
    hivepbx rec set acme 1002 always        # always | never | on_demand [--toggle *1]
    hivepbx rec unset acme 1002
    hivepbx rec list acme                   # recordings with their call and CDR id
    hivepbx rec del acme 20261206-101500-1a2b3c4d-1.wav

Documents are validated by node.pbx.conference / node.pbx.recording (the rules the node applies).
"""

from __future__ import annotations

import argparse
import time

from node.cli import EXIT_OK, CliError, Output, _data_dir, _tenant
from node.cli_common import delete_object, route_dids
from node.config_rules import ConfigError
from node.pbx import conference, hold, recording


# ------------------------------------------------------------------ conferences
async def conf_add(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    doc: dict = {"max_members": args.max, "entry_tone": not args.no_entry_tone, "exit_tone": not args.no_exit_tone,
                 "end_on_admin_exit": args.end_on_admin_exit}
    for role in conference.ROLES:
        pin = getattr(args, f"{role}_pin")
        if pin:
            doc[f"{role}_pin"] = pin
    doc = await conference.put(backend.config, t.id, args.room, doc)
    dids, via = await route_dids(backend, t, conference.KIND, args.room, args.did)
    output.done(f"conference {args.room} of tenant {t.name} saved{via}",
                {"tenant": t.name, "room": args.room, "conference": doc, "dids": dids})
    return EXIT_OK


async def conf_list(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    found = await backend.config.list_objects(t.id, conference.KIND)
    rows = [(n, ", ".join(r for r in conference.ROLES if f"{r}_pin" in d) or "none", d.get("max_members", ""))
            for n, d in sorted(found.items())]
    output.table(("room", "PINs", "max"), rows, [{"room": n, "conference": d} for n, d in sorted(found.items())],
                 f"no conference rooms in tenant {t.name}")
    return EXIT_OK


async def conf_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    await delete_object(backend, t, conference.KIND, args.room, f"no conference {args.room} in tenant {t.name}")
    output.done(f"deleted conference {args.room} of tenant {t.name}", {"deleted": "conference", "room": args.room})
    return EXIT_OK


# ------------------------------------------------------------------ music on hold
async def moh_upload(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    try:
        path = hold.upload(_data_dir(args), t.id, args.file)
    except hold.MohError as e:
        raise CliError(str(e)) from None
    output.done(f"music on hold of tenant {t.name} stored as {path}", {"tenant": t.name, "path": str(path)})
    return EXIT_OK


async def moh_show(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    own = hold.tenant_file(_data_dir(args), t.id)
    src = "tenant" if own.exists() else "default"
    path = own if own.exists() else hold.moh_dir(_data_dir(args)) / "default" / hold.MOH_NAME
    output.done(f"tenant {t.name} holds to its {'own upload' if src == 'tenant' else 'default tune'}: {path}",
                {"tenant": t.name, "source": src, "path": str(path)})
    return EXIT_OK


async def moh_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if not hold.delete(_data_dir(args), t.id):
        raise CliError(f"tenant {t.name} has no music on hold of its own")
    output.done(f"deleted tenant {t.name}'s music on hold (the default plays again)", {"deleted": "moh", "tenant": t.name})
    return EXIT_OK


# ------------------------------------------------------------------ call recording
async def rec_set(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    doc: dict = {"mode": args.mode}
    if args.toggle is not None:
        doc["toggle"] = args.toggle
    doc = await recording.put(backend.config, t.id, args.extension, doc)
    output.done(f"recording of extension {args.extension} ({t.name}): {doc['mode']}",
                {"tenant": t.name, "extension": args.extension, "recording": doc})
    return EXIT_OK


async def rec_unset(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    await delete_object(backend, t, recording.KIND, args.extension,
                        f"extension {args.extension} of tenant {t.name} has no recording setting")
    output.done(f"extension {args.extension} of tenant {t.name} is no longer recorded",
                {"deleted": "recording", "extension": args.extension})
    return EXIT_OK


async def rec_list(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    recs = recording.list_recordings(_data_dir(args), t.id)
    rows = [(r["file"], time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.get("start", 0))), r.get("caller", ""),
             r.get("callee", ""), r.get("seconds", ""), r.get("trigger", ""), r.get("cdr_id", "")) for r in recs]
    output.table(("file", "start (UTC)", "caller", "callee", "seconds", "trigger", "cdr"), rows, recs,
                 f"no recordings in tenant {t.name}")
    return EXIT_OK


async def rec_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if not recording.delete_recording(_data_dir(args), t.id, args.file):
        raise CliError(f"tenant {t.name} has no recording {args.file}")
    output.done(f"deleted recording {args.file} of tenant {t.name}", {"deleted": "recording", "file": args.file})
    return EXIT_OK


def _positive(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {v!r}") from None


def add_commands(sub, group, leaf, common: argparse.ArgumentParser) -> None:
    g = group("conf", "conference rooms")
    q = leaf(g, "add", conf_add, "add or replace a conference room (callers dial its number)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("room", help="the room's number (2-10 digits, not an extension)")
    q.add_argument("--admin-pin", metavar="DIGITS")
    q.add_argument("--talker-pin", metavar="DIGITS")
    q.add_argument("--listener-pin", metavar="DIGITS", help="listeners hear the room but are muted")
    q.add_argument("--max", type=_positive, default=50, metavar="N", help="most members (admins always enter)")
    q.add_argument("--no-entry-tone", action="store_true")
    q.add_argument("--no-exit-tone", action="store_true")
    q.add_argument("--end-on-admin-exit", action="store_true", help="the last admin leaving ends the conference")
    q.add_argument("--did", action="append", default=[], metavar="NUMBER", help="also route this inbound number here")
    q = leaf(g, "list", conf_list, "list conference rooms")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "del", conf_del, "delete a conference room")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("room")

    g = group("moh", "music on hold")
    q = leaf(g, "upload", moh_upload, "store a tenant's music on hold (any format sox reads)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("file", metavar="AUDIO_FILE")
    q = leaf(g, "show", moh_show, "which music a tenant's held callers hear")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "del", moh_del, "delete a tenant's own music (the default tune plays again)")
    q.add_argument("tenant", metavar="TENANT")

    g = group("rec", "call recording")
    q = leaf(g, "set", rec_set, "record an extension's calls: always, never, or on_demand (a key toggles it)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("extension")
    q.add_argument("mode", choices=recording.MODES)
    q.add_argument("--toggle", metavar="KEYS", help="on_demand: keys pressed during a call (default *1)")
    q = leaf(g, "unset", rec_unset, "remove an extension's recording setting")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("extension")
    q = leaf(g, "list", rec_list, "list a tenant's recordings (with call and CDR ids)")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "del", rec_del, "delete one of a tenant's recordings")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("file")


__all__ = ["add_commands", "ConfigError"]
