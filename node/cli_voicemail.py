"""``hivepbx vm ...``: mailboxes, their messages and greetings.

    hivepbx vm set acme 1001 --pin 4711 [--email alice@acme.example] [--max-seconds 120] [--ring 20] [--disable]
    hivepbx vm show acme 1001 / list acme / del acme 1001
    hivepbx vm messages acme 1001                      # newest first
    hivepbx vm greeting upload acme 1001 busy greeting.mp3   # any format sox reads (8 kHz WAV stored)
    hivepbx vm greeting del acme 1001 temporary

Mailboxes are validated by node.pbx.voicemail (the rules the node applies); messages and
greetings live under the data directory (node/pbx/voicemail_store.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from node.cli import EXIT_OK, CliError, Output, _data_dir, _tenant
from node.cli_common import delete_object, get_object
from node.config_rules import ConfigError
from node.media_engine.prompts import PromptError, convert
from node.pbx import voicemail
from node.pbx.voicemail_store import GREETINGS, FileMailboxStore


async def vm_set(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    doc = dict(await backend.config.get_object(t.id, voicemail.KIND, args.ext) or {})
    for key, value in (("pin", args.pin), ("email", args.email), ("max_seconds", args.max_seconds), ("ring", args.ring)):
        if value is not None:
            doc[key] = value
    if args.disable or args.enable:
        doc["enabled"] = bool(args.enable)
    out = await voicemail.put(backend.config, t.id, args.ext, doc)
    output.done(f"mailbox {args.ext} of tenant {t.name} saved ({'enabled' if out['enabled'] else 'disabled'})",
                {"tenant": t.name, "mailbox": args.ext, "settings": {k: v for k, v in out.items() if k != "pin"}})
    return EXIT_OK


async def vm_show(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    doc = await get_object(backend, t, voicemail.KIND, args.ext, f"no mailbox {args.ext} in tenant {t.name}")
    store = FileMailboxStore(_data_dir(args))
    new, old = store.counts(t.id, args.ext)
    shown = {k: v for k, v in doc.items() if k != "pin"}
    shown.update(new=new, saved=old, greetings=[k for k in GREETINGS if store.greeting(t.id, args.ext, k)])
    output.emit(shown)
    return EXIT_OK


async def vm_list(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    boxes = await backend.config.list_objects(t.id, voicemail.KIND)
    store = FileMailboxStore(_data_dir(args))
    rows, data = [], []
    for box, doc in sorted(boxes.items()):
        new, old = store.counts(t.id, box)
        rows.append((box, "yes" if doc.get("enabled", True) else "no", doc.get("email", ""), str(new), str(old)))
        data.append({"mailbox": box, "enabled": doc.get("enabled", True), "email": doc.get("email", ""), "new": new, "saved": old})
    output.table(("mailbox", "enabled", "email", "new", "saved"), rows, data, f"no mailboxes in tenant {t.name}")
    return EXIT_OK


async def vm_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    await delete_object(backend, t, voicemail.KIND, args.ext, f"no mailbox {args.ext} in tenant {t.name}")
    output.done(f"deleted mailbox {args.ext} of tenant {t.name} (its stored messages are kept on disk)",
                {"deleted": "mailbox", "tenant": t.name, "mailbox": args.ext})
    return EXIT_OK


async def vm_messages(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    msgs = FileMailboxStore(_data_dir(args)).messages(t.id, args.ext)
    rows = [(m.id, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(m.time)), m.caller, f"{m.duration:.1f}", m.status)
            for m in msgs]
    output.table(("id", "time (UTC)", "caller", "seconds", "status"), rows,
                 [dict(m.meta(), id=m.id, path=m.path) for m in msgs], f"no messages in mailbox {args.ext}")
    return EXIT_OK


async def greeting_upload(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if await backend.config.get_object(t.id, voicemail.KIND, args.ext) is None:
        raise CliError(f"no mailbox {args.ext} in tenant {t.name} (create it with `hivepbx vm set`)")
    if not Path(args.file).is_file():
        raise CliError(f"no such file: {args.file}")
    store = FileMailboxStore(_data_dir(args))
    with tempfile.TemporaryDirectory(prefix="hivepbx-greeting-") as tmp:
        wav = Path(tmp) / "greeting.wav"
        try:
            convert(args.file, wav)
            path = store.save_greeting_file(t.id, args.ext, args.kind, wav)
        except (PromptError, ConfigError) as e:
            raise CliError(str(e)) from None
    output.done(f"{args.kind} greeting of mailbox {args.ext} (tenant {t.name}) stored as {path}",
                {"tenant": t.name, "mailbox": args.ext, "greeting": args.kind, "path": str(path)})
    return EXIT_OK


async def greeting_del(args, backend, output: Output) -> int:
    t = await _tenant(backend, args.tenant)
    if not FileMailboxStore(_data_dir(args)).delete_greeting(t.id, args.ext, args.kind):
        raise CliError(f"mailbox {args.ext} of tenant {t.name} has no {args.kind} greeting")
    output.done(f"deleted the {args.kind} greeting of mailbox {args.ext}",
                {"deleted": "greeting", "tenant": t.name, "mailbox": args.ext, "greeting": args.kind})
    return EXIT_OK


def add_commands(sub, group, leaf, common: argparse.ArgumentParser) -> None:
    g = group("vm", "voicemail boxes, messages and greetings")
    q = leaf(g, "set", vm_set, "create or change an extension's mailbox")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("ext", metavar="EXTENSION")
    q.add_argument("--pin", help="4-10 digits (needed for a new mailbox)")
    q.add_argument("--email", help="send each new message there (the node's smtp_host must be set)")
    q.add_argument("--max-seconds", type=int, help="longest message, 5-600 (default 120)")
    q.add_argument("--ring", type=int, help="seconds the phones ring before voicemail answers")
    q.add_argument("--disable", action="store_true", help="calls no longer go to voicemail")
    q.add_argument("--enable", action="store_true")
    for name, fn, text in (("show", vm_show, "a mailbox's settings and counts"),
                           ("messages", vm_messages, "messages in a mailbox, newest first"),
                           ("del", vm_del, "delete a mailbox (its messages stay on disk)")):
        q = leaf(g, name, fn, text)
        q.add_argument("tenant", metavar="TENANT")
        q.add_argument("ext", metavar="EXTENSION")
    q = leaf(g, "list", vm_list, "mailboxes of a tenant")
    q.add_argument("tenant", metavar="TENANT")
    gg = g.add_parser("greeting", help="a mailbox's recorded greetings").add_subparsers(
        dest="greeting_action", metavar="ACTION", required=True)
    q = leaf(gg, "upload", greeting_upload, "store a greeting (any format sox reads)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("ext", metavar="EXTENSION")
    q.add_argument("kind", choices=GREETINGS)
    q.add_argument("file", metavar="AUDIO_FILE")
    q = leaf(gg, "del", greeting_del, "delete a greeting (the default plays again)")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("ext", metavar="EXTENSION")
    q.add_argument("kind", choices=GREETINGS)
