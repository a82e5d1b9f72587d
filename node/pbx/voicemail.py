"""Voicemail: a mailbox per extension (feature object kind 'voicemail', named by the
extension number), leaving a message when the extension does not answer, and the per-node
service that stores messages, lights message-waiting lamps and sends e-mails.

    {"enabled": true, "pin": "4711", "email": "alice@example.com",
     "max_seconds": 120,     # longest message (5-600)
     "ring": 20}             # optional: seconds the phones ring before voicemail answers

How a call gets here: node/pbx/dialplan.py compiles, after an extension's own features
(forwarding, follow-me, DND), two last attempts that are applications (``Target.app``):
its busy exits lead to the mailbox with the busy greeting, its no-answer exits (ring
timeout, 480 not registered) to the one with the unavailable greeting. node/pbx/call.py hands
the ringing caller over to node/pbx/app_call.py, which answers and runs ``leave_message``.
A forward may also name 'voicemail' (the extension's own mailbox) explicitly, and an IVR
option ``{"type": "voicemail", "value": "1001"}``.

Leaving a message: greeting (temporary > busy/unavailable > default prompts with the
extension number spoken digit by digit), a beep, then recording until the caller presses #,
hangs up, or ``max_seconds``. The recording reaches disk every second (a crash keeps it,
node/pbx/voicemail_store.py) and becomes a message (WAV + JSON) as soon as it ends; then the
MWI subscribers get a NOTIFY (node/pbx/mwi.py) and, if configured, the owner an e-mail with
the WAV (node/pbx/notify_mail.py). The mailbox menu is node/pbx/voicemail_menu.py.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

import numpy as np

from node.config_rules import ConfigError, extension_number
from node.pbx.app_call import AppContext, register_app
from node.pbx.voicemail_store import FileMailboxStore, MailboxStore, Message
from prometheus_client import Counter

if TYPE_CHECKING:
    from node.pbx.dialplan import Ctx, Frag

log = logging.getLogger("hivepbx.voicemail")

KIND = "voicemail"
#: a forward destination that means "this extension's own mailbox"
DEST = "voicemail"
DEFAULT_MAX_SECONDS = 120
_PIN = re.compile(r"[0-9]{4,10}\Z")
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9.-]{1,253}\Z")
CHECKPOINT_SECONDS = 1.0
BEEP_SECONDS = 0.4

MESSAGES_LEFT = Counter("hivepbx_voicemail_messages", "Voicemail messages stored")
MAILS_SENT = Counter("hivepbx_voicemail_mails", "Voicemail e-mail notifications", ["result"])

#: prompts voicemail plays, spoken by espeak-ng into the default prompt set on first start
PROMPTS: dict[str, str] = {
    "vm-person-at": "The person at extension",
    "vm-not-available": "is not available.",
    "vm-is-busy": "is busy.",
    "vm-leave-message": "Please leave a message after the tone.",
    "vm-saved": "Your message has been saved. Goodbye.",
    "vm-enter-mailbox": "Please enter the mailbox number, followed by pound.",
    "vm-enter-pin": "Please enter your PIN, followed by pound.",
    "vm-invalid-pin": "That PIN is not correct.",
    "vm-you-have": "You have",
    "vm-new-messages": "new messages.",
    "vm-main-menu": "Press 1 to listen to your messages, 0 for mailbox options, or star to exit.",
    "vm-message-menu": "Press 7 to delete, 9 to save, 5 to call back, or pound for the next message.",
    "vm-deleted": "Message deleted.",
    "vm-message-saved": "Message saved.",
    "vm-no-more": "No more messages.",
    "vm-options-menu": ("Press 1 to record your unavailable greeting, 2 for your busy greeting, "
                        "3 for a temporary greeting, 4 to delete the temporary greeting, or star to go back."),
    "vm-record-greeting": "Record your greeting after the tone, and press pound when you are done.",
    "vm-greeting-saved": "Your greeting has been saved.",
    "vm-greeting-deleted": "The temporary greeting has been deleted.",
    "vm-goodbye": "Goodbye.",
    **{f"digit-{d}": w for d, w in zip("0123456789", ("zero", "one", "two", "three", "four", "five", "six",
                                                      "seven", "eight", "nine"))},
}


# ---------------------------------------------------------------- mailbox documents
def validate(doc: object) -> dict:
    if not isinstance(doc, dict):
        raise ConfigError("a mailbox is a JSON object (see node/pbx/voicemail.py for its keys)")
    allowed = {"enabled", "pin", "email", "max_seconds", "ring"}
    extra = sorted(set(doc) - allowed)
    if extra:
        raise ConfigError(f"unknown mailbox field(s) {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})")
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"mailbox enabled must be true or false, not {enabled!r}")
    pin = doc.get("pin")
    if not isinstance(pin, str) or not _PIN.match(pin):
        raise ConfigError("mailbox pin: 4 to 10 digits, given as a string")
    out: dict = {"enabled": enabled, "pin": pin}
    email = doc.get("email", "")
    if email:
        if not isinstance(email, str) or not _EMAIL.match(email.strip()):
            raise ConfigError(f"mailbox email {email!r} is not an e-mail address")
        out["email"] = email.strip()
    ms = doc.get("max_seconds", DEFAULT_MAX_SECONDS)
    if isinstance(ms, bool) or not isinstance(ms, int) or not 5 <= ms <= 600:
        raise ConfigError(f"mailbox max_seconds must be a whole number from 5 to 600, not {ms!r}")
    out["max_seconds"] = ms
    if "ring" in doc:
        ring = doc["ring"]
        if isinstance(ring, bool) or not isinstance(ring, int) or not 1 <= ring <= 600:
            raise ConfigError(f"mailbox ring must be a whole number of seconds from 1 to 600, not {ring!r}")
        out["ring"] = ring
    return out


async def put(config, tenant_id: int, box: str, doc: object) -> dict:
    """Validate and store a mailbox; the extension must exist in this tenant."""
    box = extension_number(box)
    if await config.get_extension(tenant_id, box) is None:
        raise ConfigError(f"extension {box} does not exist in this tenant", 404)
    out = validate(doc)
    await config.put_object(tenant_id, KIND, box, out)
    return out


async def load(config, tenant_id: int, box: str) -> dict | None:
    """The mailbox document, None when there is none or it is unusable (logged)."""
    doc = await config.get_object(tenant_id, KIND, box)
    if doc is None:
        return None
    try:
        return validate(doc)
    except ConfigError as e:
        log.warning("tenant %s: mailbox %s is misconfigured: %s", tenant_id, box, e)
        return None


async def enabled(config, tenant_id: int, box: str) -> bool:
    doc = await load(config, tenant_id, box)
    return bool(doc and doc["enabled"])


# ---------------------------------------------------------------- dial plan
def app_attempt(ctx: "Ctx", box: str, greeting: str) -> "Frag":
    """One attempt that hands the call to mailbox ``box``: it never ends in an outcome."""
    from node.pbx.dialplan import Frag
    from node.pbx.routing import AppTarget, Target

    if not ctx.state.apps_ready():
        return Frag(None, [], 480, "Temporarily Unavailable (voicemail needs the media runtime)")
    target = Target(kind="app", ruri=f"voicemail:{box}", transport="", host="", port=0, to_value="",
                    app=AppTarget(KIND, box, greeting))
    f = ctx.add([target])
    return Frag(f.entry, [])


async def fallback(ctx: "Ctx", number: str, frag: "Frag") -> "Frag":
    """The extension's compiled features, then its mailbox on busy and on no answer."""
    if not ctx.state.apps_ready() or getattr(ctx, "list_depth", 0):
        return frag  # no media runtime, or one step of a follow-me list (node/pbx/forwarding.py)
    doc = await load(ctx.config, ctx.tenant.id, number)
    if doc is None or not doc["enabled"]:
        return frag
    if doc.get("ring") and frag.entry is not None and ctx.rules[frag.entry].ring == 0:
        ctx.rules[frag.entry].ring = doc["ring"]
    out = ctx.then(frag, app_attempt(ctx, number, "busy"), ("busy",))
    return ctx.then(out, app_attempt(ctx, number, "unavailable"), ("noanswer",))


