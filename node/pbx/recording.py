"""Call recording of bridged calls: per extension (feature objects kind 'recording', named by
the extension number), tapped from the relay, written as stereo WAV per tenant.

Calls the node answers first and bridges onward (IVR -> extension, queue -> agent, a hunt
group or directory reached from an application: node/pbx/app_call.py) are recorded the same
way, tapped from the node's own two media endpoints instead of the relay: the A endpoint
hears the caller, the B endpoint the party that answered. The B side's policy is that of
the extension that answered (not of the IVR or queue number dialled), and the file names the
call's one CDR like any other recording (``cdr_id``; ``answered_by`` the extension reached).

    {"mode": "always"}      every answered call of the extension is recorded
    {"mode": "never"}       never (wins over the other party's "always": it opted out)
    {"mode": "on_demand", "toggle": "*1"}   the extension's user presses *1 during the call to
                                            start, again to stop (each start makes one file)

Precedence over the two parties of a call: any "never" → nothing; else any "always" → the
whole call; else "on_demand" parties' keys toggle it. Only the keys of an on_demand party's
own side count (a caller from outside cannot switch an employee's recording).

Taps cost only recorded calls: a plain call's relay sockets never run tap code
(node/rtp_engine/relay.py ``add_tap`` swaps the socket's class; a media endpoint loops over
an empty tuple). A tap stores raw payloads
with their arrival time; decoding and writing happen once, in a thread, when a segment
ends. Keys are the RFC 4733 events the phones send, seen by the relay on the way through
(they are still relayed: the other party's phone ignores stray events).

Files: ``<data_dir>/recordings/<tenant_id>/<YYYYmmdd-HHMMSS>-<id>-<n>.wav`` — 8 kHz 16-bit
stereo, left = the caller (A side), right = the callee (B side), aligned by arrival time —
with a ``.json`` beside it (call id, CDR id, caller, callee, start, seconds, trigger).
``hivepbx rec list TENANT`` / ``rec del TENANT FILE``; a tenant only ever sees its own
directory (the id is the one the node resolved, file names are checked against a pattern).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
import wave
from pathlib import Path

import numpy as np
from prometheus_client import Counter, Gauge

from node.config_rules import ConfigError
from node.media import g711
from node.media.dtmf import TelephoneEventReceiver, parse_telephone_event
from node.media.errors import MediaError

log = logging.getLogger("hivepbx.recording")

KIND = "recording"
MODES = ("always", "never", "on_demand")
DEFAULT_TOGGLE = "*1"
_TOGGLE = re.compile(r"[*#][0-9]{1,3}\Z|[0-9*#]{2,4}\Z")
_FILE = re.compile(r"[0-9]{8}-[0-9]{6}-[0-9a-f]{8}-[0-9]{1,3}\.wav\Z")
#: one segment's cap (packets per side): an hour
_MAX_PACKETS = 50 * 3600
#: a chunk arriving less than this late (samples) is played right after the previous one
_JOIN = 800
RECORDED_CALLS = Gauge("hivepbx_recorded_calls", "Bridged calls whose legs are tapped for recording now")
RECORDINGS = Counter("hivepbx_recordings", "Recording files written, by result", ["result"])
_WRITTEN, _FAILED = RECORDINGS.labels("written"), RECORDINGS.labels("failed")
#: segment files being written (awaited at shutdown so no recording is lost)
_PENDING: set[asyncio.Future] = set()


# ------------------------------------------------------------------ configuration
def validate(doc: object) -> dict:
    if not isinstance(doc, dict):
        raise ConfigError('a recording setting is a JSON object such as {"mode": "always"}')
    extra = set(doc) - {"mode", "toggle"}
    if extra:
        raise ConfigError(f"unknown recording key(s) {', '.join(sorted(extra))} (allowed: mode, toggle)")
    mode = doc.get("mode")
    if mode not in MODES:
        raise ConfigError(f"recording mode must be one of {', '.join(MODES)}, not {mode!r}")
    out = {"mode": mode}
    if mode == "on_demand":
        toggle = doc.get("toggle", DEFAULT_TOGGLE)
        if not isinstance(toggle, str) or not _TOGGLE.match(toggle):
            raise ConfigError(f"recording toggle {toggle!r}: 2-4 keys of 0-9, * and #, such as *1")
        out["toggle"] = toggle
    elif "toggle" in doc:
        raise ConfigError("a recording toggle only makes sense with mode on_demand")
    return out


async def put(config, tenant_id: int, extension: str, doc: object) -> dict:
    out = validate(doc)
    if await config.get_extension(tenant_id, extension) is None:
        raise ConfigError(f"no extension {extension} in this tenant", 404)
    await config.put_object(tenant_id, KIND, extension, out)
    return out


def policy(a: dict | None, b: dict | None) -> tuple[str, dict[str, str]]:
    """('always' | 'on_demand' | 'off', {side: toggle keys}) for the settings of the two sides."""
    docs = {"a": a, "b": b}
    modes = {s: d.get("mode") for s, d in docs.items() if d}
    if "never" in modes.values():
        return "off", {}
    if "always" in modes.values():
        return "always", {}
    toggles = {s: docs[s].get("toggle", DEFAULT_TOGGLE) for s, m in modes.items() if m == "on_demand"}  # type: ignore[union-attr]
    return ("on_demand", toggles) if toggles else ("off", {})


# ------------------------------------------------------------------ files
def tenant_dir(data_dir: str | Path, tenant_id: int) -> Path:
    if isinstance(tenant_id, bool) or not isinstance(tenant_id, int) or tenant_id < 0:
        raise ConfigError(f"bad tenant id {tenant_id!r}")
    return Path(data_dir) / "recordings" / str(tenant_id)


def list_recordings(data_dir: str | Path, tenant_id: int) -> list[dict]:
    d = tenant_dir(data_dir, tenant_id)
    out = []
    for meta in sorted(d.glob("*.json")) if d.exists() else ():
        try:
            doc = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and _FILE.match(str(doc.get("file", ""))) and (d / doc["file"]).exists():
            out.append(doc)
    return sorted(out, key=lambda r: (r.get("start", 0), r["file"]))


def recording_path(data_dir: str | Path, tenant_id: int, name: str) -> Path:
    if not isinstance(name, str) or not _FILE.match(name):
        raise ConfigError(f"{name!r} is not a recording file name (see `hivepbx rec list`)")
    return tenant_dir(data_dir, tenant_id) / name


def delete_recording(data_dir: str | Path, tenant_id: int, name: str) -> bool:
    p = recording_path(data_dir, tenant_id, name)
    found = p.exists()
    p.unlink(missing_ok=True)
    p.with_suffix(".json").unlink(missing_ok=True)
    return found


def _place(chunks: list[tuple[float, int, bytes]], t0: float) -> np.ndarray:
    """One side's payloads laid out on the segment's timeline by arrival time: packets that
    follow each other closely are joined (network jitter is no gap), a real gap is silence."""
    parts: list[tuple[int, np.ndarray]] = []
    end = 0
    for t, pt, payload in chunks:
        pcm = g711.decode(pt, payload)
        ideal = int(round((t - t0) * 8000))
        pos = end if ideal < end + _JOIN else ideal
        parts.append((pos, pcm))
        end = pos + len(pcm)
    out = np.zeros(end, dtype=np.int16)
    for pos, pcm in parts:
        out[pos:pos + len(pcm)] = pcm
    return out


def write_stereo(path: Path, left: np.ndarray, right: np.ndarray) -> None:
    n = max(len(left), len(right))
    frames = np.zeros((n, 2), dtype="<i2")
    frames[: len(left), 0] = left
    frames[: len(right), 1] = right
    tmp = path.with_name(f".{path.name}.part")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(frames.tobytes())
    tmp.replace(path)


def _write_segment(path: Path, meta: dict, t0: float, a: list, b: list) -> None:
    left, right = _place(a, t0), _place(b, t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_stereo(path, left, right)
    meta["seconds"] = round(max(len(left), len(right)) / 8000, 2)
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(meta, sort_keys=True))
    tmp.replace(path.with_suffix(".json"))


# ------------------------------------------------------------------ a call being recorded
class Recorder:
    """Taps both legs of one call (``session.leg('a' | 'b')``: relay legs, or the node's own
    endpoints, anything with ``add_tap``/``remove_tap``). ``start``/``stop`` a segment;
    ``close`` at the end."""

    def __init__(self, call, session, data_dir: str | Path, trigger: str, toggles: dict[str, str]) -> None:
        self.call = call
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.dir = tenant_dir(data_dir, call.tenant.id)
        self.trigger = trigger
        self.toggles = toggles
        self.active = False
        self.segments = 0
        self.files: list[str] = []
        #: the extension that answered, when it is not the number dialled (node-answered calls)
        self.answered_by: str | None = None
        self._id = secrets.token_hex(4)
        self._t0 = 0.0
        self._wall0 = 0.0
        self._chunks: dict[str, list] = {"a": [], "b": []}
        self._rx = {s: TelephoneEventReceiver() for s in toggles}
        self._keys = dict.fromkeys(toggles, "")
        self._taps = {s: self._tap_for(s) for s in ("a", "b")}
        for s, tap in self._taps.items():
            session.leg(s).add_tap(tap)
        self._open = True
        RECORDED_CALLS.inc()

    def _tap_for(self, side: str):
        chunks = self._chunks
        watch = side in self.toggles

        def tap(data: bytes) -> None:
            if len(data) < 13 or data[0] != 0x80:
                return  # RTCP never arrives here; CSRCs/extensions: not from the phones we serve
            pt = data[1] & 0x7F
            if pt == 0 or pt == 8:
                if self.active:
                    c = chunks[side]
                    if len(c) < _MAX_PACKETS:
                        c.append((self.loop.time(), pt, data[12:]))
                return
            if watch and pt >= 96 and len(data) >= 16:
                self._event(side, data)

        return tap

    def _event(self, side: str, data: bytes) -> None:
        try:
            ev = parse_telephone_event(memoryview(data)[12:16])
        except MediaError:
            return
        digit = self._rx[side].feed(int.from_bytes(data[4:8], "big"), ev)
        if digit is None:
            return
        toggle = self.toggles[side]
        keys = (self._keys[side] + digit)[-len(toggle):]
        if keys == toggle:
            self._keys[side] = ""
            if self.active:
                self.stop()
            else:
                self.start()
            log.info("recording toggled %s by side %s of call %s", "on" if self.active else "off", side, self.call.id)
        else:
            self._keys[side] = keys

    def start(self) -> None:
        if self.active:
            return
        self.active = True
        self._t0 = self.loop.time()
        self._wall0 = time.time()
        self._chunks["a"].clear()
        self._chunks["b"].clear()

    def stop(self) -> None:
        if not self.active:
            return
        self.active = False
        self.segments += 1
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self._wall0))
        name = f"{stamp}-{self._id}-{self.segments}.wav"
        call = self.call
        meta = {"file": name, "call_id": call.invite.call_id, "cdr_id": call.id, "caller": call.caller.number,
                "callee": call.plan.callee, "start": round(self._wall0, 3), "trigger": self.trigger,
                "channels": "stereo: left caller, right callee"}
        if self.answered_by is not None:
            meta["answered_by"] = self.answered_by
        a, b = list(self._chunks["a"]), list(self._chunks["b"])
        self._chunks["a"].clear()
        self._chunks["b"].clear()
        self.files.append(name)
        fut = self.loop.run_in_executor(None, _write_segment, self.dir / name, meta, self._t0, a, b)
        _PENDING.add(fut)
        fut.add_done_callback(_written)

    def close(self) -> None:
        self.stop()
        if self._open:
            self._open = False
            RECORDED_CALLS.dec()
        for s, tap in self._taps.items():
            self.session.leg(s).remove_tap(tap)


def _written(fut: asyncio.Future) -> None:
    _PENDING.discard(fut)
    if not fut.cancelled() and fut.exception() is not None:
        _FAILED.inc()
        log.error("a call recording could not be written: %s", fut.exception())
    else:
        _WRITTEN.inc()


async def drain() -> None:
    """Wait for recordings still being written (node shutdown)."""
    while _PENDING:
        await asyncio.gather(*list(_PENDING), return_exceptions=True)


# ------------------------------------------------------------------ hooks from node/pbx/call.py
def _extension_of_target(target) -> str | None:
    if target is None or target.kind != "extension":
        return None
    m = re.match(r"<sip:([0-9]{2,10})@", target.to_value or "")
    return m.group(1) if m else None


def on_answered(call) -> None:
    """A bridged call was answered: look up both parties' settings and tap if needed."""
    session = getattr(call.media, "session", None)
    if session is not None:
        _lookup(call, session)


