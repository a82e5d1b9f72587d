#!/usr/bin/env python3
"""The SBC offered about twice its capacity: does load shedding keep the calls it accepts whole?

Same set-up as bench/sbc_load.py (`hivepbx sbc` on core 0 with the SIPp UAS as its one
node, SIPp on core 1), one step at ``--rate`` calls/s for ``--seconds`` with
bench/scenarios/sbc_uac_call_or_shed.xml: a call the SBC refuses with 503 (shed) is ACKed
and logged, not failed. Prints offered, shed, accepted, accepted-and-completed and the
failure rate among accepted calls (the goal: below 0.1 %), with shedding on (the default
``max_loop_lag``) and, with ``--compare``, off.

    bench/sbc_overload.py [--rate 1600] [--seconds 15] [--max-loop-lag 0.1] [--compare]

Prints figures only; nothing here is a test. Loopback only, bounded by SIPp -m and -timeout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sbc_load as S  # noqa: E402
import sipp_load as L  # noqa: E402


def run_once(work: Path, rate: int, seconds: float, max_loop_lag: float, hold_ms: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    target = S.SbcTarget(work, f"max_loop_lag = {max_loop_lag}\n")
    target.start("calls")
    sipp = L.Sipp(work)
    uas = sipp.uas()
    m = int(rate * seconds)
    log_file = work / "uac_logs.log"
    stf = work / "uac.csv"
    argv = sipp.argv("sbc_uac_call_or_shed.xml", target.calls_addr, "-s", target.dialled, "-i", L.UAC_HOST,
                     "-p", str(L.UAC_CALL_PORT), "-mp", "15900", "-cp", "15800", "-d", str(hold_ms),
                     "-r", str(rate), "-rp", "1000", "-m", str(m), "-l", str(max(100, rate * 10)),
                     "-recv_timeout", "8000", "-timeout", str(int(seconds * 2 + 30)),
                     "-trace_stat", "-stf", str(stf), "-fd", "1", "-trace_logs", "-log_file", str(log_file),
                     "-trace_err", "-error_file", str(work / "uac_errors.log"))
    c0 = L.cpu_seconds(target.pids)
    t0 = time.monotonic()
    uac = L.PROCS.start(argv, work / "uac.log")
    while uac.poll() is None and time.monotonic() - t0 < seconds * 2 + 45:
        time.sleep(0.25)
    L.PROCS.stop(uac)
    cpu = L.cpu_seconds(target.pids) - c0
    st = L.parse_stats(stf, m)
    try:
        shed = sum(1 for ln in log_file.read_text(errors="replace").splitlines() if ln.startswith("SHED "))
    except OSError:
        shed = 0
    target.stop()
    L.PROCS.stop(uas)
    accepted = st.created - shed
    failed = max(m - st.successful, st.failed)
    return {
        "max_loop_lag": max_loop_lag, "asked": rate, "offered": round(st.offered, 1), "created": st.created,
        "shed": shed, "accepted": accepted, "completed": st.successful - shed, "failed": failed,
        "failed_pct_of_accepted": round(100.0 * failed / max(1, accepted), 3),
        "accepted_per_s": round(accepted / max(seconds, 1e-9), 1),
        "cpu_us_per_offered_call": round(cpu * 1e6 / max(1, st.created), 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1600, help="offered calls/s (about twice the capacity)")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--hold-ms", type=int, default=1000)
    ap.add_argument("--max-loop-lag", type=float, default=0.1)
    ap.add_argument("--compare", action="store_true", help="run again with shedding off")
    args = ap.parse_args(argv)
    for tool in ("sipp", "taskset"):
        if shutil.which(tool) is None:
            print(f"error: {tool} is not installed", file=sys.stderr)
            return 2
    busy = [a for p in (L.UAS_PORT, L.UAC_CALL_PORT, S.SBC_PORT) for a in L.port_users(p)]
    if busy:
        print(f"error: UDP ports of the bench are in use: {', '.join(busy)}", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {int(L.GEN_CORE)})
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (200_000, 200_000))
    except (ValueError, OSError):
        pass
    work = Path(tempfile.mkdtemp(prefix="hivepbx-sbc-overload-"))
    print(f"# bench/sbc_overload.py {' '.join(argv if argv is not None else sys.argv[1:])}\n# work dir {work}", flush=True)
    lags = [args.max_loop_lag] + ([0.0] if args.compare else [])
    try:
        for lag in lags:
            r = run_once(work / f"lag-{lag:g}", args.rate, args.seconds, lag, args.hold_ms)
            print("  " + "  ".join(f"{k} {v}" for k, v in r.items()), flush=True)
            time.sleep(2)
    finally:
        L.PROCS.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