# ---------------------------------------------------------------- the node's service
class VoicemailService:
    """Per node (``PbxService.voicemail``): the store, MWI lamps and e-mail."""

    def __init__(self, store: MailboxStore, config, subscriptions=None, mailer=None) -> None:
        self.store = store
        self.config = config
        self.subscriptions = subscriptions
        self.mailer = mailer
        self._mail_tasks: set[asyncio.Task] = set()
        if subscriptions is not None:
            from node.pbx.mwi import MessageSummaryPackage

            subscriptions.register(MessageSummaryPackage(self))

    def changed(self, tenant_id: int, box: str) -> None:
        """A mailbox's counts changed: every message-summary watcher gets a NOTIFY."""
        if self.subscriptions is not None:
            self.subscriptions.changed("message-summary", tenant_id, box)

    def message_left(self, tenant, box: str, doc: dict, msg: Message) -> None:
        MESSAGES_LEFT.inc()
        log.info("voicemail for %s from %s: %.1f s", box, msg.caller, msg.duration)
        self.changed(tenant.id, box)
        if self.mailer is not None and doc.get("email"):
            task = asyncio.get_running_loop().create_task(self._mail(tenant, box, doc["email"], msg))
            self._mail_tasks.add(task)
            task.add_done_callback(self._mail_tasks.discard)

    async def _mail(self, tenant, box: str, to: str, msg: Message) -> None:
        try:
            await asyncio.to_thread(self.mailer.send_voicemail, to, tenant.name, box, msg)
            MAILS_SENT.labels("sent").inc()
        except Exception as e:  # the message is stored either way; the mail is a courtesy
            MAILS_SENT.labels("failed").inc()
            log.warning("voicemail e-mail to %s failed: %s", to, e)

    async def close(self) -> None:
        if self._mail_tasks:
            await asyncio.wait(list(self._mail_tasks), timeout=10)


