"""Call recording: settings and precedence, the timeline of a segment, stereo WAV files per
tenant, a Recorder on a real relay session (tapped, toggled by RFC 4733 *1 from the right
side only), and `hivepbx rec ...`."""

from __future__ import annotations

import asyncio
import io
import json
import wave
from types import SimpleNamespace

import numpy as np
import pytest
from prometheus_client import REGISTRY

from node.cli import main
from node.config_rules import ConfigError
from node.media import g711
from node.media.tones import sine
from node.pbx import recording
from node.rtp_engine import PortPool, RtpRelay
from node.rtp_engine import relay as relay_mod
from tests.peers.net import free_port
from tests.peers.rtp_pcap import rfc4733_packets


def test_validate_and_policy():
    assert recording.validate({"mode": "always"}) == {"mode": "always"}
    assert recording.validate({"mode": "on_demand"}) == {"mode": "on_demand", "toggle": "*1"}
    assert recording.validate({"mode": "on_demand", "toggle": "*9"})["toggle"] == "*9"
    for bad, msg in [({"mode": "sometimes"}, "mode must be"), ({"mode": "always", "toggle": "*1"}, "only makes sense"),
                     ({"mode": "on_demand", "toggle": "hello"}, "keys"), ({"mode": "never", "x": 1}, "unknown"),
                     ("always", "JSON object")]:
        with pytest.raises(ConfigError, match=msg):
            recording.validate(bad)
    always, never = {"mode": "always"}, {"mode": "never"}
    demand = recording.validate({"mode": "on_demand"})
    assert recording.policy(None, None) == ("off", {})
    assert recording.policy(always, None) == ("always", {})
    assert recording.policy(None, always) == ("always", {})
    assert recording.policy(always, never) == ("off", {})  # an opted-out party wins
    assert recording.policy(demand, always) == ("always", {})
    assert recording.policy(None, demand) == ("on_demand", {"b": "*1"})  # only that side's keys count


def test_place_joins_jitter_and_keeps_real_gaps():
    pl = g711.ulaw_encode(sine((500.0,), 160, 0.2))
    t0 = 100.0
    # three packets with jitter (joined), then one after a 0.5 s gap (silence before it)
    chunks = [(t0 + 0.000, 0, pl), (t0 + 0.025, 0, pl), (t0 + 0.038, 0, pl), (t0 + 0.6, 0, pl)]
    x = recording._place(chunks, t0)
    assert len(x) == int(0.6 * 8000) + 160
    assert np.abs(x[:480]).min() >= 0 and np.count_nonzero(x[:480]) > 400
    assert not x[480:4800].any()


def test_files_are_per_tenant_and_names_checked(tmp_path):
    d = recording.tenant_dir(tmp_path, 5)
    meta = {"file": "20260101-120000-0123abcd-1.wav", "caller": "1001", "callee": "1002", "start": 1.0}
    recording._write_segment(d / meta["file"], meta, 0.0, [(0.0, 0, b"\xff" * 160)], [])
    assert [r["file"] for r in recording.list_recordings(tmp_path, 5)] == [meta["file"]]
    assert recording.list_recordings(tmp_path, 6) == []
    with wave.open(str(d / meta["file"])) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 8000, 160)
    for bad in ("../5/x.wav", "/etc/passwd", "20260101-120000-0123abcd-1.json"):
        with pytest.raises(ConfigError, match="not a recording file name"):
            recording.delete_recording(tmp_path, 5, bad)
    assert not recording.delete_recording(tmp_path, 6, meta["file"])  # another tenant's: not found
    assert recording.delete_recording(tmp_path, 5, meta["file"])
    assert recording.list_recordings(tmp_path, 5) == [] and not list(d.iterdir())


