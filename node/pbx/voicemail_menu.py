"""The mailbox menu, reached by a feature code (node/pbx/feature_codes.py actions):

    "*97": {"action": "voicemail"}        the caller's own mailbox
    "*98": {"action": "voicemail_any"}    asks for a mailbox number (of the caller's tenant only)

PIN (3 tries) → "you have N new messages" → 1 listen: messages newest first; after each
7 delete, 9 save, # next, 5 call the sender back (a transfer through the dial plan, like a
dialled call) — listening marks a message saved; 0 mailbox options: 1/2/3 record the
unavailable / busy / temporary greeting, 4 delete the temporary one; * back / exit.
Every change of the counts NOTIFYs the mailbox's MWI watchers.
"""

from __future__ import annotations

import asyncio
import hmac
import logging

from node.pbx import feature_codes
from node.pbx.app_call import AppContext

log = logging.getLogger("hivepbx.voicemail")

PIN_TRIES = 3
KEY_TIMEOUT = 8.0
DIGIT_TIMEOUT = 4.0
GREETING_MAX_SECONDS = 60
GREETING_KEYS = {"1": "unavailable", "2": "busy", "3": "temporary"}


async def read_number(ctx: AppContext, first_timeout: float = KEY_TIMEOUT, max_len: int = 10) -> str:
    """Keys up to '#' (or a pause); the first may already be queued (interrupted prompt)."""
    keys = ""
    timeout = first_timeout
    while len(keys) < max_len:
        d = await ctx.get_digit(timeout)
        if d is None or d == "#":
            break
        keys += d
        timeout = DIGIT_TIMEOUT
    return keys


def _count(n: int) -> list[str]:
    return [f"digit-{d}" for d in str(n)]


async def _login(ctx: AppContext, box: str | None) -> tuple[str, dict] | None:
    from node.pbx import voicemail

    for _ in range(PIN_TRIES):
        number = box
        if number is None:
            await ctx.play(["vm-enter-mailbox"], interruptible=True)
            number = await read_number(ctx)
        await ctx.play(["vm-enter-pin"], interruptible=True)
        pin = await read_number(ctx)
        if ctx.endpoint.closed:
            return None
        # the mailbox is looked up in the caller's own tenant only: another tenant's is unknown
        doc = await voicemail.load(ctx.config, ctx.tenant.id, number) if number and number.isdigit() else None
        if doc is not None and doc["enabled"] and hmac.compare_digest(pin.encode(), doc["pin"].encode()):
            return number, doc
        log.info("voicemail login to %s of tenant %s refused", number, ctx.tenant.name)
        await ctx.play(["vm-invalid-pin"])
    return None


async def menu(ctx: AppContext, code: str, doc: dict) -> None:
    from node.pbx import voicemail

    own = ctx.caller.number if doc.get("action") == "voicemail" and ctx.caller.extension is not None else None
    login = await _login(ctx, own)
    if login is None:
        await ctx.play(["vm-goodbye"])
        return
    box, _box_doc = login
    vm = voicemail.service_of(ctx)
    while not ctx.endpoint.closed:
        new, _old = vm.store.counts(ctx.tenant.id, box)
        how = await ctx.play(["vm-you-have", *_count(new), "vm-new-messages", "vm-main-menu"], interruptible=True)
        if how == "stopped":
            return
        key = await ctx.get_digit(KEY_TIMEOUT)
        if key == "1":
            if await _listen(ctx, vm, box) == "done":
                return
        elif key == "0":
            await _options(ctx, vm, box)
        else:
            await ctx.play(["vm-goodbye"])
            return


async def _listen(ctx: AppContext, vm, box: str) -> str:
    tid = ctx.tenant.id
    for msg in vm.store.messages(tid, box):
        ctx.flush_digits()
        how = await ctx.endpoint.play([msg.path], interruptible=True)
        if how == "stopped":
            return "done"
        if msg.status == "new":
            await asyncio.to_thread(vm.store.set_status, tid, box, msg.id, "saved")
            vm.changed(tid, box)
        key = None
        if how == "interrupted":
            key = await ctx.get_digit(0.1)
        if key is None:
            await ctx.play(["vm-message-menu"], interruptible=True)
            key = await ctx.get_digit(KEY_TIMEOUT)
        if key == "7":
            await asyncio.to_thread(vm.store.delete, tid, box, msg.id)
            vm.changed(tid, box)
            await ctx.play(["vm-deleted"])
        elif key == "9":
            await ctx.play(["vm-message-saved"])
        elif key == "5" and msg.caller:
            result = await ctx.transfer(msg.caller)
            if result.answered or result.status in (200, 487) or ctx.call.answered_leg is not None:
                return "done"
            await ctx.play(["unavailable"])
        elif key is None and ctx.endpoint.closed:
            return "done"
    await ctx.play(["vm-no-more"])
    return "menu"


async def _options(ctx: AppContext, vm, box: str) -> None:
    from node.pbx import voicemail

    tid = ctx.tenant.id
    await ctx.play(["vm-options-menu"], interruptible=True)
    key = await ctx.get_digit(KEY_TIMEOUT)
    if key in GREETING_KEYS:
        await ctx.play(["vm-record-greeting"])
        ctx.endpoint.tone("beep")
        await asyncio.sleep(voicemail.BEEP_SECONDS)
        ctx.endpoint.stop_output()
        frames = voicemail.start_recording(ctx)
        how = "hangup"
        try:
            how = await voicemail.capture(ctx, frames, GREETING_MAX_SECONDS)
        finally:
            voicemail.stop_recording(ctx, frames)
        if how == "hangup":
            return  # a greeting cut off by a hang-up is not kept: the caller never confirmed it
        kept = voicemail._trim_key(frames) if how == "key" else frames
        import numpy as np

        samples = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int16)
        if len(samples) >= 8000 // 2:
            await asyncio.to_thread(vm.store.save_greeting, tid, box, GREETING_KEYS[key], samples)
            await ctx.play(["vm-greeting-saved"])
    elif key == "4":
        await asyncio.to_thread(vm.store.delete_greeting, tid, box, "temporary")
        await ctx.play(["vm-greeting-deleted"])


feature_codes.register_application("voicemail", menu)
feature_codes.register_application("voicemail_any", menu)
