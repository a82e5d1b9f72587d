#!/usr/bin/env python3
"""SIPp calls/s through the hivepbx SBC, next to Kamailio as a stateful proxy.

Both relay the same call (bench/scenarios/uac_call.xml from 127.0.0.2 to the SIPp UAS on
127.0.0.1:15090) with the same method as bench/sipp_load.py (whose machinery this reuses:
element on core 0, SIPp on core 1, stepped rates then bisection, a step passes below 0.1 %
failed calls). Kamailio runs bench/kamailio/proxy.cfg (tm + record_route + t_relay). The
SBC runs `hivepbx sbc` with the UAS as its only "node": each call is dispatched (hash of
the tenant), forwarded with its Via list replaced and Contacts masqueraded with sealed
tokens, and every in-dialog request is routed back by its token. The SBC does more per
message than Kamailio's proxy (topology hiding, AES-GCM tokens, the Guard's per-source
accounting), so the comparison is the price of those, in one Python process.

Prints figures only; nothing here is a test. Loopback only, every load bounded by SIPp -m
and -timeout.

    bench/sbc_load.py [--target kamailio|sbc|both] [--quick] [--call-rates 100,200,...]
                      [--step-seconds N] [--no-repeat] [--json FILE] [--workers N]
                      [--max-loop-lag S]

``--workers N`` (N > 1) runs the SBC as N processes sharing its port (sbc/workers.py,
SO_REUSEPORT) allowed on every core, so SIPp shares core 1 with them: the figure is what
the machine gives, not a per-core one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sipp_load as L  # noqa: E402  (bench/ is a directory of scripts, not a package)

SBC_PORT, SBC_HTTP_PORT = 15076, 15077


class SbcTarget(L.Target):
    name = "sbc"
    calls_addr = f"127.0.0.1:{SBC_PORT}"
    dialled = L.HIVE_CALLEE

    def __init__(self, work: Path, extra_sbc: str = "", workers: int = 1) -> None:
        super().__init__(work)
        #: more `[sbc]` lines (bench/sbc_overload.py sets max_loop_lag)
        self.extra_sbc = extra_sbc
        self.workers = workers
        exe = L.REPO / ".venv" / "bin" / "hivepbx"
        self.exe = str(exe) if exe.exists() else (shutil.which("hivepbx") or str(exe))

    def start(self, test: str) -> None:
        cfg = self.work / "sbc.toml"
        cfg.write_text(
            "[sbc]\n"
            f'listen = ["udp:127.0.0.1:{SBC_PORT}"]\n'
            f'http = "127.0.0.1:{SBC_HTTP_PORT}"\n'
            'secret = "bench-secret-bench-secret"\n'
            "probe_interval = 0\n"  # the SIPp UAS would take an OPTIONS for a call
            "keepalive_interval = 0\n"
            'log_level = "WARNING"\n'
            f"{self.extra_sbc}"
            f"workers = {self.workers}\n"
            "[[nodes]]\n"
            'id = "uas"\n'
            f'address = "{L.UAS_HOST}:{L.UAS_PORT}"\n'
            "[protection]\n"
            f'trusted = ["{L.UAC_HOST}"]\n'  # the load generator is one source: not a flood
        )
        cores = L.SUT_CORE if self.workers == 1 else f"0-{(os.cpu_count() or 2) - 1}"
        self.proc = L.PROCS.start(["taskset", "-c", cores, self.exe, "sbc", "--config", str(cfg)],
                                  self.work / f"{self.name}.log")
        L.wait_bound("127.0.0.1", SBC_PORT, self.proc, timeout=30)
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", choices=("kamailio", "sbc", "both"), default="both")
    ap.add_argument("--quick", action="store_true", help="short smoke sweep (about a minute)")
    ap.add_argument("--call-rates", type=lambda v: [int(x) for x in v.split(",")])
    ap.add_argument("--step-seconds", type=float)
    ap.add_argument("--no-repeat", action="store_true", help="do not run the best rate again")
    ap.add_argument("--work-dir")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--workers", type=int, default=1, help="SBC worker processes (sbc/workers.py)")
    ap.add_argument("--max-loop-lag", type=float, help="the SBC's [sbc] max_loop_lag (0: no load shedding)")
    args = ap.parse_args(argv)
    for tool in ("sipp", "taskset") + (("kamailio",) if args.target != "sbc" else ()):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed", file=sys.stderr)
            return 2
    busy = [a for p in (L.UAS_PORT, L.UAC_CALL_PORT, L.KAM_PROXY_PORT, SBC_PORT) for a in L.port_users(p)]
    if busy:
        print(f"error: UDP ports of the bench are in use: {', '.join(busy)}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(L.GEN_CORE)})
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        pass
    plan = L.QUICK if args.quick else L.FULL
    if args.step_seconds:
        plan.step_s = args.step_seconds
    if args.no_repeat:
        plan.repeat = False
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="hivepbx-sbc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    names = ["kamailio", "sbc"] if args.target == "both" else [args.target]
    print(f"# bench/sbc_load.py {' '.join(argv if argv is not None else sys.argv[1:])}\n# work dir {work}\n"
          f"# {json.dumps(L.machine())}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sweeps = []
    sipp = L.Sipp(work)
    try:
        for name in names:
            tdir = work / name
            tdir.mkdir(exist_ok=True)
            target = L.Kamailio(tdir) if name == "kamailio" else SbcTarget(
                tdir, "" if args.max_loop_lag is None else f"max_loop_lag = {args.max_loop_lag}\n", workers=args.workers)
            sipp.work = tdir
            print(f"== {name} calls", flush=True)
            sweeps.append(L.bench_calls(target, sipp, plan, args.call_rates or plan.call_rates))
    finally:
        L.PROCS.stop_all()
    print("\n# per step\n")
    print(L.table(sweeps))
    print("\n# maxima\n")
    print(L.summary(sweeps, []))
    if args.json:
        from dataclasses import asdict

        Path(args.json).write_text(json.dumps({"sweeps": [asdict(s) for s in sweeps]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
