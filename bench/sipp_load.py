#!/usr/bin/env python3
"""SIPp load benchmark: calls/s and digest REGISTERs/s through Kamailio and a hivepbx node.

Why this shape (shared/bench-method.md): the element under test is pinned to core 0 and
every load generator (and this script) to core 1, so one element's figures are one core's;
the rate is stepped and then bisected, and a step passes only with < 0.1 % failed calls
(unfinished calls count as failed). The rate SIPp really offered is reported, because past
~7,000 calls/s one SIPp core is itself the limit. CPU comes from /proc/<pid>/stat
(utime+stime of the whole process tree, reaped children included), memory from PSS
(= RSS for a single process, without counting Kamailio's shared memory once per worker).

Prints figures only; nothing here is a test assertion. All traffic stays on 127.0.0.0/8,
every load is bounded by SIPp's -m (calls) and -timeout (seconds).

    bench/sipp_load.py --target kamailio|hivepbx|both --test calls|register|memory|both|all [--quick]
                       [--profile calls|register] [--json FILE]

bench/README.md says what each figure means and records the results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SCENARIOS = BENCH / "scenarios"
KAMAILIO_CFG = BENCH / "kamailio"

SUT_CORE, GEN_CORE = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Addresses: the element listens on 127.0.0.1, the called phone (SIPp UAS) on 127.0.0.1:15090,
# the caller / carrier (SIPp UAC) sends from 127.0.0.2 so a hivepbx trunk recognises it.
UAS_HOST, UAS_PORT = "127.0.0.1", 15090
UAC_HOST = "127.0.0.2"
UAC_CALL_PORT, UAC_REG_PORT = 15061, 15062
KAM_PROXY_PORT, KAM_REGISTRAR_PORT = 15070, 15071  # as in kamailio/*.cfg
HIVE_SIP_PORT, HIVE_HTTP_PORT = 15080, 15081
HIVE_RTP_PORTS = "16000-31999"  # 4 sockets a call: room for 2,000+ concurrent calls
# Ports sit below the ephemeral range (32768-) and off the 5060 block other tests use.

DOMAIN = "bench.local"
HIVE_DID, HIVE_CALLEE, HIVE_CALLEE_PW = "15550001", "2000", "bench-2000-pw"
HIVE_EXT, HIVE_EXT_PW = "1001", "bench-1001-pw"
HIVE_USER_PW = "bench-user-pw"
KAM_USER_PW = "secret"  # registrar.cfg checks every user against this one password
REG_USERS = range(3000, 4000)  # REGISTER/s: 1,000 users re-registering (Expires 60)
MEM_USERS_FIRST = 10000  # memory test: users 10000.. register once each (Expires 3600)
FAIL_LIMIT = 0.001  # a step passes below 0.1 % failed calls


# ------------------------------------------------------------------ processes we started


class Procs:
    """Every process this script starts runs in its own session; only those are ever killed."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
        f = open(log, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             cwd=cwd, start_new_session=True)
        f.close()
        self.live.append(p)
        return p

    def stop(self, p: subprocess.Popen | None, timeout: float = 5.0) -> None:
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        if p in self.live:
            self.live.remove(p)

    def stop_all(self) -> None:
        for p in list(self.live):
            self.stop(p, 3.0)


PROCS = Procs()


def run_cmd(argv: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {r.returncode}: {r.stderr.strip()[-400:]}")
    return r


# ------------------------------------------------------------------ /proc readings


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2 :].split()  # [0] is field 3 (state)


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Kamailio forks its workers)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the processes (all threads), plus reaped children (cutime+cstime)."""
    ticks = 0
    for p in pids:
        st = _stat(p)
        if st is not None:
            ticks += int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])
    return ticks / CLK_TCK


def core_busy_seconds(core: int) -> float:
    """Time one CPU ran processes (user, nice, system, steal) from /proc/stat, in seconds; softirq
    time is left out: it is mostly the element's own packets, which no process is charged for."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                v = [int(x) for x in line.split()[1:]]
                return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK
    return 0.0


