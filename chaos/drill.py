"""Chaos drill: a node of a three-node cluster is killed (SIGKILL) while callers wait in a shared
ACD queue, and the drill reports what the survivors did about it.

Started for real, all on loopback: etcd (Debian etcd-server), the Kafka-protocol broker (tansu),
three `hivepbx node` processes, SIPp agents (registered through different nodes, answering every
call) and one SIPp caller per node calling the queue, every call as a different extension so
the agent side can tell them apart. Mid-load one node gets SIGKILL. Afterwards the dead node is
started again on its data directory (its CDR spool replays) and the report says:

- calls on the survivors answered in the order they joined (order inversions must be 0),
- agents offered two calls at once (must be 0),
- registrations made through the dead node still reached (agents it registered get calls),
- CDRs complete: every call that ended before the kill or on a survivor has its CDR once,
- time from the kill until the dead node left the cluster membership.

Every load is bounded (calls, rate, SIPp timeouts); every process is stopped at the end.

    .venv/bin/python -m chaos.drill [--calls-per-node 12] [--rate 0.5] [--agents 6] [--json FILE]

The harness that starts etcd, tansu and SIPp is the test suite's (tests/peers): one way to run
real components, for tests and drills alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.peers.etcd import EtcdServer  # noqa: E402
from tests.peers.kafka import Tansu  # noqa: E402
from tests.peers.net import free_port  # noqa: E402
from tests.peers.sipp import Sipp, SippResult  # noqa: E402

DOMAIN = "drill.example"
QUEUE = "600"
AGENT_PW = "agent-pw-{}"
CALLER_PW = "caller-pw-{}"
SCENARIO = Path(__file__).resolve().parent / "sipp" / "uac_queue_caller.xml"


@dataclass
class NodeProc:
    node_id: str
    sip_port: int
    http_port: int
    data_dir: Path
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/health", timeout=1) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None


@dataclass
class Report:
    nodes: int = 3
    agents: int = 0
    calls_offered: int = 0
    killed_node: str = ""
    kill_at_s: float = 0.0
    calls_on_survivors: int = 0
    survivor_calls_answered_by_agent: int = 0
    order_inversions: int = 0
    agents_double_offered: int = 0
    agents_registered_through_dead_node: int = 0
    those_agents_offered_calls_after_kill: int = 0
    calls_ended_before_kill_or_on_survivors: int = 0
    cdrs_found_for_them: int = 0
    cdrs_duplicated: int = 0
    left_membership_after_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.order_inversions == 0 and self.agents_double_offered == 0
            and self.cdrs_found_for_them == self.calls_ended_before_kill_or_on_survivors
            and self.cdrs_duplicated == 0 and self.left_membership_after_s is not None
            and self.survivor_calls_answered_by_agent > 0
        )

    def text(self) -> str:
        rows = [
            ("nodes / agents", f"{self.nodes} / {self.agents}"),
            ("calls offered to the queue", self.calls_offered),
            ("node killed (SIGKILL)", f"{self.killed_node} at {self.kill_at_s:.1f} s"),
            ("calls on the survivors", self.calls_on_survivors),
            ("  of which put through to an agent", self.survivor_calls_answered_by_agent),
            ("  answered out of join order (must be 0)", self.order_inversions),
            ("agents offered two calls at once (must be 0)", self.agents_double_offered),
            ("agents registered through the dead node", self.agents_registered_through_dead_node),
            ("  of which offered calls after the kill", self.those_agents_offered_calls_after_kill),
            ("calls ended before the kill or on survivors", self.calls_ended_before_kill_or_on_survivors),
            ("  with their CDR (after the spool replayed)", self.cdrs_found_for_them),
            ("  CDRs duplicated (must be 0)", self.cdrs_duplicated),
            ("dead node left the membership after",
             "never" if self.left_membership_after_s is None else f"{self.left_membership_after_s:.2f} s"),
        ]
        width = max(len(k) for k, _ in rows)
        out = [f"{k:<{width}}  {v}" for k, v in rows]
        out += [f"note: {n}" for n in self.notes]
        out.append("RESULT: " + ("PASS" if self.passed else "FAIL"))
        return "\n".join(out)


def _hivepbx() -> list[str]:
    exe = Path(sys.executable).with_name("hivepbx")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from node.cli import main; sys.exit(main())"]


def _start_node(n: NodeProc, etcd: str, kafka: str, rtp: tuple[int, int]) -> None:
    n.log = n.data_dir / "node.log"
    n.data_dir.mkdir(parents=True, exist_ok=True)
    argv = _hivepbx() + [
        "node", "--etcd", etcd, "--kafka", kafka, "--node-id", n.node_id, "--data-dir", str(n.data_dir),
        "--listen", f"udp:127.0.0.1:{n.sip_port}", "--listen", f"tcp:127.0.0.1:{n.sip_port}",
        "--http", f"127.0.0.1:{n.http_port}", "--rtp-ports", f"{rtp[0]}-{rtp[1]}", "--log-level", "WARNING",
    ]
    n.proc = subprocess.Popen(argv, stdout=open(n.log, "ab"), stderr=subprocess.STDOUT, cwd=REPO,
                              start_new_session=True)


async def _wait_healthy(n: NodeProc, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if n.proc is not None and n.proc.poll() is not None:
            raise RuntimeError(f"{n.node_id} exited:\n{n.log.read_text()[-3000:] if n.log else ''}")
        h = n.health()
        if h is not None and h.get("cluster"):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{n.node_id} not healthy within {timeout}s:\n{n.log.read_text()[-3000:] if n.log else ''}")


def _stop_node(n: NodeProc, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if n.proc is None or n.proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(n.proc.pid, sig)
    try:
        n.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(n.proc.pid, signal.SIGKILL)
        n.proc.wait(5)


async def _provision(etcd: str, prefix: str, agents: list[str], callers: list[str]) -> None:
    from cluster.etcd import open_etcd
    from node.pbx import queue_calls

    stores = await open_etcd((etcd,), prefix)
    try:
        t = await stores.config.create_tenant("drill", DOMAIN)
        for a in agents:
            await stores.config.create_extension(t.id, a, AGENT_PW.format(a))
        for c in callers:
            await stores.config.create_extension(t.id, c, CALLER_PW.format(c))
        await queue_calls.put(stores.config, t.id, QUEUE, {
            "members": agents, "strategy": "longest-idle", "static_members": True, "wrapup": 0,
            "max_wait": 120,
        })
    finally:
        await stores.aclose()


def _user(msg) -> str:
    """The extension in a message's From header."""
    value = msg.header("From") or ""
    return value.split("sip:", 1)[1].split("@", 1)[0] if "sip:" in value else ""