def _lookup(call, session) -> None:
    """Both parties' settings, then ``_apply``. Read at once from the store's in-memory view
    when it offers one (node/ports.py ``get_object_nowait``): most answered calls have no
    setting, and a task per call for two dict lookups cost about 3 % of the node's CPU per
    call. A store without it is awaited in a task. Errors are logged, never raised."""
    try:
        get = getattr(call.host.config, "get_object_nowait", None)
        if get is None:
            call.host._spawn(_setup(call, session))
            return
        a_ext, b_ext = _parties(call, session)
        tid = call.tenant.id
        a = get(tid, KIND, a_ext) if a_ext else None
        b = get(tid, KIND, b_ext) if b_ext else None
        if a is not None or b is not None:
            _apply(call, session, b_ext, a, b)
    except Exception:
        log.exception("call recording setup failed (call %s)", getattr(call, "id", "?"))


async def _setup(call, session) -> None:
    try:
        a_ext, b_ext = _parties(call, session)
        config, tid = call.host.config, call.tenant.id
        a = await config.get_object(tid, KIND, a_ext) if a_ext else None
        b = await config.get_object(tid, KIND, b_ext) if b_ext else None
        _apply(call, session, b_ext, a, b)
    except Exception:
        log.exception("call recording setup failed (call %s)", getattr(call, "id", "?"))