def pss_kib(pids: list[int]) -> int:
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def udp_rcvbuf_errors() -> int:
    """Datagrams the kernel dropped because a socket's receive buffer was full (all sockets)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def udp_bound(host: str, port: int) -> bool:
    a = host.split(".")
    want = "".join(f"{int(x):02X}" for x in reversed(a)) + f":{port:04X}"
    try:
        with open("/proc/net/udp") as f:
            return any(line.split()[1] == want for line in list(f)[1:])
    except OSError:
        return False


def port_users(port: int) -> list[str]:
    """Local UDP addresses already bound to ``port`` (any process): a busy port would make SIPp
    or the element fail to start, and two loads would mix."""
    out = []
    with open("/proc/net/udp") as f:
        for line in list(f)[1:]:
            local = line.split()[1]
            h, p = local.split(":")
            if int(p, 16) == port:
                out.append(".".join(str(int(h[i : i + 2], 16)) for i in (6, 4, 2, 0)) + f":{port}")
    return out


def wait_bound(host: str, port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if udp_bound(host, port):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} before listening on {host}:{port}")
        time.sleep(0.1)
    raise RuntimeError(f"not listening on udp {host}:{port} after {timeout:.0f} s")


# ------------------------------------------------------------------ SIPp


@dataclass
class SippStats:
    created: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    offered: float = 0.0  # calls/s really created
    created_by: float = 0.0  # seconds after start when the last call was created
    max_concurrent: int = 0
    rc: int | None = None


def parse_stats(path: Path, target_calls: int) -> SippStats:
    s = SippStats()
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except OSError:
        return s
    if not rows:
        return s

    def epoch(v: str) -> float:
        return float(v.split("\t")[-1])

    t0 = epoch(rows[0]["StartTime"])
    last = rows[-1]
    s.created = int(last["TotalCallCreated"])
    s.successful = int(last["SuccessfulCall(C)"])
    s.failed = int(last["FailedCall(C)"])
    s.retransmissions = int(last["Retransmissions(C)"])
    s.max_concurrent = max(int(r["CurrentCall"]) for r in rows)
    # the creation rate: cumulative calls over elapsed time at the last dump before SIPp had
    # created them all (dumps are 1 s apart; the tail is interpolated at the same rate)
    prev = None
    for r in rows:
        n, t = int(r["TotalCallCreated"]), epoch(r["CurrentTime"]) - t0
        if n >= min(target_calls, s.created) and n > 0:
            if prev is not None and prev[0] > 0 and prev[1] > 0:
                rate = prev[0] / prev[1]
                s.created_by = prev[1] + (n - prev[0]) / rate
            else:
                s.created_by = t
            break
        prev = (n, t)
    if s.created_by > 0:
        s.offered = s.created / s.created_by
    return s


class Sipp:
    """Builds SIPp command lines; every instance runs on the generator core."""

    COMMON = [
        "-nostdin", "-buff_size", "4194304",
        "-watchdog_major_maxtriggers", "100000000", "-watchdog_minor_maxtriggers", "100000000",
        "-max_log_size", "2000000",
    ]

    def __init__(self, work: Path) -> None:
        self.work = work
        self.n = 0
        self.current_uas: subprocess.Popen | None = None

    def argv(self, scenario: str, remote: str | None, *args: str) -> list[str]:
        # -sf comes after the other options: a script elsewhere on this shared machine ran
        # `pkill -f "sipp -sf"` and so stopped every SIPp of a run in the middle of a step
        self.n += 1
        cmd = ["taskset", "-c", GEN_CORE, "sipp", *self.COMMON, "-sf", str(SCENARIOS / scenario), *args]
        if remote:
            cmd.append(remote)
        return cmd

    def restart_uas(self, old: subprocess.Popen) -> subprocess.Popen:
        PROCS.stop(old)
        return self.uas()

    def uas(self) -> subprocess.Popen:
        log = self.work / "uas.log"
        p = PROCS.start(
            self.argv("uas_call.xml", None, "-i", UAS_HOST, "-p", str(UAS_PORT), "-mp", "15910", "-cp", "15810",
                      "-recv_timeout", "120000", "-trace_err", "-error_file", str(self.work / "uas_errors.log")),
            log,
        )
        wait_bound(UAS_HOST, UAS_PORT, p)
        self.current_uas = p
        return p


# ------------------------------------------------------------------ targets


class Target:
    name = ""
    calls_addr = ""
    reg_addr = ""
    dialled = ""
    mem_note = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.proc: subprocess.Popen | None = None

    @property
    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc and self.proc.poll() is None else []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, test: str) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        PROCS.stop(self.proc, 10)
        self.proc = None

    def prepare_calls(self, sipp: Sipp) -> None:
        pass

    def reg_users_csv(self, users: range) -> Path:
        raise NotImplementedError

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join((self.work / f"{self.name}.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _users_csv(path: Path, users: range, password: str) -> Path:
    with open(path, "w") as f:
        f.write("SEQUENTIAL\n")
        for u in users:
            f.write(f"{u};{DOMAIN};{password};[authentication username={u} password={password}]\n")
    return path


class Kamailio(Target):
    name = "kamailio"
    calls_addr = f"127.0.0.1:{KAM_PROXY_PORT}"
    reg_addr = f"127.0.0.1:{KAM_REGISTRAR_PORT}"
    dialled = HIVE_CALLEE

    def start(self, test: str) -> None:
        cfg, port = (("proxy.cfg", KAM_PROXY_PORT) if test == "calls" else ("registrar.cfg", KAM_REGISTRAR_PORT))
        self.proc = PROCS.start(
            ["taskset", "-c", SUT_CORE, "kamailio", "-f", str(KAMAILIO_CFG / cfg), "-DD", "-E",
             "-m", "4096", "-M", "16", "-x", "tlsf", "-X", "tlsf"],
            self.work / f"{self.name}.log",
        )
        wait_bound("127.0.0.1", port, self.proc)
        time.sleep(0.5)  # workers finish forking after the socket is bound

    def reg_users_csv(self, users: range) -> Path:
        return _users_csv(self.work / f"kam_users_{users.start}.csv", users, KAM_USER_PW)


class Hivepbx(Target):
    name = "hivepbx"
    calls_addr = f"127.0.0.1:{HIVE_SIP_PORT}"
    reg_addr = f"127.0.0.1:{HIVE_SIP_PORT}"
    dialled = HIVE_DID

    def __init__(self, work: Path, mem_users: int) -> None:
        super().__init__(work)
        exe = REPO / ".venv" / "bin" / "hivepbx"
        self.exe = str(exe) if exe.exists() else (shutil.which("hivepbx") or str(exe))
        self.data = work / "hivepbx-data"
        self.mem_users = mem_users
        self.provisioned = False

    def cli(self, *args: str, timeout: float = 600) -> str:
        return run_cmd([self.exe, *args, "--data-dir", str(self.data)], timeout=timeout).stdout

    def provision(self) -> None:
        """Throwaway data dir: tenant bench, extension 1001, callee 2000 behind DID 15550001,
        trunk 'carrier' = the UAC's source address, users for the REGISTER and memory tests."""
        if self.provisioned:
            return
        t = time.monotonic()
        self.cli("tenant", "add", "bench", DOMAIN)
        self.cli("ext", "add", "bench", HIVE_EXT, "--password", HIVE_EXT_PW)
        self.cli("ext", "add", "bench", HIVE_CALLEE, "--password", HIVE_CALLEE_PW)
        self.cli("trunk", "add", "bench", "carrier", UAC_HOST, "--port", str(UAC_CALL_PORT))
        self.cli("did", "add", "bench", HIVE_DID, "--ext", HIVE_CALLEE)
        imp = self.work / "hive_import.csv"
        with open(imp, "w") as f:
            f.write("number,password\n")
            for u in [*REG_USERS, *range(MEM_USERS_FIRST, MEM_USERS_FIRST + self.mem_users)]:
                f.write(f"{u},{HIVE_USER_PW}\n")
        self.cli("ext", "import", "bench", str(imp))
        self.provisioned = True
        print(f"  provisioned {self.data} in {time.monotonic() - t:.1f} s "
              f"({len(REG_USERS) + self.mem_users + 2} extensions)", flush=True)

    def start(self, test: str) -> None:
        self.provision()
        self.proc = PROCS.start(
            ["taskset", "-c", SUT_CORE, self.exe, "run", "--data-dir", str(self.data),
             "--listen", f"udp:127.0.0.1:{HIVE_SIP_PORT}", "--advertise-address", "127.0.0.1",
             "--http", f"127.0.0.1:{HIVE_HTTP_PORT}", "--rtp-ports", HIVE_RTP_PORTS, "--log-level", "WARNING"],
            self.work / f"{self.name}.log",
        )
        wait_bound("127.0.0.1", HIVE_SIP_PORT, self.proc, timeout=30)
        time.sleep(0.5)

    def prepare_calls(self, sipp: Sipp) -> None:
        """Register the SIPp UAS as extension 2000 from its own address and port: the node sends
        the DID's calls to the REGISTER's source."""
        r = run_cmd(
            sipp.argv("register_once.xml", self.calls_addr, "-i", UAS_HOST, "-p", str(UAS_PORT), "-mp", "15930",
                      "-cp", "15830", "-s", HIVE_CALLEE, "-au", HIVE_CALLEE, "-ap", HIVE_CALLEE_PW,
                      "-key", "domain", DOMAIN, "-key", "expires", "3600", "-auth_uri", f"sip:{DOMAIN}",
                      "-m", "1", "-recv_timeout", "5000", "-timeout", "15",
                      "-trace_err", "-error_file", str(self.work / "register_once_errors.log")),
            timeout=30, check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"REGISTER of the UAS as {HIVE_CALLEE} failed (sipp rc {r.returncode}); "
                               f"see {self.work / 'register_once_errors.log'}")

    def reg_users_csv(self, users: range) -> Path:
        return _users_csv(self.work / f"hive_users_{users.start}.csv", users, HIVE_USER_PW)

    def health(self) -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{HIVE_HTTP_PORT}/health", timeout=2) as r:
                return json.loads(r.read())
        except Exception as e:  # the figure is optional: say why it is missing
            return {"error": str(e)}


