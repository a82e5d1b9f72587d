"""baresip as a phone: headless, driven over its ctrl_tcp JSON interface, bounded in time.

Each instance gets its own config directory: SIP and RTP on 127.0.0.1 only (and a DNS server
on loopback, so nothing leaves the machine), G.711 only, a generated tone as microphone
(aufile) and the sndfile filter recording what is heard to ``rec/dump-*-dec.wav``.  The
account is added with ``uanew`` after the control connection is up, so no event (a
registration's REGISTER_OK above all) can be missed.

    async with Baresip("1001@acme.test", "secret", registrar="127.0.0.1:5060",
                       tone_hz=440, workdir=tmp_path / "a") as a:
        await a.wait_registered()
        await a.dial("sip:1002@acme.test")
        await a.wait_call_established()
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.peers import procs
from tests.peers.audio import write_tone
from tests.peers.net import LOOPBACK, free_port

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULE_PATH = "/usr/lib/baresip/modules"


class BaresipError(Exception):
    """baresip refused a command, died, or an awaited event did not come in time."""


class Baresip:
    """One baresip user agent.

    ``account`` is "user@domain".  With ``registrar`` ("host:port") it registers there with
    digest ``password`` and sends everything through it (outbound proxy); without, it is a
    plain UA at ``sip:user@127.0.0.1:<sip_port>`` that can be dialled directly.
    """

    def __init__(
        self,
        account: str,
        password: str | None = None,
        registrar: str | None = None,
        *,
        tone_hz: float = 440.0,
        workdir: Path | None = None,
        auto_answer: bool = False,
        transport: str = "udp",
        regint: int = 3600,
        tone_seconds: float = 120.0,
        timeout: float = 10.0,
        lifetime: float = 300.0,
    ) -> None:
        if "@" not in account:
            raise ValueError(f"account must be user@domain, got {account!r}")
        self.user, self.domain = account.split("@", 1)
        self.password = password
        self.registrar = registrar
        self.tone_hz = tone_hz
        self.auto_answer = auto_answer
        self.transport = transport
        self.regint = regint if registrar else 0
        self.timeout = timeout  # default for every wait_* and for commands
        self.lifetime = lifetime  # baresip is killed after this long, whatever happens
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="baresip-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.recordings_dir = self.workdir / "rec"
        self.tone_path = self.workdir / f"tone-{tone_hz:g}hz.wav"
        self.log_path = self.workdir / "baresip.log"
        self._tone_seconds = tone_seconds
        self.sip_port = free_port(LOOPBACK, span=2)  # SIP/TLS takes sip_port + 1
        self.ctrl_port = free_port(LOOPBACK)
        rtp = free_port(LOOPBACK, span=10)
        self._rtp_ports = (rtp, rtp + 9)
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tokens = itertools.count(1)
        self._proc: asyncio.subprocess.Process | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._log_f = None

    # -- set-up ----------------------------------------------------------------------------

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def uri(self) -> str:
        """Where to dial this UA directly (no registrar in between)."""
        return f"sip:{self.user}@{LOOPBACK}:{self.sip_port}"

    def account_line(self) -> str:
        params = [f"answermode={'auto' if self.auto_answer else 'manual'}", "audio_codecs=pcmu,pcma"]
        params.append(f"regint={self.regint}")
        if self.password is not None:
            params.append(f"auth_pass={self.password}")
        if self.registrar:
            params.append(f'outbound="sip:{self.registrar};transport={self.transport}"')
        return f"<{self.aor};transport={self.transport}>;" + ";".join(params)

    def _config(self) -> str:
        lines = {
            "poll_method": "epoll",
            "sip_listen": f"{LOOPBACK}:{self.sip_port}",
            "net_interface": LOOPBACK,
            "dns_server": f"{LOOPBACK}:53",
            "call_local_timeout": "120",
            "call_max_calls": "4",
            "audio_player": "alsa,null",
            "audio_alert": "alsa,null",
            "audio_source": f"aufile,{self.tone_path}",
            "audio_level": "no",
            "rtp_ports": f"{self._rtp_ports[0]}-{self._rtp_ports[1]}",
            "rtcp_mux": "no",
            "jitter_buffer_delay": "1-5",
            "module_path": MODULE_PATH,
            "statmode_default": "off",
            "ctrl_tcp_listen": f"{LOOPBACK}:{self.ctrl_port}",
            "snd_path": str(self.recordings_dir),
        }
        modules = ["module g711.so", "module aufile.so", "module alsa.so", "module sndfile.so",
                   "module_tmp account.so", "module_app menu.so", "module_app ctrl_tcp.so"]
        return "\n".join([f"{k}\t{v}" for k, v in lines.items()] + modules) + "\n"

    async def start(self) -> Baresip:
        """Write the config, start baresip, connect to ctrl_tcp and create the account."""
        if self._proc is not None:
            raise RuntimeError("already started")
        self.recordings_dir.mkdir(exist_ok=True)
        write_tone(self.tone_path, self.tone_hz, self._tone_seconds)
        (self.workdir / "config").write_text(self._config())
        (self.workdir / "accounts").write_text("")
        (self.workdir / "contacts").write_text("")
        self._log_f = open(self.log_path, "wb")
        self._proc = await asyncio.create_subprocess_exec(
            "timeout", "--kill-after=5", f"{self.lifetime:g}", BARESIP, "-f", str(self.workdir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log_f,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        procs.track(self._proc.pid)
        try:
            await self._connect()
            await self.command("uanew", self.account_line())
        except BaseException:
            await self.stop()
            raise
        return self

    async def _connect(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self._proc is None or self._proc.returncode is not None:
                raise BaresipError(f"baresip exited at start-up:\n{self.log()}")
            try:
                reader, self._writer = await asyncio.open_connection(LOOPBACK, self.ctrl_port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BaresipError(f"no ctrl_tcp on port {self.ctrl_port}:\n{self.log()}")
                await asyncio.sleep(0.05)
        self._reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        """Netstrings ("<len>:<json>,") of responses and events."""
        try:
            while True:
                length = await reader.readuntil(b":")
                payload = await reader.readexactly(int(length[:-1]))
                await reader.readexactly(1)  # the ","
                msg = json.loads(payload)
                if msg.get("response"):
                    fut = self._pending.pop(str(msg.get("token")), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                elif msg.get("event"):
                    self.events.append(msg)
                    self._changed.set()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(BaresipError("control connection closed"))
            self._changed.set()

    # -- commands --------------------------------------------------------------------------

    async def command(self, name: str, params: str = "") -> str:
        """Run a baresip command (as in its menu: dial, accept, hangup, reginfo, ...);
        returns its text output, raises BaresipError if it failed."""
        if self._writer is None:
            raise BaresipError("not started")
        token = str(next(self._tokens))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[token] = fut
        body = json.dumps({"command": name, "params": params, "token": token}).encode()
        self._writer.write(str(len(body)).encode() + b":" + body + b",")
        await self._writer.drain()
        try:
            reply = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            raise BaresipError(f"no reply to {name!r} within {self.timeout}s") from None
        finally:
            self._pending.pop(token, None)
        if not reply.get("ok"):
            raise BaresipError(f"{name} {params!r} failed: {reply.get('data')!r}")
        return str(reply.get("data", ""))

    async def dial(self, uri: str) -> None:
        """Call ``uri`` ("sip:1002@acme.test", or a bare number completed with the domain)."""
        await self.command("dial", uri)

    async def answer(self) -> None:
        await self.command("accept")

    async def hangup(self) -> None:
        await self.command("hangup")

    async def hold(self) -> None:
        await self.command("hold")

    async def resume(self) -> None:
        await self.command("resume")

    async def send_dtmf(self, digits: str) -> None:
        for digit in digits:
            await self.command("sndcode", digit)

    # -- events ----------------------------------------------------------------------------

    async def wait_event(self, *types: str, timeout: float | None = None) -> dict[str, Any]:
        """The oldest event of one of ``types`` not returned before (events that came before
        the call count: nothing is missed).  Raises BaresipError after ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for i, ev in enumerate(self.events):
                if i not in self._consumed and ev.get("type") in types:
                    self._consumed.add(i)
                    return ev
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [e.get("type") for e in self.events]
                raise BaresipError(f"{self.user}: no {'/'.join(types)} event; events so far: {seen}")
            if self._proc is None or self._proc.returncode is not None:
                raise BaresipError(f"{self.user}: baresip exited:\n{self.log()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_registered(self, timeout: float | None = None) -> dict[str, Any]:
        ev = await self.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=timeout)
        if ev["type"] != "REGISTER_OK":
            raise BaresipError(f"{self.user}: registration failed: {ev.get('param')!r}")
        return ev

    async def wait_registration_failed(self, timeout: float | None = None) -> dict[str, Any]:
        ev = await self.wait_event("REGISTER_OK", "REGISTER_FAIL", timeout=timeout)
        if ev["type"] != "REGISTER_FAIL":
            raise BaresipError(f"{self.user}: registration unexpectedly succeeded")
        return ev

    async def wait_incoming(self, timeout: float | None = None) -> dict[str, Any]:
        """A CALL_INCOMING; its ``peeruri`` is the caller."""
        return await self.wait_event("CALL_INCOMING", timeout=timeout)

    async def wait_ringing(self, timeout: float | None = None) -> dict[str, Any]:
        return await self.wait_event("CALL_RINGING", "CALL_PROGRESS", timeout=timeout)

    async def wait_call_established(self, timeout: float | None = None) -> dict[str, Any]:
        ev = await self.wait_event("CALL_ESTABLISHED", "CALL_CLOSED", timeout=timeout)
        if ev["type"] != "CALL_ESTABLISHED":
            raise BaresipError(f"{self.user}: call closed before it was established: {ev.get('param')!r}")
        return ev

    async def wait_call_closed(self, timeout: float | None = None) -> dict[str, Any]:
        """A CALL_CLOSED; its ``param`` is the reason ("486 Busy Here", "Connection reset by
        peer" for the far end's BYE, ...)."""
        return await self.wait_event("CALL_CLOSED", timeout=timeout)

    # -- audio -----------------------------------------------------------------------------

    def recordings(self) -> list[Path]:
        """What this UA heard, one WAV per call, oldest first."""
        return sorted(self.recordings_dir.glob("dump-*-dec.wav"), key=lambda p: (p.stat().st_mtime, p.name))

    @property
    def recorded_wav_path(self) -> Path | None:
        """The recording of the latest call (complete once that call is closed)."""
        found = self.recordings()
        return found[-1] if found else None

    async def wait_recording(self, timeout: float | None = None) -> Path:
        """The latest recording once its WAV header is final (sndfile writes it on close)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            path = self.recorded_wav_path
            if path is not None and _wav_complete(path):
                return path
            if time.monotonic() > deadline:
                raise BaresipError(f"{self.user}: no complete recording in {self.recordings_dir}")
            await asyncio.sleep(0.05)

    # -- life-cycle ------------------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    async def stop(self, grace: float = 3.0) -> None:
        """Quit (baresip un-registers), then SIGTERM, then SIGKILL; always returns."""
        proc = self._proc
        if proc is not None and proc.returncode is None and self._writer is not None:
            try:
                await asyncio.wait_for(self.command("quit"), 1.0)
            except (BaresipError, asyncio.TimeoutError, ConnectionError):
                pass
        if proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if proc.returncode is not None:
                    break
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                    break
                except asyncio.TimeoutError:
                    procs.kill_group(proc.pid, sig)
            if proc.returncode is None:
                await proc.wait()
            procs.untrack(proc.pid)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):
                pass
            self._reader_task = None
        if self._log_f is not None:
            self._log_f.close()
            self._log_f = None

    async def __aenter__(self) -> Baresip:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _wav_complete(path: Path) -> bool:
    """True once the RIFF size field matches the file (the writer has closed it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    return len(head) == 8 and head[:4] == b"RIFF" and int.from_bytes(head[4:8], "little") + 8 == size and size > 44
