"""The peers of one test, all stopped at its end whatever happened (the ``peers`` fixture)."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.peers.baresip import Baresip
from tests.peers.sipp import Sipp, sipp_phone, sipp_uas


class PeerGroup:
    """Creates peers with work directories under one test's ``tmp_path`` and stops them all in
    ``close()``: baresip processes, and SIPp processes still running."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._baresips: list[Baresip] = []
        self._sipps: list[Sipp] = []
        self._n = itertools.count(1)

    def _dir(self, kind: str) -> Path:
        return self.workdir / f"{kind}-{next(self._n)}"

    async def baresip(self, account: str, password: str | None = None, registrar: str | None = None,
                      **options: object) -> Baresip:
        """A started baresip (see ``Baresip`` for the options)."""
        ua = Baresip(account, password, registrar, workdir=self._dir(f"baresip-{account.split('@')[0]}"),
                     **options)  # type: ignore[arg-type]
        self._baresips.append(ua)
        await ua.start()
        return ua

    def sipp(self, scenario: str | Path, target: str | None = None, **options: object) -> Sipp:
        """A SIPp run, not started: ``await peers.sipp("uac_call", pbx, service="1002").run()``."""
        run = Sipp(scenario, target, workdir=self._dir("sipp"), **options)  # type: ignore[arg-type]
        self._sipps.append(run)
        return run

    async def sipp_uas(self, scenario: str | Path = "uas_answer", **options: object) -> Sipp:
        """A started SIPp callee, listening (its ``address`` is "127.0.0.1:port")."""
        uas = sipp_uas(scenario, workdir=self._dir("sipp-uas"), **options)  # type: ignore[arg-type]
        self._sipps.append(uas)
        await uas.start()
        await uas.wait_listening()
        return uas

    async def sipp_phone(self, registrar: str, **options: object) -> Sipp:
        """A started SIPp phone registering at ``registrar`` (see ``sipp_phone``)."""
        phone = sipp_phone(registrar, workdir=self._dir("sipp-phone"), **options)  # type: ignore[arg-type]
        self._sipps.append(phone)
        await phone.start()
        return phone

    async def close(self) -> None:
        for ua in self._baresips:
            await ua.stop()
        for run in self._sipps:
            if run.running:
                await run.stop(grace=1.0)