def offer_spans(received, dead_port: int, kill_at: float) -> list[tuple[float, float, object]]:
    """(start, end, first INVITE) of every offer an agent's phone got, from the messages it
    received. An offer ends at the first BYE of its dialog, or at the first CANCEL when no BYE
    came (unanswered); later copies are retransmissions of a request the phone did not answer
    (SIPp drops its side of a call on a CANCEL that crossed its 200 and then ignores the BYE, so
    the node repeats the BYE for 32 s): they do not keep the offer going. An offer made by the
    node that died ends when it died (its BYE never comes); one never ended lasts forever."""
    by_cid: dict[str, list] = {}
    for m in received:
        cid = m.header("Call-ID")
        if cid:
            by_cid.setdefault(cid, []).append(m)
    spans = []
    for msgs in by_cid.values():
        invites = [m for m in msgs if m.first_line.startswith("INVITE")]
        if not invites:
            continue
        start = invites[0].at
        byes = [m.at for m in msgs if m.first_line.startswith("BYE")]
        cancels = [m.at for m in msgs if m.first_line.startswith("CANCEL")]
        end = min(byes) if byes else min(cancels) if cancels else float("inf")
        if f":{dead_port}" in (invites[0].header("Via") or ""):
            end = min(end, kill_at)
        spans.append((start, end, invites[0]))
    spans.sort(key=lambda s: (s[0], s[1]))
    return spans


def overlapping(spans: list[tuple[float, float, object]]) -> list[tuple[tuple, tuple]]:
    """Pairs of offers to one phone where the later began before the earlier ended."""
    out = []
    for i, later in enumerate(spans):
        out += [(earlier, later) for earlier in spans[:i] if later[0] < earlier[1]]
    return out