# ------------------------------------------------------------------ one step


@dataclass
class Step:
    target: str
    test: str
    asked: int
    offered: float = 0.0
    created: int = 0
    ok: int = 0
    failed: int = 0
    fail_pct: float = 0.0
    retrans: int = 0
    drops: int = 0  # kernel RcvbufErrors during the step (any UDP socket on the machine)
    cpu_pct: float = 0.0  # element, steady part of the step, % of one core
    core_other_pct: float = 0.0  # the element's core busy with anything else (shared machine noise)
    us_per_call: float = 0.0  # element CPU over the whole step / calls created
    gen_pct: float = 0.0  # SIPp (UAC + UAS), steady part, % of one core
    mem_mib: float = 0.0
    passed: bool = False
    gen_limited: bool = False
    note: str = ""


def _window_rate(samples: list[tuple[float, float]], a: float, b: float) -> float:
    """CPU seconds per second between times a and b, from (time, cpu seconds) samples."""
    inside = [s for s in samples if a <= s[0] <= b]
    if len(inside) < 2:
        inside = samples
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return 0.0
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def run_step(target: Target, sipp: Sipp, test: str, rate: int, seconds: float, hold_ms: int,
             users_csv: Path | None, uas: subprocess.Popen | None, expires: int = 60,
             total: int | None = None) -> Step:
    """One step; a SIPp (UAC or UAS) that stopped before the step was over was stopped from
    outside (seen on a shared machine): the step is run again, twice at most, with a new UAS."""
    for attempt in range(3):
        if uas is not None and uas.poll() is not None:
            print(f"  the SIPp UAS had exited (rc {uas.returncode}); restarted", flush=True)
            uas = sipp.restart_uas(uas)
        s = _run_step_once(target, sipp, test, rate, seconds, hold_ms, users_csv, uas, expires, total)
        uas_died = uas is not None and uas.poll() is not None
        if uas_died:
            s.note = ", ".join(n for n in ("the SIPp UAS exited during the step", s.note) if n)
        if not (uas_died or s.note.startswith("SIPp stopped early")) or not target.alive() or attempt == 2:
            return s
        settle(target)
    return s