class _Phone(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        pass


async def _phone():
    loop = asyncio.get_running_loop()
    _, p = await loop.create_datagram_endpoint(_Phone, local_addr=("127.0.0.1", 0))
    return p, p.transport.get_extra_info("sockname")[1]


def _audio(seq: int, hz: float, ssrc: int) -> bytes:
    payload = g711.ulaw_encode(sine((hz,), 160, 0.2, start=160 * seq))
    return bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload


async def test_recorder_on_a_relay_toggled_by_star1(tmp_path):
    base = free_port("127.0.0.1", span=8)
    relay = RtpRelay(PortPool(base, base + 7), "127.0.0.1")
    session = await relay.open_session("c1", "t")
    (pa, port_a), (pb, port_b) = await _phone(), await _phone()
    session.a.set_remote("127.0.0.1", port_a)
    session.b.set_remote("127.0.0.1", port_b)
    call = SimpleNamespace(id="cdr-1", tenant=SimpleNamespace(id=9), invite=SimpleNamespace(call_id="x@y"),
                           caller=SimpleNamespace(number="1001"), plan=SimpleNamespace(callee="1002"))
    rec = recording.Recorder(call, session, tmp_path, "on_demand", {"b": "*1"})
    assert type(session.a.rtp) is relay_mod._TappedSocket
    to_a, to_b = ("127.0.0.1", session.a.local_port), ("127.0.0.1", session.b.local_port)
    seq = 0

    async def talk(n):
        nonlocal seq
        for _ in range(n):
            seq += 1
            pa.transport.sendto(_audio(seq, 600.0, 1), to_a)
            pb.transport.sendto(_audio(seq, 1100.0, 2), to_b)
            await asyncio.sleep(0.02)

    async def keys(phone, dest, ts_base):
        for _, pkt in rfc4733_packets("*1", gap_ms=40):
            ts = (int.from_bytes(pkt[4:8], "big") + ts_base) & 0xFFFFFFFF
            phone.transport.sendto(pkt[:4] + ts.to_bytes(4, "big") + pkt[8:], dest)
            await asyncio.sleep(0.005)

    await talk(5)
    await keys(pa, to_a, 0)  # the caller's *1 does not count (only b is on demand)
    await asyncio.sleep(0.05)
    assert not rec.active
    await keys(pb, to_b, 0)
    await asyncio.sleep(0.05)
    assert rec.active
    await talk(25)
    await keys(pb, to_b, 50_000)  # a new press (new timestamps): off again
    await asyncio.sleep(0.05)
    assert not rec.active and rec.files
    await talk(5)
    rec.close()
    assert type(session.a.rtp) is relay_mod._Socket and type(session.b.rtp) is relay_mod._Socket
    await recording.drain()
    recs = recording.list_recordings(tmp_path, 9)
    assert len(recs) == 1 and (recs[0]["caller"], recs[0]["cdr_id"], recs[0]["trigger"]) == ("1001", "cdr-1", "on_demand")
    with wave.open(str(recording.recording_path(tmp_path, 9, recs[0]["file"]))) as w:
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    frames = x[: len(x) // 160 * 160, 0].astype(float).reshape(-1, 160)
    voiced = int((np.sqrt((frames ** 2).mean(axis=1)) > 300).sum())
    assert 23 <= voiced <= 27  # the 25 frames between the keys, not the 35 sent
    left, right = x[:, 0].astype(float), x[:, 1].astype(float)
    f = np.fft.rfftfreq(len(x), 1 / 8000)
    assert abs(f[np.argmax(np.abs(np.fft.rfft(left)))] - 600) < 20
    assert abs(f[np.argmax(np.abs(np.fft.rfft(right)))] - 1100) < 20
    pa.transport.close()
    pb.transport.close()
    relay.close()


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_rec_set_list_del(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    assert _run("tenant", "add", "acme", "acme.example", *d)[0] == 0
    assert _run("tenant", "add", "beta", "beta.example", *d)[0] == 0
    assert _run("ext", "add", "acme", "1002", "--password", "secret-1002", *d)[0] == 0
    rc, out, err = _run("rec", "set", "acme", "1002", "on_demand", "--toggle", "*5", *d)
    assert rc == 0 and "on_demand" in out, err
    rc, _, err = _run("rec", "set", "beta", "1002", "always", *d)
    assert rc == 2 and "no extension 1002" in err  # beta has no such extension
    rc, out, _ = _run("rec", "list", "acme", *d)
    assert "no recordings" in out
    rc, out, _ = _run("tenant", "list", "--json", *d)
    acme_id = next(t["id"] for t in json.loads(out) if t["name"] == "acme")
    meta = {"file": "20260101-120000-0123abcd-1.wav", "caller": "1001", "callee": "1002", "start": 1767268800.0,
            "cdr_id": "cdr-42", "trigger": "always"}
    recording._write_segment(recording.tenant_dir(tmp_path, acme_id) / meta["file"], meta, 0.0, [], [(0.0, 0, b"\xff" * 160)])
    rc, out, _ = _run("rec", "list", "acme", *d)
    assert meta["file"] in out and "cdr-42" in out and "2026-01-01 12:00:00" in out
    assert "no recordings" in _run("rec", "list", "beta", *d)[1]
    rc, _, err = _run("rec", "del", "beta", meta["file"], *d)
    assert rc == 2 and "no recording" in err
    assert _run("rec", "del", "acme", "../../x.wav", *d)[0] == 2
    assert _run("rec", "del", "acme", meta["file"], *d)[0] == 0
    assert _run("rec", "unset", "acme", "1002", *d)[0] == 0
    assert _run("rec", "unset", "acme", "1002", *d)[0] == 2


# ------------------------------------------------------------------ the policy lookup per answered call
class _Leg:
    def __init__(self) -> None:
        self.taps: list = []
        self.closed = False

    def add_tap(self, tap) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap) -> None:
        self.taps.remove(tap)


class _Session:
    def __init__(self) -> None:
        self.a, self.b = _Leg(), _Leg()
        self.closed = False

    def leg(self, side: str) -> _Leg:
        return self.a if side == "a" else self.b


class _AsyncOnly:
    """A store without ``get_object_nowait``: the lookup must be awaited in a task."""

    def __init__(self, store) -> None:
        self.store = store

    async def get_object(self, tenant_id, kind, name):
        await asyncio.sleep(0)  # really suspends
        return await self.store.get_object(tenant_id, kind, name)


@pytest.fixture
async def store(tmp_path):
    from node.embedded import open_embedded

    b = open_embedded(tmp_path / "db")
    t = await b.config.create_tenant("acme", "acme.example")
    for n in ("1001", "1002", "1003"):
        await b.config.create_extension(t.id, n, "pw" + n)
    yield SimpleNamespace(config=b.config, tid=t.id)
    b.close()


def _call(store, tmp_path, *, caller="1001", callee="1002", callee_ext=True, answered=None, app=False):
    spawned: list = []
    host = SimpleNamespace(config=store.config, cfg=SimpleNamespace(data_dir=tmp_path), _spawn=spawned.append)
    leg = SimpleNamespace(target=SimpleNamespace(kind="extension", to_value=f"<sip:{answered}@acme.example>")) \
        if answered else None
    call = SimpleNamespace(
        id="cdr-1", host=host, tenant=SimpleNamespace(id=store.tid), invite=SimpleNamespace(call_id="x@y"),
        caller=SimpleNamespace(number=caller, extension=SimpleNamespace(number=caller) if caller else None),
        plan=SimpleNamespace(callee=callee, callee_ext=SimpleNamespace(number=callee) if callee_ext else None),
        answered_leg=leg, state=SimpleNamespace(value="answered"), span=None, recorder=None,
        media=None if app else SimpleNamespace(session=_Session()),
    )
    if app:
        call.ep, call.b_ep = _Leg(), _Leg()
    return call, spawned


async def test_no_setting_costs_no_task_and_no_tap(store, tmp_path):
    call, spawned = _call(store, tmp_path)
    recording.on_answered(call)
    assert spawned == [] and call.recorder is None
    assert call.media.session.a.taps == [] and call.media.session.b.taps == []


@pytest.mark.parametrize("a_doc, b_doc, trigger, toggles, active", [
    (None, {"mode": "always"}, "always", {}, True),
    ({"mode": "on_demand", "toggle": "*9"}, None, "on_demand", {"a": "*9"}, False),
    ({"mode": "on_demand"}, {"mode": "on_demand"}, "on_demand", {"a": "*1", "b": "*1"}, False),
    ({"mode": "always"}, {"mode": "never"}, None, None, None),
])
async def test_policy_applied_at_once_from_the_view(store, tmp_path, a_doc, b_doc, trigger, toggles, active):
    for ext, doc in (("1001", a_doc), ("1002", b_doc)):
        if doc is not None:
            await recording.put(store.config, store.tid, ext, doc)
    call, spawned = _call(store, tmp_path)
    before = REGISTRY.get_sample_value("hivepbx_recorded_calls")
    recording.on_answered(call)  # no await between: the tap is there before the next packet
    assert spawned == []
    rec = call.recorder
    if trigger is None:
        assert rec is None and call.media.session.a.taps == []
        return
    assert (rec.trigger, rec.toggles, rec.active, rec.answered_by) == (trigger, toggles, active, None)
    assert len(call.media.session.a.taps) == 1 and len(call.media.session.b.taps) == 1
    assert REGISTRY.get_sample_value("hivepbx_recorded_calls") == before + 1
    recording.on_call_ended(call)
    assert call.recorder is None and call.media.session.a.taps == []
    assert REGISTRY.get_sample_value("hivepbx_recorded_calls") == before
    await recording.drain()
    assert len(recording.list_recordings(tmp_path, store.tid)) == (1 if active else 0)


async def test_b_side_found_from_the_answered_leg(store, tmp_path):
    """A call to a number that is no extension (a hunt group) answered by 1003: 1003's policy,
    and the file says who answered."""
    await recording.put(store.config, store.tid, "1003", {"mode": "always"})
    call, spawned = _call(store, tmp_path, callee="600", callee_ext=False, answered="1003")
    recording.on_answered(call)
    assert spawned == [] and call.recorder.trigger == "always" and call.recorder.answered_by == "1003"
    recording.on_call_ended(call)
    await recording.drain()


async def test_node_answered_call_taps_its_endpoints_once(store, tmp_path):
    await recording.put(store.config, store.tid, "1003", {"mode": "on_demand"})
    call, spawned = _call(store, tmp_path, callee="500", callee_ext=True, answered="1003", app=True)
    recording.on_app_bridged(call)
    rec = call.recorder
    assert spawned == [] and (rec.trigger, rec.toggles, rec.answered_by) == ("on_demand", {"b": "*1"}, "1003")
    assert len(call.ep.taps) == 1 and len(call.b_ep.taps) == 1
    recording.on_app_bridged(call)  # already recorded: not tapped twice
    assert call.recorder is rec and len(call.ep.taps) == 1
    recording.on_call_ended(call)
    assert call.ep.taps == [] and call.b_ep.taps == []


async def test_ended_call_or_closed_session_is_not_tapped(store, tmp_path):
    await recording.put(store.config, store.tid, "1002", {"mode": "always"})
    call, _ = _call(store, tmp_path)
    call.state.value = "ended"
    recording.on_answered(call)
    assert call.recorder is None
    call, _ = _call(store, tmp_path)
    call.media.session.closed = True
    recording.on_answered(call)
    assert call.recorder is None and call.media.session.a.taps == []


async def test_errors_are_logged_not_raised(store, tmp_path, caplog):
    call, spawned = _call(store, tmp_path)

    def broken(*_):
        raise RuntimeError("view gone")

    call.host.config = SimpleNamespace(get_object_nowait=broken)
    recording.on_answered(call)  # does not raise into the call's answer path
    assert "call recording setup failed (call cdr-1)" in caplog.text and "view gone" in caplog.text
    caplog.clear()
    call, _ = _call(store, tmp_path)
    call.tenant.id = -1  # no such tenant directory: the Recorder refuses
    call.host.config = SimpleNamespace(get_object_nowait=lambda *_: {"mode": "always"})
    recording.on_answered(call)
    assert call.recorder is None and "call recording setup failed" in caplog.text


async def test_store_without_nowait_read_is_awaited_in_a_task(store, tmp_path, caplog):
    await recording.put(store.config, store.tid, "1002", {"mode": "always"})
    call, spawned = _call(store, tmp_path)
    call.host.config = _AsyncOnly(store.config)
    recording.on_answered(call)
    assert call.recorder is None and len(spawned) == 1
    await asyncio.create_task(spawned[0])
    assert call.recorder.trigger == "always" and call.recorder.active
    recording.on_call_ended(call)
    await recording.drain()
    # and an error there is logged by the task itself, not left to the task's done callback
    call, spawned = _call(store, tmp_path)
    call.host.config = _AsyncOnly(None)
    recording.on_answered(call)
    caplog.clear()
    await asyncio.create_task(spawned[0])  # does not raise
    assert "call recording setup failed (call cdr-1)" in caplog.text and call.recorder is None