async def drill(calls_per_node: int, rate: float, n_agents: int, hold_ms: int, kill_after: float,
                work: Path) -> Report:
    rep = Report(agents=n_agents)
    etcd = EtcdServer(str(work)).start()
    broker = Tansu(str(work / "tansu.log"))
    broker.start()
    nodes = [
        NodeProc(f"drill-{i}", free_port(), free_port(), work / f"node{i}") for i in (1, 2, 3)
    ]
    rtp_base = 33000  # below the ephemeral range is taken by the tests; each node its own block
    agents = [str(2001 + i) for i in range(n_agents)]
    callers = {n.node_id: [str(3001 + 1000 * k + i) for i in range(calls_per_node)] for k, n in enumerate(nodes)}
    sipps: list[Sipp] = []
    try:
        await _provision(etcd.endpoint, "/hivepbx/", agents, [c for cs in callers.values() for c in cs])
        for k, n in enumerate(nodes):
            _start_node(n, etcd.endpoint, broker.bootstrap, (rtp_base + 600 * k, rtp_base + 600 * k + 599))
        for n in nodes:
            await _wait_healthy(n)
        # agents: registered round-robin through the nodes, answering every call they get
        agent_node: dict[str, NodeProc] = {}
        agent_runs: dict[str, Sipp] = {}
        for i, a in enumerate(agents):
            n = nodes[i % len(nodes)]
            agent_node[a] = n
            run = Sipp("uas_register_then_answer.xml", n.target, workdir=work / f"agent-{a}", user=a, domain=DOMAIN,
                       auth_user=a, auth_password=AGENT_PW.format(a), ooc_scenario="uas_answer.xml",
                       duration_ms=600_000, timeout=600)
            sipps.append(run)
            agent_runs[a] = run
            await run.start()
        await asyncio.sleep(2.0)  # registrations in etcd (the drill checks them through a survivor below)
        victim = nodes[2]
        rep.killed_node = victim.node_id
        rep.agents_registered_through_dead_node = sum(1 for a in agents if agent_node[a] is victim)
        # callers: one SIPp per node, every call a different extension
        caller_runs: dict[str, Sipp] = {}
        for n in nodes:
            run = Sipp(SCENARIO, n.target, workdir=work / f"callers-{n.node_id}", service=QUEUE, domain=DOMAIN,
                       calls=calls_per_node, rate=rate, limit=calls_per_node, duration_ms=hold_ms,
                       timeout=calls_per_node / rate + hold_ms / 1000 + 60, recv_timeout_ms=30_000,
                       inf=[(c, f"[authentication username={c} password={CALLER_PW.format(c)}]")
                            for c in callers[n.node_id]])
            sipps.append(run)
            caller_runs[n.node_id] = run
        t0 = time.time()
        for run in caller_runs.values():
            await run.start()
        await asyncio.sleep(kill_after)
        kill_at = time.time()
        rep.kill_at_s = kill_at - t0
        _stop_node(victim, signal.SIGKILL)
        survivor = nodes[0]
        while time.time() - kill_at < 30:
            h = survivor.health()
            if h and victim.node_id not in h["cluster"]["members"]:
                rep.left_membership_after_s = time.time() - kill_at
                break
            await asyncio.sleep(0.05)
        results: dict[str, SippResult] = {}
        for node_id, run in caller_runs.items():
            results[node_id] = await run.wait()
        agent_results = {a: await run.stop() for a, run in agent_runs.items()}

        # --- what the callers saw: join time of each call (its first INVITE), whether it ended
        join: dict[str, float] = {}
        ended: dict[str, float] = {}
        node_of: dict[str, str] = {}
        for node_id, res in results.items():
            first_invite: dict[str, tuple[float, str]] = {}
            for m in res.sent("INVITE"):
                cid = m.header("Call-ID")
                if cid not in first_invite:
                    first_invite[cid] = (m.at, _user(m))
            for cid, (at, user) in first_invite.items():
                join[user] = at
                node_of[user] = node_id
            for m in res.received(200):
                if (m.header("CSeq") or "").endswith("BYE"):
                    for cid, (_, user) in first_invite.items():
                        if m.header("Call-ID") == cid:
                            ended[user] = m.at
        rep.calls_offered = len(join)
        # --- what the agents saw: offers (INVITE) and their ends, per agent
        offer_at: dict[str, float] = {}
        offered_to: dict[str, str] = {}
        for a, res in agent_results.items():
            # an offer by the node that died ends with it (the ACD frees the agent when the
            # node leaves the membership)
            spans = offer_spans(res.received(), victim.sip_port, kill_at)
            for start, _, invite in spans:
                user = _user(invite)
                if user and user not in offer_at:
                    offer_at[user] = start
                    offered_to[user] = a
            overlaps = overlapping(spans)
            rep.agents_double_offered += bool(overlaps)
            for first, second in overlaps:
                rep.notes.append(f"agent {a}: offered at {second[0] - t0:.2f}s while in the call offered at "
                                 f"{first[0] - t0:.2f}s (ended {first[1] - t0:.2f}s)")
            if agent_node[a] is victim and any(s >= kill_at for s, _, _ in spans):
                rep.those_agents_offered_calls_after_kill += 1
        # --- order on the survivors: a call that joined clearly earlier is offered earlier
        survivors = {n.node_id for n in nodes if n is not victim}
        surv_calls = [u for u in join if node_of[u] in survivors]
        rep.calls_on_survivors = len(surv_calls)
        answered = sorted((join[u], offer_at[u], u) for u in surv_calls if u in offer_at)
        rep.survivor_calls_answered_by_agent = len(answered)
        for i in range(len(answered)):
            for j in range(i + 1, len(answered)):
                # joined clearly later yet offered clearly earlier (offers decided in one step go
                # out within milliseconds of each other, through different nodes)
                if answered[j][0] - answered[i][0] > 0.2 and answered[j][1] < answered[i][1] - 0.2:
                    rep.order_inversions += 1
                    rep.notes.append(
                        f"out of order: {answered[i][2]} joined at {answered[i][0] - t0:.2f}s, offered at "
                        f"{answered[i][1] - t0:.2f}s; {answered[j][2]} joined at {answered[j][0] - t0:.2f}s, "
                        f"offered at {answered[j][1] - t0:.2f}s")
        # --- CDRs: restart the dead node on its data dir so its spool replays, then count
        _start_node(victim, etcd.endpoint, broker.bootstrap, (rtp_base + 1200, rtp_base + 1799))
        await _wait_healthy(victim)
        await asyncio.sleep(2.0)
        for n in nodes:
            _stop_node(n)
        want = [u for u in join if u in ended and (node_of[u] in survivors or ended[u] < kill_at)]
        rep.calls_ended_before_kill_or_on_survivors = len(want)
        cdr_callers: Counter[tuple[str, str]] = Counter()
        for n in nodes:
            out = subprocess.run(_hivepbx() + ["cdr", "list", "drill", "--data-dir", str(n.data_dir), "--json",
                                               "--etcd", etcd.endpoint, "--limit", "10000"],
                                 capture_output=True, text=True, timeout=60, cwd=REPO)
            if out.returncode != 0:
                rep.notes.append(f"cdr list on {n.node_id} failed: {out.stderr.strip()[:200]}")
                continue
            for c in json.loads(out.stdout):
                cdr_callers[(n.node_id, c["caller"])] += 1
        rep.cdrs_found_for_them = sum(1 for u in want if cdr_callers[(node_of[u], u)] >= 1)
        rep.cdrs_duplicated = sum(1 for u in want if cdr_callers[(node_of[u], u)] > 1)
        lost = [u for u in join if node_of[u] == victim.node_id and u not in ended and join[u] < kill_at]
        if lost:
            rep.notes.append(f"{len(lost)} calls were in progress on {victim.node_id} when it died "
                             "(their media and signalling died with it; no CDR can exist for them)")
        late = [u for u in join if node_of[u] == victim.node_id and join[u] >= kill_at]
        if late:
            rep.notes.append(f"{len(late)} calls were sent to {victim.node_id} after it died (SIPp aims at one "
                             "node; behind the SBC they go to a survivor)")
        replayed = [u for u in want if node_of[u] == victim.node_id]
        rep.notes.append(f"{len(replayed)} of the CDRs checked are the dead node's, found after its restart")
        return rep
    finally:
        for s in sipps:
            if s.running:
                with contextlib.suppress(Exception):
                    await s.stop(grace=1.0)
        for n in nodes:
            _stop_node(n, signal.SIGKILL, 5)
        broker.stop()
        etcd.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls-per-node", type=int, default=12)
    ap.add_argument("--rate", type=float, default=0.5, help="new calls per second per node")
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--hold-ms", type=int, default=6000, help="how long a caller stays after the queue answers")
    ap.add_argument("--kill-after", type=float, default=12.0, help="seconds into the load the node dies")
    ap.add_argument("--work-dir", help="keep logs and SIPp traces here (default: a temporary dir)")
    ap.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    args = ap.parse_args(argv)
    for tool in ("sipp", "etcd"):
        if shutil.which(tool) is None:
            print(f"chaos drill: {tool} is missing: run scripts/install-deps --test", file=sys.stderr)
            return 2
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="hivepbx-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    rep = asyncio.run(drill(args.calls_per_node, args.rate, args.agents, args.hold_ms, args.kill_after, work))
    print(rep.text())
    print(f"(logs and SIPp traces in {work})")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(rep) | {"passed": rep.passed}, indent=2))
    return 0 if rep.passed else 1


if __name__ == "__main__":
    sys.exit(main())
