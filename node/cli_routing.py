"""``hivepbx`` commands for call-routing features (hunt groups, forwarding, DND, time
switches, day/night, feature codes, caller screening), each written through its owner's
validation (node/pbx/feature_objects.py):

    hivepbx object put acme hunt_group 600 '{"strategy": "sequential", "members": ["1001", "1002"]}'
    hivepbx object put acme time_switch 500 @switch.json      # JSON text, @file or - (stdin)
    hivepbx object list acme hunt_group          hivepbx object get|del acme hunt_group 600
    hivepbx hunt add acme 600 1001 1002 tel:+4930123 --strategy circular --ring 15 --fallback 1009
    hivepbx fwd set acme 1001 --busy 1009 --no-answer tel:0170123 --ring 20
    hivepbx fwd clear acme 1001 [--type busy]     hivepbx fwd show acme 1001
    hivepbx timeswitch add acme 500 @switch.json --did +4930555
    hivepbx dnd acme 1001 on|off
    hivepbx daynight acme night [--toggle main]  (day | night | toggle)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from node.cli import EXIT_OK, CliError, Output, _tenant
from node.cli_common import delete_object, get_object, route_dids
from node.pbx import feature_objects, forwarding, hunt_groups, time_switch


def _json_arg(text: str) -> dict:
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise CliError(f"{text[1:]}: {e.strerror or e}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CliError("the document must be a JSON object {...}")
    return doc


async def object_put(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    doc = await feature_objects.save(backend.config, t.id, args.kind, args.name, _json_arg(args.document))
    output.done(f"saved {args.kind} {args.name} in tenant {t.name}", {"tenant": t.name, "kind": args.kind,
                                                                      "name": args.name, "data": doc})
    return EXIT_OK


async def object_get(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    output.emit(await get_object(backend, t, args.kind, args.name, f"no {args.kind} {args.name!r} in tenant {t.name}"))
    return EXIT_OK


async def object_list(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    docs = await backend.config.list_objects(t.id, args.kind)
    output.table(("name", "document"), [(n, json.dumps(d, sort_keys=True)) for n, d in docs.items()],
                 [{"name": n, "data": d} for n, d in docs.items()], f"no {args.kind} in tenant {t.name}")
    return EXIT_OK


async def object_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    dids = [d.number for d in await backend.config.list_dids(t.id)
            if d.dest_type == args.kind and d.dest_value == args.name]
    if dids:
        raise CliError(f"{args.kind} {args.name} is the destination of DID {', '.join(dids)}: delete the DID first")
    await delete_object(backend, t, args.kind, args.name, f"no {args.kind} {args.name!r} in tenant {t.name}")
    output.done(f"deleted {args.kind} {args.name} of tenant {t.name}",
                {"deleted": args.kind, "tenant": t.name, "name": args.name})
    return EXIT_OK


async def hunt_add(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    doc: dict = {"strategy": args.strategy, "ring": args.ring, "group_ring": args.group_ring, "members": args.members}
    if args.fallback:
        doc["fallback"] = args.fallback
    out = await hunt_groups.save(backend.config, t.id, args.number, doc)
    dids, via = await route_dids(backend, t, hunt_groups.KIND, args.number, args.did)
    output.done(f"hunt group {args.number} ({args.strategy}) of tenant {t.name}: "
                f"{', '.join(m['to'] for m in out['members'])}{via}",
                {"tenant": t.name, "number": args.number, "data": out, "dids": dids})
    return EXIT_OK


async def switch_add(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    out = await time_switch.save(backend.config, t.id, args.number, _json_arg(args.document))
    dids, via = await route_dids(backend, t, time_switch.KIND, args.number, args.did)
    output.done(f"time switch {args.number} of tenant {t.name} with {len(out['rules'])} rule(s){via}",
                {"tenant": t.name, "number": args.number, "data": out, "dids": dids})
    return EXIT_OK


async def fwd_set(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    changes = {k: v for k, v in (("unconditional", args.unconditional), ("busy", args.busy),
                                 ("no_answer", args.no_answer), ("unreachable", args.unreachable),
                                 ("no_answer_ring", args.ring)) if v is not None}
    if not changes:
        raise CliError("nothing to set: give --unconditional, --busy, --no-answer, --unreachable or --ring")
    out = await forwarding.update(backend.config, t.id, args.ext, **changes)
    output.done(f"forwarding of {args.ext} in tenant {t.name}: {json.dumps(out, sort_keys=True)}", out)
    return EXIT_OK


async def fwd_clear(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    types = ("unconditional", "busy", "no_answer", "unreachable", "no_answer_ring", "follow_me") \
        if args.type == "all" else (args.type,)
    out = await forwarding.update(backend.config, t.id, args.ext, **{k: None for k in types})
    output.done(f"forwarding of {args.ext} in tenant {t.name}: {json.dumps(out, sort_keys=True)}", out)
    return EXIT_OK


async def fwd_show(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if await backend.config.get_extension(t.id, args.ext) is None:
        raise CliError(f"no extension {args.ext} in tenant {t.name}")
    output.emit(await forwarding.load(backend.config, t.id, args.ext))
    return EXIT_OK


async def dnd(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    out = await forwarding.update(backend.config, t.id, args.ext, dnd=args.state == "on")
    output.done(f"do not disturb {args.state} for {args.ext} in tenant {t.name}", out)
    return EXIT_OK


async def daynight(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    mode = await time_switch.set_mode(backend.config, t.id, args.toggle, None if args.mode == "toggle" else args.mode)
    output.done(f"{args.toggle} is now {mode} in tenant {t.name} (from the next call)",
                {"tenant": t.name, "toggle": args.toggle, "mode": mode})
    return EXIT_OK


def _seconds(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if n < 0:
        raise argparse.ArgumentTypeError("seconds cannot be negative")
    return n


def _list_and_del(g, leaf, kind: str, what: str, plural: str) -> None:
    """``list TENANT`` and ``del TENANT NUMBER`` of a feature reached at a number."""
    q = leaf(g, "list", object_list, f"list {plural}")
    q.add_argument("tenant", metavar="TENANT")
    q.set_defaults(kind=kind)
    q = leaf(g, "del", object_del, f"delete a {what}")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("name", metavar="NUMBER")
    q.set_defaults(kind=kind)


def add_commands(sub, group, leaf, common: argparse.ArgumentParser) -> None:
    g = group("object", "feature objects (hunt_group, forwarding, time_switch, feature_codes, ...) as JSON")
    q = leaf(g, "put", object_put, "create or replace one, validated by its feature")
    for a in ("tenant", "kind", "name"):
        q.add_argument(a, metavar=a.upper())
    q.add_argument("document", metavar="JSON", help="JSON text, @FILE or - for stdin")
    for name, handler, text in (("get", object_get, "print one"), ("del", object_del, "delete one")):
        q = leaf(g, name, handler, text)
        for a in ("tenant", "kind", "name"):
            q.add_argument(a, metavar=a.upper())
    q = leaf(g, "list", object_list, "list the objects of a kind")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("kind", metavar="KIND")

    g = group("hunt", "hunt groups")
    q = leaf(g, "add", hunt_add, "create or replace a hunt group reached at NUMBER")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")
    q.add_argument("members", nargs="+", metavar="MEMBER", help="extension, tel:NUMBER / +NUMBER, or sip:user@IP")
    q.add_argument("--strategy", default="simultaneous", choices=hunt_groups.STRATEGIES)
    q.add_argument("--ring", type=_seconds, default=20, metavar="SECONDS", help="per member")
    q.add_argument("--group-ring", type=_seconds, default=0, metavar="SECONDS", help="whole hunt, 0 = no cap")
    q.add_argument("--fallback", metavar="DEST", help="where the call goes when nobody answers")
    q.add_argument("--did", action="append", default=[], metavar="NUMBER", help="also route this DID to it (repeatable)")
    _list_and_del(g, leaf, hunt_groups.KIND, "hunt group", "hunt groups")

    g = group("timeswitch", "time switches (routing by date, time and caller)")
    q = leaf(g, "add", switch_add, "create or replace the time switch reached at NUMBER")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")
    q.add_argument("document", metavar="JSON", help="JSON text, @FILE or - for stdin (see node/pbx/time_switch.py)")
    q.add_argument("--did", action="append", default=[], metavar="NUMBER", help="also route this DID to it (repeatable)")
    _list_and_del(g, leaf, time_switch.KIND, "time switch", "time switches")

    g = group("fwd", "call forwarding of an extension")
    q = leaf(g, "set", fwd_set, "set some forwards (the others stay)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("ext", metavar="EXT")
    for opt in ("unconditional", "busy", "no-answer", "unreachable"):
        q.add_argument(f"--{opt}", metavar="DEST")
    q.add_argument("--ring", type=_seconds, metavar="SECONDS", help="ring time before the no-answer forward")
    q = leaf(g, "clear", fwd_clear, "clear forwards")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("ext", metavar="EXT")
    q.add_argument("--type", default="all", choices=("all", "unconditional", "busy", "no_answer", "unreachable", "follow_me"))
    q = leaf(g, "show", fwd_show, "print the forwarding settings")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("ext", metavar="EXT")

    q = sub.add_parser("dnd", parents=[common], help="do not disturb on/off for an extension")
    q.set_defaults(handler=dnd, create=False)
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("ext", metavar="EXT")
    q.add_argument("state", choices=("on", "off"))

    q = sub.add_parser("daynight", parents=[common], help="set or flip a day/night toggle")
    q.set_defaults(handler=daynight, create=False)
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("mode", choices=("day", "night", "toggle"))
    q.add_argument("--toggle", default="main", metavar="NAME", help="which toggle (default: main)")