async def attach(service, cfg, prompts) -> VoicemailService:
    """Set up voicemail on a node: prompts, recovered recordings, MWI, e-mail."""
    from node.media_engine.prompts import PromptError, build_defaults
    from node.pbx.notify_mail import Mailer

    try:
        await asyncio.to_thread(build_defaults, prompts.default_dir, PROMPTS)
    except PromptError as e:
        log.warning("voicemail prompts not built (%s): greetings fall back to tenant recordings", e)
    store = FileMailboxStore(cfg.data_dir)
    mailer = Mailer(cfg.smtp_host, cfg.smtp_port, cfg.smtp_from) if getattr(cfg, "smtp_host", "") else None
    vm = VoicemailService(store, service.config, service.subscriptions, mailer)
    service.voicemail = vm
    for tenant_id, box, _msg in await asyncio.to_thread(store.recover):
        vm.changed(tenant_id, box)
    return vm


def service_of(ctx: AppContext) -> VoicemailService:
    vm = getattr(ctx.call.host, "voicemail", None)
    if vm is None:
        raise RuntimeError("voicemail is not set up on this node")
    return vm


# ---------------------------------------------------------------- recording
def start_recording(ctx: AppContext) -> list[np.ndarray]:
    """Start recording the caller; the live list of decoded 20 ms frames.

    The endpoint's ``record`` collects frames in a list; we keep a reference to that list
    and end the recording by detaching it (``stop_recording``), so the endpoint writes no
    file of its own and a hang-up (which cancels the application task) loses nothing: the
    caller's ``finally`` still holds every frame."""
    ep = ctx.endpoint
    ctx.flush_digits()
    ep.record(ctx.call.host.cfg.data_dir / ".vm-unused.wav")
    frames = ep._recording
    assert frames is not None
    return frames


