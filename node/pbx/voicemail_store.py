"""Where voicemail messages and greetings live: behind ``MailboxStore``, so a cluster can put
them on shared storage (an object store, a replicated file system) by implementing the same
methods; ``FileMailboxStore`` keeps them under the node's data directory.

Layout (one directory per tenant and mailbox; the tenant part is the numeric id the node
resolved, the mailbox an extension number checked by ``box_name``, never free text):

    voicemail/<tenant_id>/<mailbox>/<msg_id>.wav       8 kHz mono 16-bit PCM
    voicemail/<tenant_id>/<mailbox>/<msg_id>.json      {"caller", "caller_name", "time", "duration", "status"}
    voicemail/<tenant_id>/<mailbox>/greeting-<kind>.wav  unavailable / busy / temporary
    voicemail/<tenant_id>/<mailbox>/.rec-<msg_id>.raw  a recording in progress (see below)

Never lost: every file is written to a temporary name, fsync'd and renamed, the WAV before
its JSON (a message exists once its JSON does). A recording in progress is appended to its
``.raw`` file every second (``Checkpoint``); after a crash ``recover`` turns every such file
holding at least a second of audio into a message (status new, ``recovered``: true).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from node.config_rules import ConfigError
from node.media.wav import RATE, WavFormatError, read_wav

log = logging.getLogger("hivepbx.voicemail")

GREETINGS = ("unavailable", "busy", "temporary")
STATUSES = ("new", "saved")
#: shorter recordings are not messages (a caller who hung up at the beep)
MIN_SECONDS = 1.0
_BOX = re.compile(r"[0-9]{2,10}\Z")
_MSG_ID = re.compile(r"[0-9]{10}-[0-9a-f]{8}\Z")


def box_name(value: object) -> str:
    if not isinstance(value, str) or not _BOX.match(value):
        raise ConfigError(f"mailbox {value!r}: a mailbox is named by its extension number (2-10 digits)")
    return value


def greeting_kind(value: object) -> str:
    if value not in GREETINGS:
        raise ConfigError(f"greeting {value!r}: use one of {', '.join(GREETINGS)}")
    return str(value)


@dataclass(slots=True)
class Message:
    id: str
    caller: str
    caller_name: str
    time: float
    duration: float
    status: str = "new"
    urgent: bool = False
    recovered: bool = False
    #: where its audio is (FileMailboxStore: the WAV file)
    path: str = ""

    def meta(self) -> dict:
        d = asdict(self)
        d.pop("path")
        d.pop("id")
        return d


class MailboxStore(Protocol):
    """What voicemail needs from storage. All methods are blocking (the node calls the slow
    ones in a thread); ``tenant_id`` always comes from the node, never from the caller."""

    def save_message(self, tenant_id: int, box: str, samples: np.ndarray, caller: str, caller_name: str,
                     when: float | None = None, msg_id: str | None = None) -> Message | None: ...
    def messages(self, tenant_id: int, box: str) -> list[Message]: ...
    def counts(self, tenant_id: int, box: str) -> tuple[int, int]: ...
    def set_status(self, tenant_id: int, box: str, msg_id: str, status: str) -> bool: ...
    def delete(self, tenant_id: int, box: str, msg_id: str) -> bool: ...
    def greeting(self, tenant_id: int, box: str, kind: str) -> Path | None: ...
    def save_greeting(self, tenant_id: int, box: str, kind: str, samples: np.ndarray) -> Path: ...
    def delete_greeting(self, tenant_id: int, box: str, kind: str) -> bool: ...
    def checkpoint(self, tenant_id: int, box: str, caller: str, caller_name: str) -> "Checkpoint": ...
    def recover(self) -> list[tuple[int, str, Message]]: ...


def new_message_id(now: float | None = None) -> str:
    return f"{int(now if now is not None else time.time()):010d}-{secrets.token_hex(4)}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _wav_bytes(samples: np.ndarray) -> bytes:
    import io
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Checkpoint:
    """A recording in progress, appended to disk as it arrives so a crash keeps it."""

    def __init__(self, store: "FileMailboxStore", tenant_id: int, box: str, caller: str, caller_name: str) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.box = box
        self.msg_id = new_message_id()
        self.started = time.time()
        d = store.box_dir(tenant_id, box)
        d.mkdir(parents=True, exist_ok=True)
        self.raw = d / f".rec-{self.msg_id}.raw"
        self.meta = d / f".rec-{self.msg_id}.json"
        _write_atomic(self.meta, json.dumps({"caller": caller, "caller_name": caller_name,
                                             "time": self.started}).encode())
        self._f = open(self.raw, "ab")
        self.written = 0

    def append(self, frames: list[np.ndarray]) -> None:
        """Write ``frames[self.written:]`` (the recording's list so far) and fsync."""
        new = frames[self.written:]
        if not new or self._f.closed:
            return
        self._f.write(np.concatenate(new).astype("<i2").tobytes())
        self._f.flush()
        os.fsync(self._f.fileno())
        self.written += len(new)

    def discard(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.raw.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)


class FileMailboxStore:
    """``MailboxStore`` on the local file system (one node, or a shared mount)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "voicemail"
        self._counts: dict[tuple[int, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def box_dir(self, tenant_id: int, box: str) -> Path:
        if isinstance(tenant_id, bool) or not isinstance(tenant_id, int) or tenant_id < 0:
            raise ConfigError(f"bad tenant id {tenant_id!r}")
        return self.root / str(tenant_id) / box_name(box)

    # ---------------------------------------------------------------- messages
    def save_message(self, tenant_id: int, box: str, samples: np.ndarray, caller: str, caller_name: str,
                     when: float | None = None, msg_id: str | None = None, recovered: bool = False) -> Message | None:
        """Store a message (None when shorter than ``MIN_SECONDS``): WAV, then JSON."""
        samples = np.asarray(samples, dtype=np.int16)
        duration = len(samples) / RATE
        if duration < MIN_SECONDS:
            return None
        d = self.box_dir(tenant_id, box)
        d.mkdir(parents=True, exist_ok=True)
        when = time.time() if when is None else when
        msg_id = msg_id or new_message_id(when)
        msg = Message(msg_id, caller, caller_name, when, round(duration, 2), recovered=recovered,
                      path=str(d / f"{msg_id}.wav"))
        _write_atomic(d / f"{msg_id}.wav", _wav_bytes(samples))
        _write_atomic(d / f"{msg_id}.json", json.dumps(msg.meta()).encode())
        _fsync_dir(d)
        self._counts.pop((tenant_id, box), None)
        return msg

    def messages(self, tenant_id: int, box: str) -> list[Message]:
        """Newest first."""
        d = self.box_dir(tenant_id, box)
        out = []
        if not d.exists():
            return out
        for p in d.glob("*.json"):
            if not _MSG_ID.match(p.stem) or not (d / f"{p.stem}.wav").exists():
                continue
            try:
                meta = json.loads(p.read_text())
                out.append(Message(p.stem, str(meta.get("caller", "")), str(meta.get("caller_name", "")),
                                   float(meta.get("time", 0)), float(meta.get("duration", 0)),
                                   meta.get("status", "new"), bool(meta.get("urgent", False)),
                                   bool(meta.get("recovered", False)), str(d / f"{p.stem}.wav")))
            except (OSError, ValueError, TypeError):
                log.warning("unreadable voicemail metadata %s", p)
        out.sort(key=lambda m: (m.time, m.id), reverse=True)
        return out

    def counts(self, tenant_id: int, box: str) -> tuple[int, int]:
        """(new, saved) — cached per process; every change through this store refreshes it
        (a shared-storage store for a cluster must also drop it on other nodes' changes)."""
        key = (tenant_id, box)
        c = self._counts.get(key)
        if c is None:
            msgs = self.messages(tenant_id, box)
            c = (sum(m.status == "new" for m in msgs), sum(m.status != "new" for m in msgs))
            self._counts[key] = c
        return c

    def message(self, tenant_id: int, box: str, msg_id: str) -> Message | None:
        if not isinstance(msg_id, str) or not _MSG_ID.match(msg_id):
            return None
        return next((m for m in self.messages(tenant_id, box) if m.id == msg_id), None)

    def set_status(self, tenant_id: int, box: str, msg_id: str, status: str) -> bool:
        if status not in STATUSES:
            raise ConfigError(f"message status {status!r}: use one of {', '.join(STATUSES)}")
        msg = self.message(tenant_id, box, msg_id)
        if msg is None:
            return False
        msg.status = status
        _write_atomic(self.box_dir(tenant_id, box) / f"{msg_id}.json", json.dumps(msg.meta()).encode())
        self._counts.pop((tenant_id, box), None)
        return True

    def delete(self, tenant_id: int, box: str, msg_id: str) -> bool:
        if self.message(tenant_id, box, msg_id) is None:
            return False
        d = self.box_dir(tenant_id, box)
        (d / f"{msg_id}.json").unlink(missing_ok=True)  # first: without it the message is gone
        (d / f"{msg_id}.wav").unlink(missing_ok=True)
        self._counts.pop((tenant_id, box), None)
        return True

    # ---------------------------------------------------------------- greetings
    def greeting(self, tenant_id: int, box: str, kind: str) -> Path | None:
        p = self.box_dir(tenant_id, box) / f"greeting-{greeting_kind(kind)}.wav"
        return p if p.exists() else None

    def save_greeting(self, tenant_id: int, box: str, kind: str, samples: np.ndarray) -> Path:
        d = self.box_dir(tenant_id, box)
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"greeting-{greeting_kind(kind)}.wav"
        _write_atomic(p, _wav_bytes(np.asarray(samples, dtype=np.int16)))
        return p

    def save_greeting_file(self, tenant_id: int, box: str, kind: str, wav: Path) -> Path:
        """A converted 8 kHz WAV (CLI upload) becomes the greeting."""
        try:
            samples = read_wav(wav)
        except WavFormatError as e:
            raise ConfigError(str(e)) from None
        if len(samples) < RATE // 2:
            raise ConfigError(f"{wav} holds less than half a second of audio")
        return self.save_greeting(tenant_id, box, kind, samples)

    def delete_greeting(self, tenant_id: int, box: str, kind: str) -> bool:
        p = self.box_dir(tenant_id, box) / f"greeting-{greeting_kind(kind)}.wav"
        if p.exists():
            p.unlink()
            return True
        return False

    # ---------------------------------------------------------------- crash safety
    def checkpoint(self, tenant_id: int, box: str, caller: str, caller_name: str) -> Checkpoint:
        return Checkpoint(self, tenant_id, box, caller, caller_name)

    def finish(self, cp: Checkpoint, frames: list[np.ndarray]) -> Message | None:
        """The recording ended: store it as a message (if long enough) and drop the checkpoint."""
        samples = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)
        meta = json.loads(cp.meta.read_text()) if cp.meta.exists() else {}
        msg = self.save_message(cp.tenant_id, cp.box, samples, meta.get("caller", ""), meta.get("caller_name", ""),
                                when=cp.started, msg_id=cp.msg_id)
        cp.discard()
        return msg

    def recover(self) -> list[tuple[int, str, Message]]:
        """Recordings a crash interrupted: each with a second or more becomes a message."""
        out = []
        if not self.root.exists():
            return out
        for raw in self.root.glob("*/*/.rec-*.raw"):
            box, tenant = raw.parent.name, raw.parent.parent.name
            msg_id = raw.name[len(".rec-"):-len(".raw")]
            meta_p = raw.with_suffix(".json")
            try:
                tenant_id = int(tenant)
                meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
                data = raw.read_bytes()
                samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
                msg = None
                if _MSG_ID.match(msg_id) and _BOX.match(box):
                    msg = self.save_message(tenant_id, box, samples, str(meta.get("caller", "")),
                                            str(meta.get("caller_name", "")), when=float(meta.get("time", time.time())),
                                            msg_id=msg_id, recovered=True)
            except (OSError, ValueError) as e:
                log.warning("cannot recover voicemail recording %s: %s", raw, e)
                continue
            raw.unlink(missing_ok=True)
            meta_p.unlink(missing_ok=True)
            if msg is not None:
                log.info("recovered an interrupted voicemail recording: tenant %s box %s, %.1f s",
                         tenant_id, box, msg.duration)
                out.append((tenant_id, box, msg))
        return out
