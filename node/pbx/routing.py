"""Where a call goes: extension, outbound trunk, or a DID's destination, inside one tenant.

The plan is data: a list of attempts, each a group of targets rung in parallel. An
extension with three registered phones is one group of three (forking); outbound routes
are one group each, tried in order when a trunk fails (5xx, 408), like an LCR list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.model import Binding, Extension, Tenant, Trunk
from node.ports import ConfigStore, LocationStore
from node.sip.flow import Flow


@dataclass(slots=True)
class Target:
    #: 'extension' or 'trunk'
    kind: str
    #: Request-URI of the outgoing INVITE
    ruri: str
    #: transport and address to send it to
    transport: str
    host: str
    port: int
    #: To header value (no tag)
    to_value: str
    trunk: Trunk | None = None
    binding: Binding | None = None
    flow: Flow | None = None
    #: which member of a hunt group / follow-me list this target rings ("" = none)
    member: str = ""
    #: kind 'app': the node answers the call itself and runs this application (voicemail
    #: after busy / no answer: node/pbx/call.py hands the caller over to node/pbx/app_call.py)
    app: "AppTarget | None" = None
    #: follow-me "press 1 to accept": the extension the call is for (spoken to whoever
    #: answers, node/pbx/answer_confirm.py); "" = bridge on answer
    confirm_for: str = ""


@dataclass(slots=True)
class AttemptRule:
    """How one attempt ends (hunt groups, forwarding, follow-me): after ``ring`` seconds
    (0 = the tenant's ring timeout) it gives up, and each outcome ('busy', 'noanswer',
    'fail') either starts another attempt (its index; always a later one) or ends the call."""

    ring: float = 0
    on_busy: int | None = None
    on_noanswer: int | None = None
    on_fail: int | None = None

    def next_for(self, outcome: str) -> int | None:
        return {"busy": self.on_busy, "noanswer": self.on_noanswer}.get(outcome, self.on_fail)


@dataclass(slots=True)
class RoutePlan:
    tenant: Tenant
    #: 'internal', 'outbound', 'inbound'
    direction: str
    #: the number or extension dialled, after DID translation
    callee: str
    #: attempts tried in order; targets inside one attempt ring in parallel
    attempts: list[list[Target]] = field(default_factory=list)
    #: when no attempt is possible: the status to answer with
    fail_status: int = 0
    fail_reason: str = ""
    #: counts against the tenant's max external calls
    external: bool = False
    callee_ext: Extension | None = None
    #: one rule per attempt (node/pbx/dialplan.py); empty = ring attempts in order, trunk failover
    rules: list[AttemptRule] = field(default_factory=list)
    #: with rules: overall cap in seconds (0 = only the per-attempt timers)
    ring_timeout: float = 0
    #: present the caller as anonymous (RFC 3323 Privacy: id)
    privacy: bool = False
    #: caller ID number presented on trunk legs ("" = the extension's own)
    caller_number: str = ""
    #: told which target answered (hunt group statistics)
    on_answer: Callable[[Target], None] | None = None
    #: the node answers the call itself and runs this application (node/pbx/app_call.py)
    app: "AppTarget | None" = None
    #: headers every INVITE of the plan carries (paging: auto-answer, node/pbx/paging.py)
    extra_headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AppTarget:
    """An application object of the tenant (kind 'ivr', ...) that takes the call."""

    kind: str
    name: str
    #: what the application is told about why it was reached ("busy", "unavailable", ...)
    arg: str = ""


#: feature object kinds that are applications, reached by dialling their name (a number)
#: or through a DID of that type
APP_KINDS = ("ivr", "queue", "conference")


#: applications a DID may lead to that are never dialled by their name (a mailbox is named
#: by its extension's number: node/pbx/voicemail.py)
DID_ONLY_APP_KINDS = ("voicemail",)


async def app_plan(tenant: Tenant, direction: str, number: str, config: ConfigStore) -> RoutePlan | None:
    """The plan of a call to an application object named ``number``, None when there is none."""
    if not number.isdigit():
        return None
    for kind in APP_KINDS:
        if await config.get_object(tenant.id, kind, number) is not None:
            return RoutePlan(tenant, direction, number, app=AppTarget(kind, number))
    return None


async def extension_targets(
    tenant: Tenant, ext: Extension, domain: str, locations: LocationStore
) -> list[Target]:
    bindings = await locations.lookup(tenant.id, ext.number, time.time())
    return [
        Target(
            kind="extension",
            ruri=b.contact,
            transport=b.transport,
            host=b.source_host,
            port=b.source_port,
            to_value=f"<sip:{ext.number}@{domain}>",
            binding=b,
        )
        for b in bindings
    ]


async def plan_from_extension(
    tenant: Tenant, dialled: str, config: ConfigStore, locations: LocationStore
) -> RoutePlan:
    """A call placed by an extension of ``tenant``: another extension, else an outbound route."""
    app = await app_plan(tenant, "internal", dialled, config)
    if app is not None:
        return app
    ext = await config.get_extension(tenant.id, dialled)
    if ext is not None:
        plan = RoutePlan(tenant, "internal", dialled, callee_ext=ext)
        targets = await extension_targets(tenant, ext, tenant.domain, locations)
        if targets:
            plan.attempts.append(targets)
        else:
            plan.fail_status, plan.fail_reason = 480, "Temporarily Unavailable (not registered)"
        return plan
    plan = RoutePlan(tenant, "outbound", dialled, external=True)
    plan.attempts.extend([t] for t in await route_targets(tenant, dialled, config))
    if not plan.attempts:
        plan.fail_status, plan.fail_reason = 404, "Not Found (no such extension and no route)"
    return plan


async def route_targets(tenant: Tenant, dialled: str, config: ConfigStore) -> list[Target]:
    """One trunk target per matching outbound route, in the order they are tried."""
    out = []
    for route, trunk in await config.match_routes(tenant.id, dialled):
        number = route.prepend + dialled[route.strip :]
        if not number:
            continue
        hostport = trunk.host if trunk.port == 5060 else f"{trunk.host}:{trunk.port}"
        if ":" in trunk.host and not trunk.host.startswith("["):
            hostport = f"[{trunk.host}]" if trunk.port == 5060 else f"[{trunk.host}]:{trunk.port}"
        tparam = ";transport=tcp" if trunk.transport == "tcp" else ""
        out.append(
            Target(
                kind="trunk",
                ruri=f"sip:{number}@{hostport}{tparam}",
                transport=trunk.transport,
                host=trunk.host,
                port=trunk.port,
                to_value=f"<sip:{number}@{hostport}>",
                trunk=trunk,
            )
        )
    return out


async def plan_from_trunk(
    trunks: list[Trunk], dialled: str, config: ConfigStore, locations: LocationStore
) -> RoutePlan | None:
    """A call from a carrier: the dialled DID must belong to the tenant of a trunk the call came
    from, otherwise the call is refused (a carrier of tenant A cannot reach tenant B)."""
    did = await config.did_by_number(dialled)
    if did is None and dialled.startswith("+"):
        did = await config.did_by_number(dialled[1:])
    elif did is None:
        did = await config.did_by_number("+" + dialled)
    if did is None or not any(t.tenant_id == did.tenant_id for t in trunks):
        return None
    tenant = await config.get_tenant(did.tenant_id)
    if tenant is None:
        return None
    plan = RoutePlan(tenant, "inbound", did.dest_value, external=True)
    if did.dest_type in APP_KINDS or did.dest_type in DID_ONLY_APP_KINDS:
        plan.app = AppTarget(did.dest_type, did.dest_value)
        return plan
    if did.dest_type != "extension":
        plan.fail_status, plan.fail_reason = 404, f"Not Found (DID destination {did.dest_type} unsupported)"
        return plan
    ext = await config.get_extension(tenant.id, did.dest_value)
    if ext is None:
        plan.fail_status, plan.fail_reason = 404, "Not Found"
        return plan
    plan.callee_ext = ext
    targets = await extension_targets(tenant, ext, tenant.domain, locations)
    if targets:
        plan.attempts.append(targets)
    else:
        plan.fail_status, plan.fail_reason = 480, "Temporarily Unavailable (not registered)"
    return plan