def _run_step_once(target: Target, sipp: Sipp, test: str, rate: int, seconds: float, hold_ms: int,
                   users_csv: Path | None, uas: subprocess.Popen | None, expires: int,
                   total: int | None) -> Step:
    m = total or max(1, round(rate * seconds))
    hold_s = hold_ms / 1000 if test == "calls" else 0.0
    tag = f"{target.name}_{test}_{rate}_{sipp.n}"
    stf = target.work / f"{tag}.csv"
    # -l only guards the file limit: calls last hold + at most 8 s of waiting (-recv_timeout)
    limit = min(m, max(100, int(rate * (hold_s + 9))))
    common = ["-r", str(rate), "-rp", "1000", "-m", str(m), "-l", str(limit), "-recv_timeout", "8000",
              "-timeout", str(int(seconds * 2 + hold_s + 25)), "-trace_stat", "-stf", str(stf), "-fd", "1",
              "-trace_err", "-error_file", str(target.work / f"{tag}_errors.log")]
    if test == "calls":
        argv = sipp.argv("uac_call.xml", target.calls_addr, "-s", target.dialled, "-i", UAC_HOST,
                         "-p", str(UAC_CALL_PORT), "-mp", "15900", "-cp", "15800", "-d", str(hold_ms), *common)
    else:
        argv = sipp.argv("uac_register.xml", target.reg_addr, "-inf", str(users_csv), "-key", "expires",
                         str(expires), "-auth_uri", f"sip:{DOMAIN}", "-i", UAC_HOST, "-p", str(UAC_REG_PORT),
                         "-mp", "15920", "-cp", "15820", *common)
    pids = target.pids
    cpu: list[tuple[float, float]] = []
    gen: list[tuple[float, float]] = []
    core: list[tuple[float, float]] = []
    t0 = time.monotonic()
    c0 = cpu_seconds(pids)
    d0 = udp_rcvbuf_errors()
    uac = PROCS.start(argv, target.work / f"{tag}.log")
    gen_pids = [uac.pid] + ([uas.pid] if uas else [])
    while uac.poll() is None:
        now = time.monotonic() - t0
        cpu.append((now, cpu_seconds(pids)))
        gen.append((now, cpu_seconds(gen_pids)))
        core.append((now, core_busy_seconds(int(SUT_CORE))))
        if now > seconds * 2 + hold_s + 40:
            PROCS.stop(uac)  # SIPp's own -timeout failed us; unfinished calls count as failed
            break
        time.sleep(0.25)
    PROCS.stop(uac)
    elapsed = time.monotonic() - t0
    c1 = cpu_seconds(pids)
    st = parse_stats(stf, m)
    st.rc = uac.returncode
    s = Step(target.name, test, rate)
    s.offered = round(st.offered, 1)
    s.created = st.created
    s.ok = st.successful
    s.failed = max(m - st.successful, st.failed)  # never created or unfinished: failed
    s.fail_pct = 100.0 * s.failed / m
    s.retrans = st.retransmissions
    s.drops = udp_rcvbuf_errors() - d0
    created_by = st.created_by or seconds
    a, b = min(hold_s + 0.5, created_by / 2), created_by
    s.cpu_pct = round(100 * _window_rate(cpu, a, b), 1)
    s.gen_pct = round(100 * _window_rate(gen, a, b), 1)
    s.core_other_pct = round(max(0.0, 100 * _window_rate(core, a, b) - s.cpu_pct), 1)
    s.us_per_call = round((c1 - c0) * 1e6 / max(1, st.created), 1)
    s.mem_mib = round(pss_kib(target.pids) / 1024, 1)
    s.passed = s.failed / m < FAIL_LIMIT and st.created == m
    s.gen_limited = s.offered < 0.9 * rate and s.gen_pct > 85
    notes = []
    if st.created < m and elapsed < 0.95 * m / rate and target.alive():
        notes.append(f"SIPp stopped early after {elapsed:.1f} s (rc {st.rc}), not by its -m or -timeout")
    if not target.alive():
        notes.append("ELEMENT DIED")
        s.passed = False
    if st.created < m:
        notes.append(f"only {st.created}/{m} created")
    if s.gen_limited:
        notes.append("SIPp-limited")
    if st.rc not in (0, 1):
        notes.append(f"sipp rc {st.rc}")
    s.note = ", ".join(notes)
    print(f"  {fmt_step(s)}  ({elapsed:.0f} s)", flush=True)
    return s


def settle(target: Target, min_wait: float = 1.0, max_wait: float = 30.0) -> None:
    """Let the element finish its backlog (timers, lingering transactions) before the next step."""
    time.sleep(min_wait)
    deadline = time.monotonic() + max_wait
    pids = target.pids
    while target.alive() and time.monotonic() < deadline:
        c0 = cpu_seconds(pids)
        time.sleep(0.5)
        if cpu_seconds(pids) - c0 < 0.025:  # < 5 % of a core
            return


def drain(target: Target, max_wait: float = 45.0) -> None:
    """Wait until the element holds no transactions any more (hivepbx says so on /health; Kamailio's
    tm frees a finished transaction ~5 s after it ends)."""
    if isinstance(target, Hivepbx):
        deadline = time.monotonic() + max_wait
        while target.alive() and time.monotonic() < deadline:
            h = target.health()
            if h.get("transactions") == 0 and h.get("active_calls", 0) == 0:
                break
            time.sleep(1.0)
    else:
        time.sleep(6.0)
    settle(target)


# ------------------------------------------------------------------ sweeps


@dataclass
class Sweep:
    target: str
    test: str
    steps: list[Step] = field(default_factory=list)
    max_rate: float = 0.0  # highest offered rate of a passing step
    max_asked: int = 0
    us_at_max: float = 0.0
    cpu_at_max: float = 0.0
    repeat: Step | None = None
    limited_by: str = ""
    error: str = ""


def _nice(x: float) -> int:
    step = 10 if x < 1000 else 50 if x < 5000 else 100
    return max(step, int(round(x / step) * step))


def sweep(run, rates: list[int], bisect_steps: int, repeat: bool, sw: Sweep) -> Sweep:
    lo, hi = 0, None
    for r in rates:
        s = run(r)
        sw.steps.append(s)
        if not s.passed:
            hi = r
            break
        lo = r
        if s.gen_limited:
            sw.limited_by = "SIPp (generator core saturated)"
            break
    if hi is not None:
        for _ in range(bisect_steps):
            if hi - lo <= max(10, 0.08 * max(lo, 1)):
                break
            mid = _nice((lo + hi) / 2)
            if mid <= lo or mid >= hi:
                break
            s = run(mid)
            sw.steps.append(s)
            if s.passed:
                lo = mid
                if s.gen_limited:
                    sw.limited_by = "SIPp (generator core saturated)"
                    break
            else:
                hi = mid
    best = max((s for s in sw.steps if s.passed), key=lambda s: s.offered, default=None)
    if best is not None:
        sw.max_rate, sw.max_asked, sw.us_at_max, sw.cpu_at_max = best.offered, best.asked, best.us_per_call, best.cpu_pct
        if repeat:
            sw.repeat = run(best.asked)
    sw.limited_by = explain_limit(sw)
    return sw


