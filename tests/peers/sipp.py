"""SIPp as a peer: runs one of our scenarios (tests/interop/sipp) and reports what happened.

The PBX under test runs in the test's own asyncio loop, so the API is async first
(``await Sipp(...).run()``; ``start()``/``stop()`` for a callee left running in the
background); ``run_sync()`` is for tests without a loop.  Every run is bounded: SIPp gets
``-timeout`` and is killed if it outlives it by a grace period.  Logs land in ``workdir``.
"""

from __future__ import annotations

import asyncio
import csv
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.peers import procs
from tests.peers.net import LOOPBACK, free_port

SIPP = shutil.which("sipp") or "/usr/bin/sipp"
SCENARIOS = Path(__file__).resolve().parent.parent / "interop" / "sipp"

#: seconds a SIPp run may outlive its own -timeout before it is killed
_GRACE = 5.0
_LOG_SEPARATOR = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)[^\n]*\n", re.MULTILINE)
_LOG_HEAD = re.compile(r"^(\w+) message (sent|received)\b")


def scenario_path(name: str | Path) -> Path:
    """``name`` as a path: a bare name (``"uac_call"`` or ``"uac_call.xml"``) is one of ours."""
    path = Path(name)
    if path.is_absolute() or path.parent != Path("."):
        return path
    if path.suffix != ".xml":
        path = path.with_suffix(".xml")
    return SCENARIOS / path


@dataclass(frozen=True, slots=True)
class TracedMessage:
    """One SIP message from SIPp's -trace_msg log."""

    direction: str  # "sent" or "received"
    transport: str  # "UDP", "TCP", ...
    text: str
    at: float = 0.0  # when SIPp logged it (POSIX time, local clock)

    @property
    def first_line(self) -> str:
        return self.text.split("\n", 1)[0].strip()

    @property
    def status(self) -> int | None:
        """The status code of a response, None for a request."""
        m = re.match(r"SIP/2\.0 (\d{3})", self.first_line)
        return int(m.group(1)) if m else None

    @property
    def method(self) -> str:
        """The request method, or for a response the method in its CSeq."""
        if self.status is None:
            return self.first_line.split(" ", 1)[0]
        cseq = self.header("CSeq") or ""
        return cseq.split()[-1] if cseq.split() else ""

    def headers(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive; compact forms not expanded)."""
        head = self.text.split("\n\n", 1)[0]
        prefix = name.lower() + ":"
        return [
            line.split(":", 1)[1].strip()
            for line in head.split("\n")[1:]
            if line.lower().startswith(prefix)
        ]

    def header(self, name: str) -> str | None:
        values = self.headers(name)
        return values[0] if values else None

    @property
    def body(self) -> str:
        parts = self.text.split("\n\n", 1)
        return parts[1] if len(parts) == 2 else ""


def parse_message_log(text: str) -> list[TracedMessage]:
    """The messages of a -trace_msg log, in order (other trace entries are skipped)."""
    out: list[TracedMessage] = []
    parts = _LOG_SEPARATOR.split(text.replace("\r\n", "\n"))
    # parts: [preamble, stamp, chunk, stamp, chunk, ...]
    for stamp, chunk in zip(parts[1::2], parts[2::2]):
        head, _, rest = chunk.partition("\n")
        m = _LOG_HEAD.match(head.strip())
        if not m:
            continue
        at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f" if "." in stamp else "%Y-%m-%d %H:%M:%S")
        out.append(TracedMessage(m.group(2), m.group(1), rest.strip("\n") + "\n", at.timestamp()))
    return out


@dataclass(frozen=True)
class SippResult:
    """What one SIPp run did.  ``successful``/``failed`` count calls of the main scenario."""

    argv: list[str]
    returncode: int | None  # None: had to be killed
    successful: int
    failed: int
    timed_out: bool  # outlived -timeout + grace and was killed
    messages: str  # the -trace_msg log
    errors: str  # the -trace_err log plus SIPp's stderr
    logs: str  # the -trace_logs log (<log> actions)
    stdout: str  # SIPp's screens
    workdir: Path
    traced: list[TracedMessage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Exit code 0, no failed call and at least one successful one."""
        return self.returncode == 0 and self.failed == 0 and self.successful > 0

    def received(self, what: str | int | None = None) -> list[TracedMessage]:
        """Messages received, optionally only requests of a method or responses with a code."""
        return _select(self.traced, "received", what)

    def sent(self, what: str | int | None = None) -> list[TracedMessage]:
        return _select(self.traced, "sent", what)

    def describe(self) -> str:
        """A digest for assertion messages."""
        flow = "\n".join(
            f"  {'->' if m.direction == 'sent' else '<-'} {m.first_line}" for m in self.traced
        )
        return (
            f"sipp rc={self.returncode} successful={self.successful} failed={self.failed}"
            f" timed_out={self.timed_out}\n  argv: {' '.join(self.argv)}\n"
            f"messages:\n{flow or '  (none)'}\nerrors:\n{_tail(self.errors)}\n"
            f"workdir: {self.workdir}"
        )

    def assert_ok(self) -> SippResult:
        assert self.ok, self.describe()
        return self


