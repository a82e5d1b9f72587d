"""The calls the SBC tenant-limit tests place: SIPp answering as the node, and a tenant's
caller dialling a number that leaves the platform (so it counts against the tenant)."""

from __future__ import annotations

from pathlib import Path

from tests.peers.net import free_port
from tests.peers.sipp import Sipp

DOMAIN = "alpha.example"
EXTERNAL = "0034911234567"  # leaves the platform: counted against the tenant


async def node_uas(tmp_path: Path, calls: int, scenario: str = "uas_answer.xml", **kw) -> tuple[Sipp, int]:
    """SIPp listening as the SBC's node; (its Sipp, its port)."""
    port = free_port()
    uas = Sipp(scenario, workdir=tmp_path / "uas", local_port=port, calls=calls, timeout=90, **kw)
    await uas.start()
    await uas.wait_listening()
    return uas, port


def external_caller(target: str, workdir: Path, hold_ms: int) -> Sipp:
    """Extension 1001 of the tenant calling EXTERNAL through ``target``, holding ``hold_ms``."""
    return Sipp("uac_call.xml", target, workdir=workdir, service=EXTERNAL, user="1001", domain=DOMAIN,
                calls=1, duration_ms=hold_ms, timeout=40)