def explain_limit(sw: Sweep) -> str:
    """What stopped the sweep, read from the first failing step above the maximum."""
    if any(s.gen_limited for s in sw.steps if s.passed):
        return "SIPp (it could not offer the rate asked: its core was saturated)"
    fails = [s for s in sw.steps if not s.passed and s.asked > sw.max_asked]
    if not fails:
        top = max(sw.steps, key=lambda s: s.asked, default=None)
        busy = f"; SIPp used {top.gen_pct:.0f} % of its core at {top.asked}/s" if top and top.gen_pct > 80 else ""
        return "the step list ended (raise the rates)" + busy
    f = min(fails, key=lambda s: s.asked)
    if f.gen_pct >= 90:
        return f"SIPp: its core was {f.gen_pct:.0f} % busy at {f.asked}/s (the element's {f.cpu_pct:.0f} %)"
    if f.cpu_pct >= 75:
        return f"the element's CPU ({f.cpu_pct:.0f} % of its core at {f.asked}/s)"
    return (f"not the element's own CPU ({f.cpu_pct:.0f} % of its core at {f.asked}/s, other processes "
            f"{f.core_other_pct:.0f} % of that core, SIPp {f.gen_pct:.0f} %, {f.drops} UDP drops): bursts "
            f"overflowing socket buffers, a shared core, or the generator")


def fmt_step(s: Step) -> str:
    return (f"{s.target:8} {s.test:8} asked {s.asked:6}/s offered {s.offered:8.1f}/s  ok {s.ok:6}  "
            f"failed {s.failed:5} ({s.fail_pct:5.2f} %)  retrans {s.retrans:5}  drops {s.drops:5}  cpu {s.cpu_pct:5.1f} %  "
            f"{s.us_per_call:7.1f} µs/call  core{SUT_CORE} others {s.core_other_pct:4.1f} %  sipp {s.gen_pct:5.1f} %  mem {s.mem_mib:7.1f} MiB  "
            f"{'PASS' if s.passed else 'FAIL'} {s.note}")


# ------------------------------------------------------------------ tests


@dataclass
class Plan:
    call_rates: list[int]
    reg_rates: list[int]
    step_s: float
    hold_ms: int
    bisect: int
    repeat: bool
    mem_regs: int
    mem_calls: int
    mem_call_rate: int


FULL = Plan([100, 200, 500, 1000, 2000, 4000, 8000, 12000], [250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 48000],
            10.0, 1000, 4, True, 10000, 2000, 200)
QUICK = Plan([100, 400], [250, 1000], 3.0, 1000, 0, False, 1000, 200, 100)


def bench_calls(target: Target, sipp: Sipp, plan: Plan, rates: list[int]) -> Sweep:
    sw = Sweep(target.name, "calls")
    uas = None
    try:
        target.start("calls")
        target.prepare_calls(sipp)
        uas = sipp.uas()

        def run(rate: int) -> Step:
            nonlocal uas
            s = run_step(target, sipp, "calls", rate, plan.step_s, plan.hold_ms, None, uas)
            uas = sipp.current_uas or uas  # run_step may have restarted it
            settle(target)
            if not target.alive():
                raise RuntimeError(f"{target.name} died during the {rate}/s step:\n{target.log_tail()}")
            return s

        sweep(run, rates, plan.bisect, plan.repeat, sw)
    except Exception as e:
        sw.error = str(e)
        print(f"  {target.name} calls: {e}", flush=True)
    finally:
        PROCS.stop(uas)
        PROCS.stop(sipp.current_uas)
        target.stop()
    return sw


def bench_register(target: Target, sipp: Sipp, plan: Plan, rates: list[int]) -> Sweep:
    sw = Sweep(target.name, "register")
    try:
        target.start("register")
        users = target.reg_users_csv(REG_USERS)

        def run(rate: int) -> Step:
            s = run_step(target, sipp, "register", rate, plan.step_s, 0, users, None, expires=60)
            settle(target)
            if not target.alive():
                raise RuntimeError(f"{target.name} died during the {rate}/s step:\n{target.log_tail()}")
            return s

        sweep(run, rates, plan.bisect, plan.repeat, sw)
    except Exception as e:
        sw.error = str(e)
        print(f"  {target.name} register: {e}", flush=True)
    finally:
        target.stop()
    return sw


@dataclass
class Memory:
    target: str
    what: str
    count: int = 0  # registrations or concurrent calls reached
    before_kib: int = 0
    peak_kib: int = 0
    after_kib: int = 0  # once the calls ended / registrations stayed
    per_item_bytes: float = 0.0
    note: str = ""


