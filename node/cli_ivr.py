"""``hivepbx ivr ...`` and ``hivepbx prompts ...``: auto-attendant menus and the audio they play.

    hivepbx ivr add acme 800 --file menu.json        # or --menu '{"options": {"1": "1002"}}'
    hivepbx ivr add acme 800 --file menu.json --did +4930555  # and a DID that leads to it
    hivepbx ivr list acme / show acme 800 / del acme 800
    hivepbx ivr hours acme 800 --active '{"weekdays": "mon-fri", "time": "08:00-18:00"}' \
                               --closed closed --out-of-hours 1009    # open hours of a menu
    hivepbx ivr hours acme 800 --always                # no open hours: the menu always answers
    hivepbx prompts build                             # default English prompts (espeak-ng + sox)
    hivepbx prompts upload acme welcome greeting.mp3  # any format sox reads; replaces the default
    hivepbx prompts list acme / del acme welcome

Menus are validated by node.pbx.ivr (the same rules the node applies) before they are stored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from node.cli import EXIT_OK, CliError, Output, _data_dir, _tenant
from node.cli_common import delete_object, get_object, route_dids
from node.config_rules import ConfigError
from node.media_engine.prompts import PromptError, PromptLibrary
from node.pbx import ivr


def _menu(args) -> dict:
    if (args.file is None) == (args.menu is None):
        raise CliError("give the menu as --file FILE.json or --menu JSON (one of them)")
    try:
        text = Path(args.file).read_text() if args.file is not None else args.menu
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"the menu is not valid JSON: {e}") from None
    return _with_hours(doc, args)


def _with_hours(doc: dict, args) -> dict:
    """The menu with the open-hours options of the command line applied (validated by ivr.put)."""
    if not isinstance(doc, dict):
        return doc  # ivr.put says what is wrong
    if getattr(args, "always", False):
        for key in ("active", "closed", "out_of_hours"):
            doc.pop(key, None)
    if args.active is not None:
        try:
            doc["active"] = json.loads(args.active)
        except json.JSONDecodeError as e:
            raise CliError(f"--active is not valid JSON (a time condition, see node/pbx/time_rules.py): {e}") from None
    if args.closed:
        doc["closed"] = args.closed
    if args.out_of_hours is not None:
        if args.out_of_hours == "hangup":
            doc.pop("out_of_hours", None)
        else:
            doc["out_of_hours"] = args.out_of_hours
    return doc


async def ivr_add(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    doc = await ivr.put(backend.config, t.id, args.number, _menu(args))
    dids, via = await route_dids(backend, t, ivr.KIND, args.number, args.did)
    output.done(f"IVR {args.number} of tenant {t.name} saved ({len(doc['options'])} option(s)){via}",
                {"tenant": t.name, "ivr": args.number, "menu": doc, "dids": dids})
    return EXIT_OK


async def ivr_hours(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if args.always and (args.active is not None or args.closed or args.out_of_hours is not None):
        raise CliError("--always removes the open hours: give it alone")
    if not args.always and args.active is None and not args.closed and args.out_of_hours is None:
        raise CliError("give --active JSON (with --closed / --out-of-hours), or --always")
    doc = await get_object(backend, t, ivr.KIND, args.number, f"no IVR {args.number} in tenant {t.name}")
    doc = await ivr.put(backend.config, t.id, args.number, _with_hours(dict(doc), args))
    output.done(f"IVR {args.number} of tenant {t.name}: {_hours(doc)}", {"tenant": t.name, "ivr": args.number, "menu": doc})
    return EXIT_OK


def _hours(doc: dict) -> str:
    if "active" not in doc:
        return "always open"
    then = _dest(doc["out_of_hours"]) if "out_of_hours" in doc else "hang up"
    return f"open {json.dumps(doc['active'])}, else {' '.join(doc['closed'])} then {then}"


async def ivr_list(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    menus = await backend.config.list_objects(t.id, ivr.KIND)
    rows = []
    for number, doc in sorted(menus.items()):
        opts = ", ".join(f"{k}→{_dest(v)}" for k, v in sorted(doc.get("options", {}).items()))
        rows.append((number, " ".join(doc.get("prompt", [])), opts, "yes" if doc.get("direct_dial") else "no", _hours(doc)))
    output.table(("number", "prompt", "options", "direct dial", "hours"), rows,
                 [{"number": n, "menu": d} for n, d in sorted(menus.items())], f"no IVRs in tenant {t.name}")
    return EXIT_OK


async def ivr_show(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    output.emit(await get_object(backend, t, ivr.KIND, args.number, f"no IVR {args.number} in tenant {t.name}"))
    return EXIT_OK


async def ivr_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    await delete_object(backend, t, ivr.KIND, args.number, f"no IVR {args.number} in tenant {t.name}")
    output.done(f"deleted IVR {args.number} of tenant {t.name}", {"deleted": "ivr", "tenant": t.name, "number": args.number})
    return EXIT_OK


def _dest(d: dict) -> str:
    return f"{d['type']} {d['value']}" if "value" in d else d["type"]


def prompts_build(args, output: Output) -> int:
    lib = PromptLibrary(_data_dir(args))
    try:
        made = lib.build(force=args.force)
    except PromptError as e:
        raise CliError(str(e)) from None
    output.done(f"{len(made)} prompt(s) written to {lib.default_dir}" if made else f"prompts in {lib.default_dir} are complete",
                {"dir": str(lib.default_dir), "written": made})
    return EXIT_OK


async def prompts_upload(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    try:
        path = PromptLibrary(_data_dir(args)).upload(t.id, args.name, args.file)
    except PromptError as e:
        raise CliError(str(e)) from None
    output.done(f"prompt {args.name} of tenant {t.name} stored as {path}", {"tenant": t.name, "name": args.name, "path": str(path)})
    return EXIT_OK


async def prompts_list(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    found = PromptLibrary(_data_dir(args)).list(t.id)
    output.table(("name", "source"), sorted(found.items()), [{"name": n, "source": s} for n, s in found.items()],
                 "no prompts (run `hivepbx prompts build`)")
    return EXIT_OK


async def prompts_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    try:
        gone = PromptLibrary(_data_dir(args)).delete(t.id, args.name)
    except PromptError as e:
        raise CliError(str(e)) from None
    if not gone:
        raise CliError(f"tenant {t.name} has no recording {args.name} of its own")
    output.done(f"deleted tenant {t.name}'s recording {args.name} (the default plays again)",
                {"deleted": "prompt", "tenant": t.name, "name": args.name})
    return EXIT_OK


def _hours_args(q) -> None:
    q.add_argument("--active", metavar="JSON",
                   help='open hours: a time condition or a list of them, e.g. \'{"weekdays": "mon-fri", "time": "08:00-18:00"}\''
                        " (the tenant's time zone)")
    q.add_argument("--closed", action="append", default=[], metavar="PROMPT",
                   help="prompt played outside the open hours (repeatable; default: closed)")
    q.add_argument("--out-of-hours", metavar="DEST",
                   help="where callers go after the closed prompt: 1009, tel:+4930..., sip:user@IP (or 'hangup')")


def add_commands(sub, group, leaf, common: argparse.ArgumentParser) -> None:
    g = group("ivr", "IVR / auto attendant menus")
    q = leaf(g, "add", ivr_add, "add or replace an IVR (callers dial its number; DIDs may point at it)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number", help="the IVR's number (2-10 digits, not an extension)")
    q.add_argument("--file", metavar="FILE.json", help="the menu document (see node/pbx/ivr.py)")
    q.add_argument("--menu", metavar="JSON", help="the menu document inline")
    q.add_argument("--did", action="append", default=[], metavar="NUMBER",
                   help="also route this inbound number to the IVR (repeatable)")
    _hours_args(q)
    q = leaf(g, "hours", ivr_hours, "set or remove the open hours of an IVR (outside them: closed prompt, then a destination)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")
    _hours_args(q)
    q.add_argument("--always", action="store_true", help="remove the open hours (the menu always answers)")
    q = leaf(g, "list", ivr_list, "list IVRs")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "show", ivr_show, "print an IVR's menu as JSON")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")
    q = leaf(g, "del", ivr_del, "delete an IVR")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("number")

    g = group("prompts", "prompts the node plays (IVR menus, announcements)")
    q = g.add_parser("build", parents=[common], help="generate the default English prompts (espeak-ng, sox)")
    q.add_argument("--force", action="store_true", help="generate again even where present")
    q.set_defaults(sync_handler=prompts_build)
    q = leaf(g, "upload", prompts_upload, "store a tenant's own recording of a prompt (converted with sox)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("name", help="prompt name, e.g. welcome, menu")
    q.add_argument("file", metavar="AUDIO_FILE")
    q = leaf(g, "list", prompts_list, "prompts a tenant's IVRs can play")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "del", prompts_del, "delete a tenant's own recording")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("name")


__all__ = ["add_commands", "ConfigError"]
