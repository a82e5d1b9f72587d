"""Records the PBX keeps: tenants and their configuration, registrations, CDRs.

Plain frozen dataclasses shared by every backend (embedded SQLite now, etcd/Cassandra
later), so that a backend is only a different place to keep the same records.
Every record but a Tenant carries ``tenant_id``: tenancy is part of the key, never a filter
applied afterwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Tenant:
    id: int
    name: str
    #: SIP domain of this virtual PBX; phones register as ``ext@domain``.
    domain: str
    #: maximum concurrent external calls, 0 = unlimited
    max_calls: int = 0
    #: seconds an extension rings before the caller gets 480
    ring_timeout: int = 30
    timezone: str = "UTC"


@dataclass(frozen=True, slots=True)
class Extension:
    id: int
    tenant_id: int
    #: the number dialled inside the tenant, also the SIP user name
    number: str
    password: str
    display_name: str = ""
    #: caller ID number presented on external calls ("" = tenant default / trunk)
    callerid_number: str = ""
    #: placeholder until voicemail lands (issue 3)
    voicemail_enabled: bool = False


@dataclass(frozen=True, slots=True)
class Did:
    """An inbound number; globally unique, owned by one tenant."""

    id: int
    tenant_id: int
    number: str
    #: 'extension' for now; IVRs, queues, hunt groups come later
    dest_type: str
    dest_value: str


@dataclass(frozen=True, slots=True)
class Trunk:
    """A carrier gateway of a tenant."""

    id: int
    tenant_id: int
    name: str
    host: str
    port: int = 5060
    transport: str = "udp"
    #: digest credentials the carrier asks of us ("" = none)
    username: str = ""
    password: str = ""
    #: send REGISTER to the carrier
    register: bool = False
    #: domain used in From for outbound calls (defaults to host)
    from_domain: str = ""


@dataclass(frozen=True, slots=True)
class OutboundRoute:
    """Numbers starting with ``prefix`` leave through ``trunk_id``; longest prefix wins."""

    id: int
    tenant_id: int
    prefix: str
    trunk_id: int
    #: digits removed from the front before sending
    strip: int = 0
    #: digits added to the front after stripping
    prepend: str = ""
    #: among equal prefixes, lower is tried first
    priority: int = 0


@dataclass(frozen=True, slots=True)
class Binding:
    """One registered contact of an extension (RFC 3261 §10)."""

    tenant_id: int
    extension: str
    #: Contact URI as the phone gave it
    contact: str
    #: where the REGISTER really came from (NAT: send requests here, not to contact)
    source_host: str
    source_port: int
    transport: str
    #: absolute expiry, unix time
    expires_at: float
    call_id: str
    cseq: int
    user_agent: str = ""
    q: float = 1.0
    #: node that holds the flow (matters in a cluster)
    node_id: str = "local"


@dataclass(frozen=True, slots=True)
class Cdr:
    """One call attempt. ``id`` is unique per attempt so a replayed write never duplicates."""

    id: str
    tenant_id: int
    call_id: str
    caller: str
    callee: str
    #: 'internal', 'outbound', 'inbound'
    direction: str
    start: float
    end: float
    answer: float | None = None
    trunk: str = ""
    #: 'answered', 'busy', 'no-answer', 'cancelled', 'failed', 'rejected'
    disposition: str = "failed"
    #: final SIP status seen by the caller
    sip_code: int = 0
    #: who ended it / why: 'caller-bye', 'callee-bye', 'caller-cancel', 'timeout', a SIP reason
    hangup_cause: str = ""
    caller_name: str = ""

    @property
    def duration(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def billsec(self) -> float:
        return 0.0 if self.answer is None else max(0.0, self.end - self.answer)


def replace(record, **changes):
    """dataclasses.replace, re-exported so callers need not import dataclasses for it."""
    return dataclasses.replace(record, **changes)


__all__ = [
    "Tenant", "Extension", "Did", "Trunk", "OutboundRoute", "Binding", "Cdr", "replace",
]