def bench_memory(target: Target, sipp: Sipp, plan: Plan, reg_rate: int, call_rate: int) -> list[Memory]:
    out = []
    # registrations, on a fresh process, in three phases so that what stays per binding is told
    # apart from the transactions that linger after each REGISTER (Timer J, RFC 3261 §17.2.2)
    # and from the allocator's high-water mark they leave:
    #   A: N users register (Expires 3600); wait until the transactions are gone
    #   B: the same N refresh their bindings (no new binding, same transaction churn); wait
    #   C: N other users register; wait.  Per binding = (C - B) / N.
    n = plan.mem_regs
    mr = Memory(target.name, "registrations")
    try:
        target.start("register")
        first = target.reg_users_csv(range(MEM_USERS_FIRST, MEM_USERS_FIRST + n))
        second = target.reg_users_csv(range(MEM_USERS_FIRST + n, MEM_USERS_FIRST + 2 * n))
        settle(target)
        mr.before_kib = pss_kib(target.pids)
        kib, failed, ok = [], 0, 0
        for phase, users in (("A", first), ("B", first), ("C", second)):
            s = run_step(target, sipp, "register", reg_rate, n / reg_rate, 0, users, None, expires=3600, total=n)
            if phase == "A":
                mr.peak_kib = pss_kib(target.pids)
            failed += s.failed
            ok = s.ok if phase == "C" else ok
            drain(target)
            kib.append(pss_kib(target.pids))
        mr.after_kib = kib[-1]
        mr.count = ok
        mr.per_item_bytes = round((kib[2] - kib[1]) * 1024 / max(1, ok))
        mr.note = (f"PSS after A/B/C {kib[0] / 1024:.1f}/{kib[1] / 1024:.1f}/{kib[2] / 1024:.1f} MiB; "
                   f"right after A, transactions still alive: {(mr.peak_kib - mr.before_kib) * 1024 / n / 1024:.1f}"
                   f" KiB per REGISTER")
        if failed:
            mr.note += f"; {failed} REGISTERs failed"
    except Exception as e:
        mr.note = f"error: {e}"
    finally:
        target.stop()
    out.append(mr)
    print(f"  {fmt_mem(mr)}", flush=True)

    # calls in progress: fresh process, N calls created at call_rate, held until all are up
    mc = Memory(target.name, "calls in progress")
    uas = None
    try:
        target.start("calls")
        target.prepare_calls(sipp)
        uas = sipp.uas()
        settle(target)
        mc.before_kib = pss_kib(target.pids)
        ramp = plan.mem_calls / call_rate
        hold_ms = int((ramp + 6) * 1000)
        m = plan.mem_calls
        stf = target.work / f"{target.name}_memcalls.csv"
        argv = sipp.argv("uac_call.xml", target.calls_addr, "-s", target.dialled, "-i", UAC_HOST,
                         "-p", str(UAC_CALL_PORT), "-mp", "15900", "-cp", "15800", "-d", str(hold_ms),
                         "-r", str(call_rate), "-m", str(m), "-l", str(m), "-recv_timeout", "8000",
                         "-timeout", str(int(ramp * 2 + hold_ms / 1000 + 30)), "-trace_stat", "-stf", str(stf),
                         "-fd", "1", "-trace_err", "-error_file", str(target.work / "memcalls_errors.log"))
        uac = PROCS.start(argv, target.work / "memcalls.log")
        t0 = time.monotonic()
        peak = 0
        health = {}
        while uac.poll() is None and time.monotonic() - t0 < ramp * 2 + hold_ms / 1000 + 40:
            el = time.monotonic() - t0
            if ramp + 2 <= el <= ramp + 5:  # every call is up, none has ended yet
                peak = max(peak, pss_kib(target.pids))
                if isinstance(target, Hivepbx) and not health:
                    health = target.health()
            time.sleep(0.5)
        PROCS.stop(uac)
        st = parse_stats(stf, m)
        drain(target)
        mc.after_kib = pss_kib(target.pids)
        mc.peak_kib = peak
        mc.count = st.max_concurrent
        mc.per_item_bytes = round((peak - mc.before_kib) * 1024 / max(1, st.max_concurrent))
        notes = [f"{st.successful}/{m} calls completed", "after: once calls and transactions ended"]
        if health:
            notes.append(f"node saw {health.get('active_calls', health.get('error', '?'))} active calls")
        mc.note = ", ".join(notes)
    except Exception as e:
        mc.note = f"error: {e}"
    finally:
        PROCS.stop(uas)
        PROCS.stop(sipp.current_uas)
        target.stop()
    out.append(mc)
    print(f"  {fmt_mem(mc)}", flush=True)
    return out


def fmt_mem(m: Memory) -> str:
    return (f"{m.target:8} {m.what:18} n={m.count:6}  before {m.before_kib / 1024:7.1f} MiB  peak "
            f"{m.peak_kib / 1024:7.1f} MiB  after {m.after_kib / 1024:7.1f} MiB  "
            f"= {m.per_item_bytes / 1024:6.2f} KiB each  {m.note}")


# ------------------------------------------------------------------ profile


def profile_node(target: Hivepbx, sipp: Sipp, plan: Plan, rate: int, seconds: float, test: str) -> list[str]:
    """py-spy samples the node (from the generator core) during one step; returns the hottest frames."""
    spy = REPO / ".venv" / "bin" / "py-spy"
    if not spy.exists():
        return ["py-spy not installed: .venv/bin/pip install py-spy"]
    raw = target.work / f"profile_{test}.txt"
    uas = None
    try:
        target.start(test)
        if test == "calls":
            target.prepare_calls(sipp)
            uas = sipp.uas()
        users = target.reg_users_csv(REG_USERS) if test == "register" else None
        spy_p = PROCS.start(["taskset", "-c", GEN_CORE, str(spy), "record", "--pid", str(target.proc.pid),
                             "--duration", str(int(seconds)), "--rate", "250", "--nonblocking",
                             "--format", "raw", "--output", str(raw)], target.work / "py-spy.log")
        time.sleep(1.0)
        run_step(target, sipp, test, rate, seconds, plan.hold_ms, users, uas)
        spy_p.wait(seconds + 30)
    finally:
        PROCS.stop(uas)
        PROCS.stop(sipp.current_uas)
        target.stop()
    return hot_spots(raw)


def _frame(f: str) -> str:
    """'func (path/file.py:123)' -> 'func (file path)': one row per function, not per line."""
    name, _, where = f.partition(" (")
    path = where.rstrip(")").rpartition(":")[0] or where.rstrip(")")
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if "/work/main/" in path:
        path = path.split("/work/main/", 1)[1]
    return f"{name} ({path})"


