"""The queue document (feature object kind ``queue``): what a queue is and how it hands out calls."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from node.config_rules import ConfigError

__all__ = ["KIND", "STRATEGIES", "QueueConfig", "queue_name"]

KIND = "queue"
STRATEGIES = ("ring-all", "longest-idle", "round-robin", "fewest-calls", "random")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_AGENT = re.compile(r"[0-9]{2,10}")
_FIELDS = ("strategy", "priority", "members", "ring_timeout", "max_wait", "max_len", "overflow",
           "wrapup", "retry_delay", "service_level", "join_empty", "static_members")


def queue_name(value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"queue name {value!r} must be 1-63 letters, digits, '_', '.' or '-'")
    return value


def _seconds(value: object, what: str, lo: float, hi: float, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ConfigError(f"{what} must be a number of seconds from {lo:g} to {hi:g}, not {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """``priority``: calls of a higher-priority queue reach shared agents first. ``max_wait`` /
    ``max_len`` (None: unlimited) send callers to ``overflow`` (a destination for call control,
    e.g. "ext:200"; None: the call is refused). ``retry_delay``: rest after an agent misses an
    offer, so an agent whose phone rejects at once is not offered the same call in a loop.
    ``join_empty``: callers may wait while no agent is logged in. ``static_members``: members
    start logged in (no login step; they may still log out and pause)."""

    strategy: str = "longest-idle"
    priority: int = 0
    members: tuple[str, ...] = ()
    ring_timeout: float = 20.0
    max_wait: float | None = None
    max_len: int | None = None
    overflow: str | None = None
    wrapup: float = 0.0
    retry_delay: float = 5.0
    service_level: float = 20.0
    join_empty: bool = True
    static_members: bool = False

    @classmethod
    def from_dict(cls, data: object) -> "QueueConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"a queue must be a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"unknown queue option(s) {', '.join(map(str, unknown))}; known: {', '.join(_FIELDS)}")
        d = {**asdict(cls()), **data}
        if d["strategy"] not in STRATEGIES:
            raise ConfigError(f"queue strategy {d['strategy']!r} is not one of {', '.join(STRATEGIES)}")
        prio = d["priority"]
        if isinstance(prio, bool) or not isinstance(prio, int) or not -1000 <= prio <= 1000:
            raise ConfigError(f"queue priority must be an integer from -1000 to 1000, not {prio!r}")
        members = d["members"]
        if not isinstance(members, (list, tuple)) or not all(isinstance(m, str) and _AGENT.fullmatch(m) for m in members):
            raise ConfigError(f"queue members must be a list of extension numbers (2-10 digits), not {members!r}")
        if len(set(members)) != len(members):
            raise ConfigError("queue members must not repeat")
        max_len = d["max_len"]
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= 100_000):
            raise ConfigError(f"queue max_len must be an integer from 1 to 100000 or null, not {max_len!r}")
        overflow = d["overflow"]
        if overflow is not None and (not isinstance(overflow, str) or not 0 < len(overflow) <= 200):
            raise ConfigError(f"queue overflow must be a destination string or null, not {overflow!r}")
        for flag in ("join_empty", "static_members"):
            if not isinstance(d[flag], bool):
                raise ConfigError(f"queue {flag} must be true or false, not {d[flag]!r}")
        return cls(
            strategy=d["strategy"], priority=prio, members=tuple(members),
            ring_timeout=_seconds(d["ring_timeout"], "queue ring_timeout", 1, 600),  # type: ignore[arg-type]
            max_wait=_seconds(d["max_wait"], "queue max_wait", 1, 86_400, optional=True),
            max_len=max_len, overflow=overflow,
            wrapup=_seconds(d["wrapup"], "queue wrapup", 0, 3600),  # type: ignore[arg-type]
            retry_delay=_seconds(d["retry_delay"], "queue retry_delay", 1, 600),  # type: ignore[arg-type]
            service_level=_seconds(d["service_level"], "queue service_level", 1, 3600),  # type: ignore[arg-type]
            join_empty=d["join_empty"], static_members=d["static_members"],
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["members"] = list(self.members)
        return d
