"""Voicemail: mailbox documents, the message store (atomic, crash recovery), the MWI body,
the dial plan's fallback to the mailbox, and the e-mail it sends."""

from __future__ import annotations

import email
import json
import time

import numpy as np
import pytest

from node.config_rules import ConfigError
from node.model import Binding
from node.pbx import forwarding, mwi, voicemail
from node.pbx.dialplan import FeatureState, plan_outgoing
from node.pbx.notify_mail import voicemail_mail
from node.pbx.voicemail_store import FileMailboxStore


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(8000 * seconds)) / 8000
    return (8000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


# ---------------------------------------------------------------- documents
def test_mailbox_validation():
    assert voicemail.validate({"pin": "4711"}) == {"enabled": True, "pin": "4711", "max_seconds": 120}
    with pytest.raises(ConfigError, match="pin"):
        voicemail.validate({"pin": 4711})
    with pytest.raises(ConfigError, match="pin"):
        voicemail.validate({"pin": "12"})
    with pytest.raises(ConfigError, match="e-mail"):
        voicemail.validate({"pin": "1234", "email": "not an address"})
    with pytest.raises(ConfigError, match="unknown mailbox field"):
        voicemail.validate({"pin": "1234", "greeting": "x"})
    with pytest.raises(ConfigError, match="max_seconds"):
        voicemail.validate({"pin": "1234", "max_seconds": 9999})


async def test_put_needs_the_extension_of_the_same_tenant(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    b = await c.create_tenant("beta", "beta.example")
    await c.create_extension(a.id, "1001", "secret-1001")
    await voicemail.put(c, a.id, "1001", {"pin": "4711"})
    with pytest.raises(ConfigError, match="does not exist"):
        await voicemail.put(c, b.id, "1001", {"pin": "4711"})
    assert await voicemail.enabled(c, a.id, "1001")
    assert not await voicemail.enabled(c, b.id, "1001")


# ---------------------------------------------------------------- store
def test_messages_are_stored_listed_marked_and_deleted(tmp_path):
    s = FileMailboxStore(tmp_path)
    m1 = s.save_message(1, "1001", tone(440, 1.5), "1002", "Bob", when=1000.0)
    m2 = s.save_message(1, "1001", tone(700, 2.0), "+4930123", "", when=2000.0)
    assert s.save_message(1, "1001", tone(440, 0.5), "1002", "Bob") is None  # < 1 s: not a message
    assert [m.id for m in s.messages(1, "1001")] == [m2.id, m1.id]  # newest first
    assert s.counts(1, "1001") == (2, 0)
    meta = json.loads((tmp_path / "voicemail" / "1" / "1001" / f"{m1.id}.json").read_text())
    assert meta == {"caller": "1002", "caller_name": "Bob", "time": 1000.0, "duration": 1.5, "status": "new",
                    "urgent": False, "recovered": False}
    assert s.set_status(1, "1001", m1.id, "saved")
    assert s.counts(1, "1001") == (1, 1)
    assert s.delete(1, "1001", m2.id) and not s.delete(1, "1001", m2.id)
    assert s.counts(1, "1001") == (0, 1)
    # tenants are separate directories: tenant 2's mailbox 1001 is empty
    assert s.messages(2, "1001") == [] and s.counts(2, "1001") == (0, 0)
    # no temporary files left behind
    assert not [p for p in (tmp_path / "voicemail").rglob("*") if p.name.startswith(".")]
    with pytest.raises(ConfigError):
        s.messages(1, "../1002")
    assert s.message(1, "1001", "../../etc/passwd") is None


def test_a_crash_mid_recording_keeps_what_was_recorded(tmp_path):
    s = FileMailboxStore(tmp_path)
    cp = s.checkpoint(3, "1001", "1002", "Bob")
    frames = [f for f in tone(440, 1.6).reshape(-1, 160)]
    cp.append(frames[:40])
    cp.append(frames)  # only the new ones are appended
    short = s.checkpoint(3, "1005", "1002", "Bob")
    short.append(frames[:20])  # 0.4 s
    # the process dies here: nothing called finish(); a new store (the restarted node) recovers
    recovered = FileMailboxStore(tmp_path).recover()
    assert [(t, b, m.recovered, m.duration) for t, b, m in recovered] == [(3, "1001", True, 1.6)]
    msg = s.messages(3, "1001")[0]
    assert msg.caller == "1002" and msg.status == "new"
    from node.media.wav import read_wav

    assert np.array_equal(read_wav(msg.path), np.concatenate(frames))
    assert s.messages(3, "1005") == [] and not list((tmp_path / "voicemail").rglob(".rec-*"))


def test_greetings(tmp_path):
    s = FileMailboxStore(tmp_path)
    assert s.greeting(1, "1001", "busy") is None
    p = s.save_greeting(1, "1001", "temporary", tone(500, 1))
    assert s.greeting(1, "1001", "temporary") == p
    assert s.delete_greeting(1, "1001", "temporary") and s.greeting(1, "1001", "temporary") is None
    with pytest.raises(ConfigError, match="greeting"):
        s.greeting(1, "1001", "holiday")


# ---------------------------------------------------------------- MWI
def test_message_summary_body():
    body = mwi.message_summary(2, 1, "sip:1001@alpha.example").decode()
    assert body == "Messages-Waiting: yes\r\nMessage-Account: sip:1001@alpha.example\r\nVoice-Message: 2/1 (0/0)\r\n"
    assert mwi.parse_summary(mwi.message_summary(0, 3).decode())["messages-waiting"] == "no"


async def test_mwi_package_counts_and_only_the_owner_may_watch(store, tmp_path):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    await c.create_extension(a.id, "1001", "secret-1001")
    await voicemail.put(c, a.id, "1001", {"pin": "4711"})
    vm = voicemail.VoicemailService(FileMailboxStore(tmp_path), c)
    pkg = mwi.MessageSummaryPackage(vm)
    assert await pkg.resource_exists(a, "1001") and not await pkg.resource_exists(a, "1002")
    assert pkg.authorize(a, "1001", "1001") and not pkg.authorize(a, "1002", "1001")
    vm.store.save_message(a.id, "1001", tone(440, 1.2), "1002", "")
    assert b"Voice-Message: 1/0 (0/0)" in pkg.body(a, "1001", 0)


# ---------------------------------------------------------------- dial plan
def _binding(tenant_id, ext, port):
    return Binding(tenant_id=tenant_id, extension=ext, contact=f"sip:{ext}@127.0.0.1:{port}", source_host="127.0.0.1",
                   source_port=port, transport="udp", expires_at=time.time() + 60, call_id=f"r{port}", cseq=1)


async def test_voicemail_is_the_last_stop_on_busy_and_no_answer(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    for n in ("1001", "1002", "1003"):
        await c.create_extension(a.id, n, f"secret-{n}")
    await store.locations.save(_binding(a.id, "1002", 6002))
    caller = await c.get_extension(a.id, "1001")
    ready = FeatureState(lambda: True)
    plain = await plan_outgoing(a, caller, "1002", c, store.locations, ready)
    assert not plain.rules  # no mailbox: the plain plan
    await voicemail.put(c, a.id, "1002", {"pin": "4711", "ring": 5})
    plan = await plan_outgoing(a, caller, "1002", c, store.locations, ready)
    assert [[t.kind for t in g] for g in plan.attempts] == [["extension"], ["app"], ["app"]]
    r = plan.rules[0]
    assert (r.ring, r.on_busy, r.on_noanswer, r.on_fail) == (5, 1, 2, None)
    assert [(g[0].app.kind, g[0].app.name, g[0].app.arg) for g in plan.attempts[1:]] == [
        ("voicemail", "1002", "busy"), ("voicemail", "1002", "unavailable")]
    # not registered: straight to the mailbox with the unavailable greeting
    await voicemail.put(c, a.id, "1003", {"pin": "4711"})
    plan = await plan_outgoing(a, caller, "1003", c, store.locations, ready)
    assert plan.attempts[0][0].app.arg == "unavailable"
    # DND: busy greeting
    await forwarding.save(c, a.id, "1002", {"dnd": True})
    plan = await plan_outgoing(a, caller, "1002", c, store.locations, ready)
    assert plan.attempts[0][0].app.arg == "busy"
    # a disabled mailbox, or a node without the media runtime: no voicemail
    await voicemail.put(c, a.id, "1003", {"pin": "4711", "enabled": False})
    plan = await plan_outgoing(a, caller, "1003", c, store.locations, ready)
    assert plan.fail_status == 480 and not plan.attempts
    await voicemail.put(c, a.id, "1003", {"pin": "4711"})
    plan = await plan_outgoing(a, caller, "1003", c, store.locations, FeatureState())
    assert plan.fail_status == 480 and not plan.attempts


async def test_forward_busy_to_voicemail_no_answer_elsewhere(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    for n in ("1001", "1002", "1003"):
        await c.create_extension(a.id, n, f"secret-{n}")
    for n in ("1002", "1003"):
        await store.locations.save(_binding(a.id, n, 6000 + int(n) % 100))
    with pytest.raises(ConfigError, match="no mailbox"):
        await forwarding.save(c, a.id, "1002", {"busy": "voicemail"})
    await voicemail.put(c, a.id, "1002", {"pin": "4711", "enabled": False})
    await forwarding.save(c, a.id, "1002", {"busy": "voicemail", "no_answer": "1003"})
    caller = await c.get_extension(a.id, "1001")
    plan = await plan_outgoing(a, caller, "1002", c, store.locations, FeatureState(lambda: True))
    kinds = [g[0].kind for g in plan.attempts]
    assert kinds == ["extension", "app", "extension"]
    assert (plan.rules[0].on_busy, plan.rules[0].on_noanswer) == (1, 2)


# ---------------------------------------------------------------- e-mail
def test_mail_carries_the_wav(tmp_path):
    s = FileMailboxStore(tmp_path)
    msg = s.save_message(1, "1001", tone(440, 1.2), "1002", "Bob")
    m = email.message_from_bytes(voicemail_mail("vm@pbx.example", "alice@example.com", "alpha", "1001", msg).as_bytes())
    assert "1001" in m["Subject"] and "Bob" in m["Subject"]
    parts = [p for p in m.walk() if p.get_content_type() == "audio/wav"]
    assert len(parts) == 1 and parts[0].get_payload(decode=True) == open(msg.path, "rb").read()


# ---------------------------------------------------------------- service and IVR
class _Server:
    def __init__(self) -> None:
        self.packages = {}
        self.changes = []

    def register(self, package) -> None:
        self.packages[package.name] = package

    def changed(self, package: str, tenant_id: int, resource: str) -> None:
        self.changes.append((package, tenant_id, resource))


async def test_service_registers_message_summary_and_notifies_changes(store, tmp_path):
    server = _Server()
    vm = voicemail.VoicemailService(FileMailboxStore(tmp_path), store.config, server)
    assert "message-summary" in server.packages
    t = await store.config.create_tenant("alpha", "alpha.example")
    msg = vm.store.save_message(t.id, "1001", tone(440, 1.2), "1002", "")
    vm.message_left(t, "1001", {"pin": "4711"}, msg)  # no e-mail address: no mail task
    vm.changed(t.id, "1001")
    assert server.changes == [("message-summary", t.id, "1001")] * 2


def test_ivr_option_may_lead_to_a_mailbox():
    from node.pbx import ivr

    doc = ivr.validate({"options": {"8": {"type": "voicemail", "value": "1002"}}})
    assert doc["options"]["8"] == {"type": "voicemail", "value": "1002"}
    with pytest.raises(ConfigError, match="IVR option 8"):
        ivr.validate({"options": {"8": {"type": "voicemail", "value": "x"}}})


def test_mailbox_menu_codes_are_feature_code_actions():
    from node.pbx import feature_codes

    assert feature_codes.validate("*97", {"action": "voicemail"}) == ("*97", {"action": "voicemail"})
    assert feature_codes.validate("*98", {"action": "voicemail_any"})[1] == {"action": "voicemail_any"}


async def test_a_follow_me_step_with_a_mailbox_does_not_end_the_list(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    for n in ("1001", "1002", "1003", "1004"):
        await c.create_extension(a.id, n, f"secret-{n}")
    for n in ("1003", "1004"):
        await store.locations.save(_binding(a.id, n, 6000 + int(n) % 100))
    await voicemail.put(c, a.id, "1003", {"pin": "4711"})
    await voicemail.put(c, a.id, "1002", {"pin": "4711"})
    await forwarding.save(c, a.id, "1002", {"follow_me": {"destinations": [{"to": "1003", "ring": 5}, "1004"]}})
    caller = await c.get_extension(a.id, "1001")
    plan = await plan_outgoing(a, caller, "1002", c, store.locations, FeatureState(lambda: True))
    steps = [(g[0].kind, g[0].app.name if g[0].app else g[0].ruri) for g in plan.attempts]
    # 1003, then 1004, then 1002's own mailbox (busy and unavailable): never 1003's
    assert steps == [("extension", "sip:1003@127.0.0.1:6003"), ("extension", "sip:1004@127.0.0.1:6004"),
                     ("app", "1002"), ("app", "1002")]