def hot_spots(raw: Path, top: int = 20) -> list[str]:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    try:
        lines = raw.read_text().splitlines()
    except OSError:
        return [f"no profile written ({raw})"]
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        frames = [f for f in stack.split(";") if f]
        if not frames:
            continue
        frames = [_frame(f) for f in frames]
        total += k
        self_c[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    if not total:
        return ["profile is empty"]
    out = [f"{total} samples; self time (the frame on top of the stack):"]
    out += [f"  {100 * c / total:5.1f} %  {f}" for f, c in self_c.most_common(top)]
    out.append("inclusive time, hivepbx code only:")
    ours = [(f, c) for f, c in incl.most_common() if "(node/" in f or "/node/" in f or "observability/" in f]
    out += [f"  {100 * c / total:5.1f} %  {f}" for f, c in ours[:top]]
    return out


# ------------------------------------------------------------------ report


def machine() -> dict:
    info = {"nproc": os.cpu_count()}
    try:
        lscpu = run_cmd(["lscpu"], check=False).stdout
        for line in lscpu.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Hypervisor vendor", "L2 cache", "L3 cache"):
                info[k.strip()] = v.strip()
        info["sipp"] = next((line.strip() for line in run_cmd(["sipp", "-v"], check=False).stdout.splitlines()
                             if "SIPp v" in line), "?")
        info["kamailio"] = run_cmd(["kamailio", "-v"], check=False).stdout.splitlines()[0].strip()
        info["python"] = run_cmd([str(REPO / ".venv" / "bin" / "python"), "-VV"], check=False).stdout.strip()
    except Exception:
        pass
    return info


def table(sweeps: list[Sweep]) -> str:
    lines = ["| element | test | asked /s | offered /s | ok | failed | failed % | retrans | UDP drops | element CPU % "
             "| CPU µs/call | others on its core % | SIPp CPU % | PSS MiB | result |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for sw in sweeps:
        steps = sw.steps + ([sw.repeat] if sw.repeat else [])
        for s in steps:
            res = ("pass" if s.passed else "FAIL") + (" (repeat of max)" if s is sw.repeat else "")
            if s.note:
                res += f"; {s.note}"
            lines.append(f"| {s.target} | {s.test} | {s.asked} | {s.offered:.0f} | {s.ok} | {s.failed} | "
                         f"{s.fail_pct:.2f} | {s.retrans} | {s.drops} | {s.cpu_pct:.0f} | {s.us_per_call:.0f} | "
                         f"{s.core_other_pct:.0f} | {s.gen_pct:.0f} | {s.mem_mib:.0f} | {res} |")
    return "\n".join(lines)


def summary(sweeps: list[Sweep], mems: list[Memory]) -> str:
    by = {(s.target, s.test): s for s in sweeps}
    lines = ["| element | test | max rate /s (< 0.1 % failed) | CPU µs/call at max | CPU % at max | "
             "one-core capacity 1e6/µs | repeat of max | limited by |", "|---|---|---:|---:|---:|---:|---|---|"]
    for sw in sweeps:
        if sw.error and not sw.steps:
            lines.append(f"| {sw.target} | {sw.test} | n/a | | | | | error: {sw.error.splitlines()[0][:120]} |")
            continue
        rep = ""
        if sw.repeat:
            rep = (f"{'pass' if sw.repeat.passed else 'FAIL'} {sw.repeat.offered:.0f}/s, "
                   f"{sw.repeat.fail_pct:.2f} % failed, {sw.repeat.us_per_call:.0f} µs")
        cap = f"{1e6 / sw.us_at_max:.0f}" if sw.us_at_max else ""
        lines.append(f"| {sw.target} | {sw.test} | {sw.max_rate:.0f} | {sw.us_at_max:.0f} | {sw.cpu_at_max:.0f} "
                     f"| {cap} | {rep} | {sw.limited_by}{'; ' + sw.error.splitlines()[0][:80] if sw.error else ''} |")
    out = ["\n".join(lines)]
    cmp = []
    for test, frac, what in (("calls", 1 / 8, "calls/s"), ("register", 1 / 4, "digest REGISTERs/s")):
        k, h = by.get(("kamailio", test)), by.get(("hivepbx", test))
        if k and h and k.max_rate and h.max_rate:
            ratio = h.max_rate / k.max_rate
            # an open-ended sweep only gives a lower bound of that element's maximum
            k_open = k.limited_by.startswith(("the step list", "SIPp"))
            h_open = h.limited_by.startswith(("the step list", "SIPp"))
            if ratio >= frac:
                verdict = "MET" if not k_open else "not conclusive: Kamailio's figure is only a lower bound"
            else:
                verdict = "MISSED" if not h_open else "not conclusive: hivepbx's figure is only a lower bound"
            line = (f"- {what}: hivepbx {h.max_rate:.0f}/s vs Kamailio {k.max_rate:.0f}/s = 1/{1 / ratio:.1f} "
                    f"(target ≥ 1/{1 / frac:.0f}: {verdict})")
            if h.us_at_max and k.us_at_max:
                line += (f"; CPU per call {h.us_at_max:.0f} µs vs {k.us_at_max:.0f} µs, i.e. hivepbx needs "
                         f"{h.us_at_max / k.us_at_max:.1f}× Kamailio's CPU (Kamailio's one-core capacity "
                         f"≈ {1e6 / k.us_at_max:.0f}/s when SIPp is not the limit)")
            cmp.append(line)
    for m in mems:
        if m.target != "hivepbx":
            continue
        limit = 2048 if m.what == "registrations" else 64 * 1024
        cmp.append(f"- memory per {'registration' if m.what == 'registrations' else 'call in progress'}: "
                   f"{m.per_item_bytes / 1024:.2f} KiB over {m.count} (target ≤ {limit // 1024} KiB: "
                   f"{'MET' if m.count and m.per_item_bytes <= limit else 'MISSED'})")
    if cmp:
        out.append("\n".join(c for c in cmp if c))
    if mems:
        ml = ["| element | memory test | count | PSS before MiB | PSS peak MiB | PSS after MiB | KiB each | note |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
        for m in mems:
            ml.append(f"| {m.target} | {m.what} | {m.count} | {m.before_kib / 1024:.1f} | {m.peak_kib / 1024:.1f} | "
                      f"{m.after_kib / 1024:.1f} | {m.per_item_bytes / 1024:.2f} | {m.note} |")
        out.append("\n".join(ml))
    return "\n\n".join(out)


def report(data: dict) -> str:
    """The tables of a run, from its --json file (the verdicts are derived again)."""
    sweeps = []
    for d in data["sweeps"]:
        steps = [Step(**x) for x in d.pop("steps")]
        rep = Step(**d.pop("repeat")) if d.get("repeat") else None
        d.pop("repeat", None)
        sw = Sweep(**d, steps=steps, repeat=rep)
        if sw.steps:
            sw.limited_by = explain_limit(sw)
        sweeps.append(sw)
    mems = [Memory(**m) for m in data.get("memory", [])]
    out = [f"# {data.get('command', '')}", f"# {json.dumps(data.get('machine', {}))}", "", table(sweeps), "",
           summary(sweeps, mems)]
    for test, lines in (data.get("profile") or {}).items():
        out += ["", f"# py-spy, hivepbx {test}", *lines]
    return "\n".join(out)


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=("kamailio", "hivepbx", "both"), default="both")
    ap.add_argument("--test", choices=("calls", "register", "memory", "both", "all"), default="both",
                    help="both = calls + register; all = calls + register + memory")
    ap.add_argument("--quick", action="store_true", help="short smoke sweep (< 2 min)")
    ap.add_argument("--call-rates", type=lambda v: [int(x) for x in v.split(",")], help="e.g. 100,200,500")
    ap.add_argument("--reg-rates", type=lambda v: [int(x) for x in v.split(",")])
    ap.add_argument("--step-seconds", type=float)
    ap.add_argument("--no-repeat", action="store_true")
    ap.add_argument("--profile", choices=("calls", "register"), action="append", default=[],
                    help="after the sweeps, profile the hivepbx node with py-spy at ~80 %% of its max rate "
                         "(repeatable)")
    ap.add_argument("--profile-rate", type=int, help="rate for --profile (default: 80 %% of the measured max)")
    ap.add_argument("--work-dir", help="where logs, SIPp statistics and the throwaway data dir go")
    ap.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    ap.add_argument("--report", metavar="FILE", help="print the tables of an earlier run's --json file and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(Path(args.report).read_text())))
        return 0

    for tool in ("sipp", "taskset"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed", file=sys.stderr)
            return 2
    if args.target in ("kamailio", "both") and shutil.which("kamailio") is None:
        print("error: kamailio is not installed (apt-get install kamailio)", file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("error: needs two cores (element on core 0, SIPp on core 1)", file=sys.stderr)
        return 2
    busy = [a for p in (UAS_PORT, UAC_CALL_PORT, UAC_REG_PORT, KAM_PROXY_PORT, KAM_REGISTRAR_PORT,
                        HIVE_SIP_PORT) for a in port_users(p)]
    if busy:
        print(f"error: UDP ports of the bench are in use (another bench running?): {', '.join(busy)}",
              file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(GEN_CORE)})  # this script samples from the generator core
    # SIPp wants (open calls + sockets) below the file limit; the node 4 RTP sockets a call
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        pass  # not root: keep the limit, SIPp then only warns

    plan = QUICK if args.quick else FULL
    if args.step_seconds:
        plan.step_s = args.step_seconds
    if args.no_repeat:
        plan.repeat = False
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hivepbx-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    tests = {"both": ["calls", "register"], "all": ["calls", "register", "memory"]}.get(args.test, [args.test])
    names = ["kamailio", "hivepbx"] if args.target == "both" else [args.target]
    mach = machine()
    cmdline = " ".join(["bench/sipp_load.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"# {cmdline}\n# work dir {work}\n# {json.dumps(mach)}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sweeps: list[Sweep] = []
    mems: list[Memory] = []
    profile: dict[str, list[str]] = {}
    sipp = Sipp(work)
    started = time.monotonic()
    try:
        for name in names:
            tdir = work / name
            tdir.mkdir(exist_ok=True)
            target: Target = Kamailio(tdir) if name == "kamailio" else Hivepbx(tdir, 2 * plan.mem_regs)
            sipp.work = tdir
            if isinstance(target, Hivepbx):
                # what the node under test runs (compiled or not: the figures differ by about 1.4x)
                print(f"  {run_cmd([target.exe, '--version'], timeout=60).stdout.strip()}", flush=True)
                try:
                    target.provision()
                except Exception as e:
                    print(f"  hivepbx provisioning failed: {e}", flush=True)
                    sweeps += [Sweep(name, t, error=f"provisioning failed: {e}") for t in tests if t != "memory"]
                    continue
            for test in tests:
                print(f"== {name} {test}", flush=True)
                if test == "calls":
                    sweeps.append(bench_calls(target, sipp, plan, args.call_rates or plan.call_rates))
                elif test == "register":
                    sweeps.append(bench_register(target, sipp, plan, args.reg_rates or plan.reg_rates))
                else:
                    done = {(s.target, s.test): s for s in sweeps}
                    reg = done.get((name, "register"))
                    call = done.get((name, "calls"))
                    reg_rate = min(2000, _nice(reg.max_rate * 0.5)) if reg and reg.max_rate else 500
                    call_rate = min(plan.mem_call_rate, _nice(call.max_rate * 0.5)) if call and call.max_rate \
                        else plan.mem_call_rate
                    mems += bench_memory(target, sipp, plan, reg_rate, call_rate)
            for ptest in args.profile if isinstance(target, Hivepbx) else ():
                sw = next((s for s in sweeps if s.target == name and s.test == ptest), None)
                rate = args.profile_rate or (_nice(sw.max_asked * 0.8) if sw and sw.max_asked else 100)
                print(f"== hivepbx profile ({ptest} at {rate}/s)", flush=True)
                try:
                    profile[ptest] = profile_node(target, sipp, plan, rate, max(plan.step_s, 10), ptest)
                except Exception as e:
                    profile[ptest] = [f"profiling failed: {e}"]
                print("\n".join(profile[ptest]), flush=True)
    finally:
        PROCS.stop_all()

    print(f"\n# per step ({time.monotonic() - started:.0f} s in all)\n")
    print(table(sweeps))
    print("\n# maxima\n")
    print(summary(sweeps, mems))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": cmdline, "machine": mach, "sweeps": [asdict(s) for s in sweeps],
             "memory": [asdict(m) for m in mems], "profile": profile}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
