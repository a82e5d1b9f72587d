"""Dial-by-name directory: the caller spells the first letters of a name on the keypad, hears
the matching colleagues' names and picks one.

Reached by a tenant feature code (action ``directory``, e.g. ``"*411": {"action":
"directory"}``) or an IVR option ``{"type": "directory"}``. Names are the extensions' display
names of the caller's own tenant (never another tenant's); an extension without a display name
is not listed. Each name is spoken by espeak-ng the first time it is needed and kept under
``<data dir>/prompts/names/<tenant>/``, re-made when the display name changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path

from node.pbx import feature_codes, ivr
from node.pbx.app_call import AppContext

log = logging.getLogger("hivepbx.directory")

#: the letters on each key (ITU E.161)
_KEYPAD = {**{c: "2" for c in "abc"}, **{c: "3" for c in "def"}, **{c: "4" for c in "ghi"},
           **{c: "5" for c in "jkl"}, **{c: "6" for c in "mno"}, **{c: "7" for c in "pqrs"},
           **{c: "8" for c in "tuv"}, **{c: "9" for c in "wxyz"}}
LETTERS = 3
#: seconds to wait for each key / for the choice after a name
KEY_TIMEOUT = 6.0
TRIES = 3
_WORD = re.compile(r"[A-Za-z]+")


def keys_of(word: str) -> str:
    return "".join(_KEYPAD.get(c, "") for c in word.lower())


def matches(extensions, digits: str) -> list:
    """Extensions whose display name has a word (first or last name) starting with the letters
    ``digits`` spell, sorted by name."""
    found = []
    for e in extensions:
        words = _WORD.findall(e.display_name or "")
        if any(keys_of(w).startswith(digits) for w in words):
            found.append(e)
    return sorted(found, key=lambda e: (e.display_name.lower(), e.number))


def _name_file(ctx: AppContext, ext) -> Path:
    root = ctx.call.apps.prompts.root / "names" / str(ctx.tenant.id)
    tag = hashlib.sha1(ext.display_name.encode()).hexdigest()[:10]
    return root / f"{ext.number}-{tag}.wav"


async def _name_prompt(ctx: AppContext, ext) -> Path | None:
    from node.media_engine.prompts import PromptError, synthesize

    path = _name_file(ctx, ext)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        spoken = f"{ext.display_name}, extension {' '.join(ext.number)}."
        try:
            await asyncio.to_thread(synthesize, spoken, path)
        except PromptError as e:
            log.warning("cannot speak the name of %s: %s", ext.number, e)
            return None
    return path


async def _keys(ctx: AppContext, n: int) -> str:
    got = ""
    while len(got) < n:
        d = await ctx.get_digit(KEY_TIMEOUT)
        if d is None:
            break
        if d in "23456789":
            got += d
    return got


async def run(ctx: AppContext) -> str:
    """'done' when the caller was put through (or hung up), 'repeat' when nothing came of it."""
    exts = await ctx.config.list_extensions(ctx.tenant.id)
    for _ in range(TRIES):
        await ctx.play(["dir-intro"], interruptible=True)
        digits = await _keys(ctx, LETTERS)
        if len(digits) < LETTERS:
            await ctx.play(["no-input"])
            continue
        found = matches(exts, digits)
        if not found:
            await ctx.play(["dir-none"])
            continue
        for ext in found:
            name = await _name_prompt(ctx, ext)
            if name is not None:
                await ctx.endpoint.play([name], interruptible=True)
            await ctx.play(["dir-choose"], interruptible=True)
            choice = await ctx.get_digit(KEY_TIMEOUT)
            if choice == "1":
                await ctx.play(["transferring"])
                result = await ctx.transfer(ext.number)
                if result.answered:
                    return "done"
                await ctx.play(["unavailable"])
                return "repeat"
            if choice != "2":
                break
        await ctx.play(["dir-none"])
    await ctx.play(["goodbye"])
    return "done"


async def _feature(ctx: AppContext, code: str, doc: dict) -> None:
    await run(ctx)


async def _ivr_option(ctx: AppContext, dest: dict) -> str:
    return await run(ctx)


def _validate(value: object) -> str:
    return ""


feature_codes.register_application("directory", _feature)
ivr.register_destination("directory", _validate, _ivr_option)