def _parties(call, session) -> tuple[str | None, str | None]:
    """The extensions whose settings count: the caller's, and the one that answered."""
    a_ext = call.caller.extension.number if call.caller.extension is not None else None
    if isinstance(session, _EndpointLegs):
        # the node answered (an IVR, a queue): the B side is whoever answered the transfer
        b_ext = _extension_of_target(call.answered_leg.target) if call.answered_leg is not None else None
    else:
        b_ext = call.plan.callee_ext.number if call.plan.callee_ext is not None else None
        if b_ext is None and call.answered_leg is not None:
            b_ext = _extension_of_target(call.answered_leg.target)
    return a_ext, b_ext


def _apply(call, session, b_ext: str | None, a: dict | None, b: dict | None) -> None:
    trigger, toggles = policy(a, b)
    if trigger == "off" or session.closed or call.state.value == "ended":
        return
    rec = call.recorder = Recorder(call, session, call.host.cfg.data_dir, trigger, toggles)
    if b_ext is not None and b_ext != call.plan.callee:
        rec.answered_by = b_ext
    if trigger == "always":
        rec.start()
    if getattr(call, "span", None) is not None:
        call.span.set_attribute("hivepbx.recording", trigger)
    log.info("call %s recording %s", call.id, trigger)


class _EndpointLegs:
    """The two media endpoints of a node-answered call bridged onward, as the Recorder's
    ``session``: A hears the caller, B the party that answered."""

    __slots__ = ("a", "b")

    def __init__(self, a, b) -> None:
        self.a, self.b = a, b

    def leg(self, side: str):
        return self.a if side == "a" else self.b

    @property
    def closed(self) -> bool:
        return self.a.closed or self.b.closed


def on_app_bridged(call) -> None:
    """A call the node answered (node/pbx/app_call.py) was bridged to the party that answered
    a transfer: the same policy lookup as ``on_answered``, tapping the node's endpoints."""
    a, b = getattr(call, "ep", None), getattr(call, "b_ep", None)
    if a is None or b is None or getattr(call, "recorder", None) is not None:
        return
    _lookup(call, _EndpointLegs(a, b))


def on_call_ended(call) -> None:
    rec: Recorder | None = getattr(call, "recorder", None)
    if rec is not None:
        call.recorder = None
        rec.close()
