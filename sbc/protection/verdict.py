"""What the edge does with one message: accept it, drop it silently, or answer it itself.

Verdicts are shared constants wherever possible (``ACCEPT`` and the drops), so judging a
packet in a flood allocates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

ACCEPT_ACTION = "accept"
DROP_ACTION = "drop"
REJECT_ACTION = "reject"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The Guard's decision on one message.

    ``action``: ``"accept"`` (go on handling it), ``"drop"`` (discard it; send nothing: a
    scanner or a flood must learn nothing, not even that something listens) or ``"reject"``
    (answer a request with ``status``/``reason`` plus ``headers``, e.g. 503 + Retry-After,
    and go no further; for an ACK or a response, treat reject as drop).
    ``cause`` is why it was blocked (a label of ``hivepbx_sbc_blocked``; empty on accept).
    """

    action: str
    cause: str = ""
    status: int = 0
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def accepted(self) -> bool:
        return self.action == ACCEPT_ACTION

    @property
    def dropped(self) -> bool:
        return self.action == DROP_ACTION

    @property
    def rejected(self) -> bool:
        return self.action == REJECT_ACTION


ACCEPT = Verdict(ACCEPT_ACTION)


def drop(cause: str) -> Verdict:
    return _DROPS.get(cause) or Verdict(DROP_ACTION, cause)


def reject(cause: str, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> Verdict:
    return Verdict(REJECT_ACTION, cause, status, reason, headers)


#: every cause the Guard can give (the metric's label values: a fixed set)
CAUSES = (
    "banned", "flood", "malformed", "scanner", "auth_failures", "overload",
    "ip_filter", "max_calls", "daily_usage",
)
_DROPS = {c: Verdict(DROP_ACTION, c) for c in CAUSES}
