"""Conference rooms: document rules, PIN → role, and a Room on a real engine (loopback
endpoints): a listener is never mixed in, an entry tone reaches everybody."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from node.config_rules import ConfigError
from node.embedded import open_embedded
from node.media.tones import sine
from node.media.wav import read_wav, write_wav
from node.media_engine import MediaEngine
from node.pbx import conference
from node.rtp_engine.port_pool import PortPool
from tests.peers.net import free_port


def test_validate_defaults_and_errors():
    assert conference.validate({}) == {"max_members": 50, "entry_tone": True, "exit_tone": True,
                                       "end_on_admin_exit": False}
    doc = conference.validate({"admin_pin": "9999", "listener_pin": "22", "max_members": 3})
    assert doc["admin_pin"] == "9999" and doc["listener_pin"] == "22" and "talker_pin" not in doc
    for bad, msg in [([], "JSON object"), ({"pin": "1"}, "unknown conference key"),
                     ({"talker_pin": 1111}, "2 to 12 digits"), ({"talker_pin": "1"}, "2 to 12 digits"),
                     ({"talker_pin": "11", "admin_pin": "11"}, "must differ"),
                     ({"max_members": 1}, "max_members"), ({"max_members": True}, "max_members"),
                     ({"entry_tone": "yes"}, "true or false")]:
        with pytest.raises(ConfigError, match=msg):
            conference.validate(bad)
    with pytest.raises(ConfigError, match="2 to 10 digits"):
        conference.name("room1")


def test_pin_decides_role():
    open_room = conference.validate({})
    assert conference.role_for(open_room, None) == "talker"
    doc = conference.validate({"admin_pin": "9999", "talker_pin": "1111", "listener_pin": "2222"})
    assert conference.role_for(doc, None) is None
    assert [conference.role_for(doc, p) for p in ("9999", "1111", "2222", "3333", "")] == [
        "admin", "talker", "listener", None, None]


async def test_put_refuses_a_taken_number_and_is_per_tenant(tmp_path):
    b = open_embedded(tmp_path)
    try:
        cfg = b.config
        t1 = await cfg.create_tenant("a", "a.example")
        t2 = await cfg.create_tenant("b", "b.example")
        await cfg.create_extension(t1.id, "1001", "pw-secret-1001")
        with pytest.raises(ConfigError, match="is an extension"):
            await conference.put(cfg, t1.id, "1001", {})
        await conference.put(cfg, t1.id, "700", {"talker_pin": "1234"})
        await conference.put(cfg, t1.id, "700", {"talker_pin": "4321"})  # replacing the room is fine
        assert (await cfg.get_object(t1.id, "conference", "700"))["talker_pin"] == "4321"
        assert await cfg.get_object(t2.id, "conference", "700") is None
        from node.pbx import destinations

        assert await destinations.internal_kind(cfg, t1.id, "700") == "conference"
        assert await destinations.internal_kind(cfg, t2.id, "700") is None
    finally:
        b.close()


@pytest.fixture
async def engine():
    base = free_port("127.0.0.1", span=16)
    eng = MediaEngine(PortPool(base, base + 15), "127.0.0.1")
    yield eng
    eng.close()


def _share(rec: np.ndarray, hz: float) -> float:
    power = np.abs(np.fft.rfft(rec - rec.mean())) ** 2
    freqs = np.fft.rfftfreq(len(rec), 1 / 8000)
    return float(power[np.abs(freqs - hz) < 20].sum() / (power.sum() + 1e-9))


async def test_room_listener_is_muted_and_entry_tone_heard(engine, tmp_path):
    parties = []
    for hz in (500.0, 1300.0):
        phone = await engine.open_endpoint()
        member = await engine.open_endpoint()
        phone.accept_answer(member.answer(phone.offer("127.0.0.1"), "127.0.0.1"))
        parties.append((hz, phone, member))
    room = conference.room_of(engine, 7, "700")
    assert conference.room_of(engine, 7, "700") is room and conference.room_of(engine, 8, "700") is not room
    doc = conference.validate({})
    (hz_t, talker_phone, talker_ep), (hz_l, listener_phone, listener_ep) = parties
    room.join(conference.Member(None, talker_ep, "talker"), doc)
    room.join(conference.Member(None, listener_ep, "listener"), doc)  # entry tone for the talker
    for hz, phone, _ in parties:
        write_wav(tmp_path / f"{hz}.wav", sine((hz,), 8000, 0.2))
        phone.record(tmp_path / f"rec{hz}.wav")
        phone.play([tmp_path / f"{hz}.wav"])
    await asyncio.sleep(1.0)
    for _, phone, _ in parties:
        await phone.stop_recording()
    heard_by_talker = read_wav(tmp_path / f"rec{hz_t}.wav").astype(float)
    heard_by_listener = read_wav(tmp_path / f"rec{hz_l}.wav").astype(float)
    assert _share(heard_by_listener, hz_t) > 0.3  # the listener hears the talker
    assert _share(heard_by_talker, hz_l) < 0.01  # nobody hears the listener
    assert _share(heard_by_talker[:2400], 660.0) + _share(heard_by_talker[:2400], 880.0) > 0.3  # entry tone
    assert room.count() == 2
    # promoting the listener unmutes it
    room.set_role(room.members[1], "talker")
    assert listener_ep.jitter is not None
    # the talker leaves: the one still in the room hears the exit tone
    talker_phone.stop_output()
    listener_phone.record(tmp_path / "exit.wav")
    room.leave(room.members[0], doc)
    await asyncio.sleep(0.4)
    await listener_phone.stop_recording()
    after = read_wav(tmp_path / "exit.wav").astype(float)
    assert _share(after, 660.0) + _share(after, 880.0) > 0.5, "no exit tone"
    for m in list(room.members):
        room.leave(m, doc)
    assert room.count() == 0 and not talker_ep.conference


class FakeCtx:
    """What conference.run uses of an AppContext: prompts and keys are scripted."""

    def __init__(self, engine, ep, keys: str, number: str = "1001") -> None:
        self.tenant = SimpleNamespace(id=7, name="acme")
        self.caller = SimpleNamespace(number=number)
        self.call = SimpleNamespace(apps=SimpleNamespace(engine=engine))
        self.endpoint = ep
        self.keys = list(keys)
        self.played: list[str] = []
        self.hung_up = False

    async def play(self, names, *, interruptible=False):
        self.played.extend(names)
        return "finished"

    async def get_digit(self, timeout):
        return self.keys.pop(0) if self.keys else None

    def flush_digits(self):
        pass

    def hangup(self):
        self.hung_up = True
        self.endpoint.close()


async def _enter(engine, keys: str, doc: dict, number: str = "1001"):
    ep = await engine.open_endpoint()
    ctx = FakeCtx(engine, ep, keys, number)
    task = asyncio.create_task(conference.run(ctx, "700", doc))
    await asyncio.sleep(0.05)
    return ctx, task


async def test_run_pins_full_room_admin_and_end_on_admin_exit(engine, monkeypatch):
    monkeypatch.setattr(conference, "DIGIT_TIMEOUT", 0.05)
    doc = {"admin_pin": "9999", "talker_pin": "1111", "listener_pin": "2222", "max_members": 2,
           "end_on_admin_exit": True}
    rooms = conference.rooms(engine)
    # three wrong PINs: refused with goodbye, never in the room
    bad, t_bad = await _enter(engine, "5#6#7#", doc)
    await asyncio.wait_for(t_bad, 2)
    assert bad.played == ["conf-pin", "conf-bad-pin"] * 3 + ["goodbye"] and (7, "700") not in rooms
    talker, t1 = await _enter(engine, "1111#", doc, "1001")
    listener, t2 = await _enter(engine, "2222", doc, "1002")  # no '#': the pause ends the PIN
    room = rooms[(7, "700")]
    assert sorted(m.role for m in room.members) == ["listener", "talker"]
    full, t3 = await _enter(engine, "1111#", doc, "1003")
    await asyncio.wait_for(t3, 2)
    assert full.played[-1] == "conf-full" and room.count() == 2
    admin, t4 = await _enter(engine, "9999#", doc, "1004")  # admins enter a full room
    assert room.count() == 3 and room.members[-1].role == "admin"
    t4.cancel()  # the admin hangs up: the room ends for everybody
    await asyncio.gather(t4, return_exceptions=True)
    assert talker.hung_up and listener.hung_up
    await asyncio.wait_for(asyncio.gather(t1, t2, return_exceptions=True), 3)
    assert (7, "700") not in rooms and conference.CONF_MEMBERS._value.get() == 0


def _cli(*argv: str) -> tuple[int, str, str]:
    import io

    from node.cli import main

    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_conf_add_list_del(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    assert _cli("tenant", "add", "acme", "acme.example", *d)[0] == 0
    assert _cli("tenant", "add", "beta", "beta.example", *d)[0] == 0
    assert _cli("ext", "add", "acme", "1002", "--password", "secret-1002", *d)[0] == 0
    rc, out, err = _cli("conf", "add", "acme", "700", "--talker-pin", "1111", "--listener-pin", "2222", "--max", "5",
                        "--did", "+4930555700", *d)
    assert rc == 0 and "DID +4930555700" in out, err
    rc, out, _ = _cli("conf", "list", "acme", *d)
    assert "700" in out and "talker, listener" in out
    assert "conference 700" in _cli("did", "list", "acme", *d)[1]
    rc, _, err = _cli("conf", "add", "acme", "1002", *d)
    assert rc == 2 and "is an extension" in err
    rc, _, err = _cli("conf", "add", "acme", "701", "--talker-pin", "12", "--admin-pin", "12", *d)
    assert rc == 2 and "must differ" in err
    assert "no conference rooms" in _cli("conf", "list", "beta", *d)[1]
    assert _cli("conf", "del", "beta", "700", *d)[0] == 2
    assert _cli("conf", "del", "acme", "700", *d)[0] == 0