def _select(msgs: list[TracedMessage], direction: str, what: str | int | None) -> list[TracedMessage]:
    out = [m for m in msgs if m.direction == direction]
    if isinstance(what, int):
        out = [m for m in out if m.status == what]
    elif isinstance(what, str):
        out = [m for m in out if m.status is None and m.method == what.upper()]
    return out


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "  (none)"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _stat_counts(stat_csv: Path, stdout: str) -> tuple[int, int]:
    """(successful, failed) from the last row of the -trace_stat file, else the final screen."""
    text = _read(stat_csv)
    rows = list(csv.reader(text.splitlines(), delimiter=";"))
    if len(rows) >= 2:
        header, last = rows[0], rows[-1]
        try:
            ok = int(last[header.index("SuccessfulCall(C)")])
            bad = int(last[header.index("FailedCall(C)")])
            return ok, bad
        except (ValueError, IndexError):
            pass

    def screen(label: str) -> int:
        found = re.findall(rf"^\s*{label}\s*\|\s*\d+\s*\|\s*(\d+)", stdout, re.MULTILINE)
        return int(found[-1]) if found else 0

    return screen("Successful call"), screen("Failed call")


class Sipp:
    """One SIPp process running one scenario.

    ``target`` ("host:port") makes it a caller (UAC); without it SIPp waits for calls on
    ``local_port`` (UAS).  Scenario keys ``user``, ``domain``, ``expires``, ``auth_user``,
    ``auth_pass``, ``reject_code`` and ``reject_reason`` always get a value (see defaults
    below); ``keys`` adds or overrides -key values (and fills ``{{key}}`` placeholders of
    template scenarios such as uas_reject.xml), ``variables`` sets -set globals the scenario
    declares (``expected``, ``hangup_ms``).  ``duration_ms`` is -d: the length of every
    ``<pause/>`` in our scenarios (hold time, ring time before CANCEL, time to stay
    registered).  ``media_port`` (-mp) is what the SDP offers/answers as m=audio.
    """

    def __init__(
        self,
        scenario: str | Path,
        target: str | None = None,
        *,
        workdir: Path | None = None,
        service: str | None = None,
        user: str | None = None,
        domain: str | None = None,
        auth_user: str | None = None,
        auth_password: str | None = None,
        calls: int = 1,
        rate: float | None = None,
        rate_period_ms: int | None = None,
        limit: int | None = None,
        local_ip: str = LOOPBACK,
        local_port: int | None = None,
        media_port: int | None = None,
        transport: str = "u1",
        duration_ms: int | None = None,
        timeout: float = 30.0,
        recv_timeout_ms: int | None = None,
        keys: Mapping[str, object] | None = None,
        variables: Mapping[str, object] | None = None,
        inf: Path | Sequence[Sequence[str]] | None = None,
        inf_order: str = "SEQUENTIAL",
        ooc_scenario: str | Path | None = None,
        rtp_echo: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.scenario = scenario_path(scenario)
        if not self.scenario.is_file():
            raise FileNotFoundError(self.scenario)
        self.target = target
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sipp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.local_ip = local_ip
        self.local_port = local_port or free_port(local_ip)
        self.media_port = media_port or free_port(local_ip, span=4)
        self.timeout = timeout
        self._name = f"{self.scenario.stem}-{self.local_port}"
        self._proc: asyncio.subprocess.Process | None = None
        self._started = 0.0
        self._result: SippResult | None = None
        self._stdout_f = None
        self._stderr_f = None

        target_host = target.rsplit(":", 1)[0].strip("[]") if target else local_ip
        all_keys: dict[str, object] = {
            "user": user or auth_user or "sipp",
            "domain": domain or target_host,
            "expires": 3600,
            "auth_user": auth_user or "sipp",
            "auth_pass": auth_password or "sipp",
            "reject_code": 486,
            "reject_reason": "Busy Here",
        }
        all_keys.update(keys or {})

        f = self._file
        scenario_file = self._render(all_keys)
        argv = [SIPP, "-sf", str(scenario_file)]
        if target:
            argv.append(target)
        argv += ["-i", local_ip, "-p", str(self.local_port), "-mp", str(self.media_port)]
        argv += ["-t", transport, "-m", str(calls), "-nostdin"]
        argv += ["-timeout", f"{timeout:g}s", "-timeout_error"]
        argv += ["-trace_msg", "-message_file", f("messages.log")]
        argv += ["-trace_err", "-error_file", f("errors.log")]
        argv += ["-trace_logs", "-log_file", f("logs.log")]
        argv += ["-trace_stat", "-stf", f("stat.csv"), "-fd", "1"]
        argv += ["-trace_screen", "-screen_file", f("screen.log")]
        if service is not None:
            argv += ["-s", service]
        if auth_user is not None:
            argv += ["-au", auth_user]
        if auth_password is not None:
            argv += ["-ap", auth_password]
        if rate is not None:
            argv += ["-r", f"{rate:g}"]
        if rate_period_ms is not None:
            argv += ["-rp", f"{rate_period_ms}ms"]
        if limit is not None:
            argv += ["-l", str(limit)]
        if duration_ms is not None:
            argv += ["-d", f"{duration_ms}ms"]
        if recv_timeout_ms is not None:
            argv += ["-recv_timeout", f"{recv_timeout_ms}ms"]
        for name, value in all_keys.items():
            argv += ["-key", name, str(value)]
        for name, value in (variables or {}).items():
            argv += ["-set", name, str(value)]
        if inf is not None:
            argv += ["-inf", str(self._inf_file(inf, inf_order))]
        if ooc_scenario is not None:
            argv += ["-oocsf", str(scenario_path(ooc_scenario))]
        if rtp_echo:
            argv.append("-rtp_echo")
        argv += list(extra_args)
        self.argv = argv

    # -- files -----------------------------------------------------------------------------

    def _render(self, keys: Mapping[str, object]) -> Path:
        """The scenario with its ``{{key}}`` placeholders filled in.  SIPp's own [key] cannot
        stand where it checks a value at load time, such as a response's status code."""
        text = self.scenario.read_text()
        if "{{" not in text:
            return self.scenario

        def fill(m: re.Match[str]) -> str:
            if m.group(1) not in keys:
                raise KeyError(f"{self.scenario.name} needs keys[{m.group(1)!r}]")
            return str(keys[m.group(1)])

        rendered = Path(self._file("scenario.xml"))
        rendered.write_text(re.sub(r"\{\{(\w+)\}\}", fill, text))
        return rendered

    def _file(self, what: str) -> str:
        return str(self.workdir / f"{self._name}.{what}")

    def _inf_file(self, inf: Path | Sequence[Sequence[str]], order: str) -> Path:
        if isinstance(inf, (str, Path)):
            return Path(inf)
        path = Path(self._file("inf.csv"))
        lines = [order] + [";".join(str(v) for v in row) for row in inf]
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def address(self) -> str:
        """Where this SIPp listens: "127.0.0.1:port" (give it to the PBX as a trunk/contact)."""
        return f"{self.local_ip}:{self.local_port}"

    # -- async -----------------------------------------------------------------------------

    async def start(self) -> Sipp:
        """Start in the background (a callee, or a caller to wait for later)."""
        if self._proc is not None:
            raise RuntimeError("already started")
        self._stdout_f = open(self._file("stdout"), "wb")
        self._stderr_f = open(self._file("stderr"), "wb")
        self._started = time.monotonic()
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._stdout_f,
            stderr=self._stderr_f,
            cwd=self.workdir,
            start_new_session=True,
        )
        procs.track(self._proc.pid)
        return self

    async def wait_listening(self, timeout: float = 5.0) -> None:
        """Return once SIPp's SIP socket is bound (a UAS is ready for calls)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.returncode is not None:
                raise RuntimeError(f"sipp exited early:\n{_read(Path(self._file('stderr')))}")
            if _udp_bound(self.local_ip, self.local_port):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"sipp did not bind {self.address} within {timeout}s")

    async def wait(self) -> SippResult:
        """Wait for SIPp to finish (bounded by -timeout + grace) and collect the result."""
        if self._result is not None:
            return self._result
        if self._proc is None:
            raise RuntimeError("not started")
        remaining = self.timeout + _GRACE - (time.monotonic() - self._started)
        timed_out = False
        try:
            await asyncio.wait_for(self._proc.wait(), max(remaining, 0.1))
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            await self._kill()
            if not timed_out:
                raise
        return self._finish(timed_out)

    async def stop(self, grace: float = 3.0) -> SippResult:
        """End a background SIPp: a smooth quit (SIGUSR1: no new calls, running ones finish),
        then SIGTERM, then SIGKILL."""
        if self._result is not None:
            return self._result
        if self._proc is None:
            raise RuntimeError("not started")
        for sig, wait in ((signal.SIGUSR1, grace), (signal.SIGTERM, grace)):
            if self._proc.returncode is not None:
                break
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(self._proc.wait(), wait)
            except asyncio.TimeoutError:
                continue
        if self._proc.returncode is None:
            await self._kill()
        return self._finish(False)

    async def run(self) -> SippResult:
        """Start, wait, collect."""
        await self.start()
        return await self.wait()

    async def _kill(self) -> None:
        assert self._proc is not None
        if self._proc.returncode is None:
            procs.kill_group(self._proc.pid)
            await self._proc.wait()

    async def __aenter__(self) -> Sipp:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        if self._proc is not None and self._result is None:
            await self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    # -- sync ------------------------------------------------------------------------------

    def run_sync(self) -> SippResult:
        """Run to the end without an event loop (bounded like ``run``)."""
        self._started = time.monotonic()
        timed_out = False
        with open(self._file("stdout"), "wb") as out, open(self._file("stderr"), "wb") as err:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
                start_new_session=True,
            )
            procs.track(proc.pid)
            try:
                rc: int | None = proc.wait(self.timeout + _GRACE)
            except subprocess.TimeoutExpired:
                timed_out = True
                procs.kill_group(proc.pid)
                proc.wait()
                rc = None
            finally:
                procs.untrack(proc.pid)
        return self._collect(rc, timed_out)

    # -- result ----------------------------------------------------------------------------

    def _finish(self, timed_out: bool) -> SippResult:
        assert self._proc is not None
        procs.untrack(self._proc.pid)
        for f in (self._stdout_f, self._stderr_f):
            if f is not None:
                f.close()
        rc = None if timed_out else self._proc.returncode
        self._result = self._collect(rc, timed_out)
        return self._result

    def _collect(self, rc: int | None, timed_out: bool) -> SippResult:
        stdout = _read(Path(self._file("stdout")))
        messages = _read(Path(self._file("messages.log")))
        successful, failed = _stat_counts(Path(self._file("stat.csv")), stdout)
        errors = _read(Path(self._file("errors.log"))) + _read(Path(self._file("stderr")))
        return SippResult(
            argv=self.argv,
            returncode=rc,
            successful=successful,
            failed=failed,
            timed_out=timed_out,
            messages=messages,
            errors=errors,
            logs=_read(Path(self._file("logs.log"))),
            stdout=stdout,
            workdir=self.workdir,
            traced=parse_message_log(messages),
        )


def _udp_bound(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


async def run_sipp(scenario: str | Path, target: str | None = None, **options: object) -> SippResult:
    """``Sipp(scenario, target, **options).run()`` in one call."""
    return await Sipp(scenario, target, **options).run()  # type: ignore[arg-type]


def run_sipp_sync(scenario: str | Path, target: str | None = None, **options: object) -> SippResult:
    return Sipp(scenario, target, **options).run_sync()  # type: ignore[arg-type]


def sipp_uas(
    scenario: str | Path = "uas_answer",
    *,
    port: int | None = None,
    calls: int = 1,
    timeout: float = 60.0,
    **options: object,
) -> Sipp:
    """A SIPp callee (not started): ``uas = sipp_uas("uas_busy"); await uas.start();
    await uas.wait_listening(); ...; result = await uas.wait()`` (or ``await uas.stop()``)."""
    return Sipp(scenario, None, local_port=port, calls=calls, timeout=timeout, **options)  # type: ignore[arg-type]


def sipp_phone(
    registrar: str,
    *,
    user: str,
    password: str,
    domain: str,
    answer_with: str | Path = "uas_answer",
    registered_ms: int = 30_000,
    timeout: float | None = None,
    **options: object,
) -> Sipp:
    """A SIPp "phone" (not started): registers ``user@domain`` at ``registrar`` ("host:port")
    with digest credentials, stays registered ``registered_ms``, then un-registers; calls that
    reach it meanwhile are handled by ``answer_with`` (a UAS scenario).  Its result counts the
    registration call only; look at ``result.received("INVITE")`` / ``result.sent(200)`` for
    the calls."""
    return Sipp(
        "uas_register_then_answer",
        registrar,
        user=user,
        domain=domain,
        auth_user=user,
        auth_password=password,
        duration_ms=registered_ms,
        ooc_scenario=answer_with,
        timeout=timeout if timeout is not None else registered_ms / 1000 + 15,
        **options,  # type: ignore[arg-type]
    )