def stop_recording(ctx: AppContext, frames: list[np.ndarray]) -> None:
    ep = ctx.call.ep
    if ep is not None and ep._recording is frames:
        ep._recording = None


async def capture(ctx: AppContext, frames: list[np.ndarray], max_seconds: float, on_frames=None) -> str:
    """Wait until '#' ('key'), hang-up ('hangup') or ``max_seconds`` ('max'), calling
    ``on_frames(frames)`` every second (the checkpoint to disk)."""
    ep = ctx.endpoint
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    while True:
        left = deadline - loop.time()
        if left <= 0:
            return "max"
        digit = await ctx.get_digit(min(left, CHECKPOINT_SECONDS))
        if on_frames is not None:
            on_frames(frames)
        if ep.closed:
            return "hangup"
        if digit == "#":
            return "key"


def _trim_key(frames: list[np.ndarray]) -> list[np.ndarray]:
    """Drop the last 0.2 s: the caller's '#' (in-band it would be a DTMF tone)."""
    return frames[:-10] if len(frames) > 10 else frames


def _digits(number: str) -> list[str]:
    return [f"digit-{d}" for d in number if d.isdigit()]


async def greeting(ctx: AppContext, vm: VoicemailService, box: str, why: str) -> None:
    store = vm.store
    tid = ctx.tenant.id
    own = store.greeting(tid, box, "temporary") or store.greeting(tid, box, "busy" if why == "busy" else "unavailable")
    if own is not None:
        await ctx.endpoint.play([own], interruptible=True)
    else:
        await ctx.play(["vm-person-at", *_digits(box), "vm-is-busy" if why == "busy" else "vm-not-available",
                        "vm-leave-message"], interruptible=True)


async def leave_message(ctx: AppContext, box: str, doc: dict) -> None:
    """The application: greeting, beep, record, store (kind 'voicemail', ``ctx.arg`` =
    'busy' or 'unavailable')."""
    try:
        doc = validate(doc)
    except ConfigError as e:
        log.warning("mailbox %s of tenant %s is invalid (%s)", box, ctx.tenant.name, e)
        await ctx.play(["unavailable"])
        return
    vm = service_of(ctx)
    await greeting(ctx, vm, box, ctx.arg or "unavailable")
    if ctx.endpoint.closed:
        return
    ctx.endpoint.tone("beep")
    await asyncio.sleep(BEEP_SECONDS)
    ctx.endpoint.stop_output()
    caller = ctx.caller
    cp = await asyncio.to_thread(vm.store.checkpoint, ctx.tenant.id, box, caller.number, caller.display)
    frames = start_recording(ctx)
    how = "hangup"
    try:
        how = await capture(ctx, frames, doc["max_seconds"], cp.append)
    finally:
        # runs on a hang-up too (this task is being cancelled): synchronous, so it completes
        stop_recording(ctx, frames)
        msg = vm.store.finish(cp, _trim_key(frames) if how == "key" else list(frames))
        if msg is not None:
            vm.message_left(ctx.tenant, box, doc, msg)
    if not ctx.endpoint.closed:
        await ctx.play(["vm-saved"])


async def _app(ctx: AppContext, box: str, doc: dict) -> None:
    await leave_message(ctx, box, doc)


# IVR option {"type": "voicemail", "value": "1001"}
async def _ivr_destination(ctx: AppContext, dest: dict) -> str:
    doc = await load(ctx.config, ctx.tenant.id, dest["value"])
    if doc is None or not doc["enabled"]:
        await ctx.play(["unavailable"])
        return "repeat"
    ctx.arg = "unavailable"
    await leave_message(ctx, dest["value"], doc)
    return "done"


def _ivr_value(value: object) -> str:
    return extension_number(value)


register_app(KIND, _app)
try:
    from node.pbx import ivr as _ivr

    _ivr.register_destination(KIND, _ivr_value, _ivr_destination)
except ImportError:  # pragma: no cover
    pass
from node.pbx import voicemail_menu as _menu  # noqa: E402,F401  (registers the mailbox menu feature codes)
