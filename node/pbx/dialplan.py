"""The tenant's call features put together: what a dialled number becomes before the B2BUA
rings anything (feature codes, class of service, caller ID, block list, hunt groups, time
switches, forwarding, follow-me).

Each feature compiles into a RoutePlan with rules (node/pbx/routing.py ``AttemptRule``): a
list of attempts where every attempt says how long it rings and which attempt follows when
it ends busy, unanswered or failed. Compiling appends attempts in order and patches the
open ends ("exits") of one fragment to the entry of the next one compiled after it, so
every rule points forward and the call can never loop. A plain call (an extension with no
feature set, an outbound number) keeps the plain plan of routing.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.config_rules import ConfigError
from node.model import Extension, Tenant, Trunk
from node.pbx import destinations, feature_codes, forwarding, hunt_groups, screening, time_switch
from node.pbx.routing import (
    AttemptRule,
    RoutePlan,
    Target,
    extension_targets,
    plan_from_extension,
    plan_from_trunk,
    route_targets,
)
from node.ports import ConfigStore, LocationStore

log = logging.getLogger("hivepbx.dialplan")

OUTCOMES = ("busy", "noanswer", "fail")
#: nested destinations (forward to a hunt group whose fallback is a time switch ...)
MAX_DEPTH = 8


@dataclass(slots=True)
class Frag:
    """Compiled attempts: ``entry`` is the first (None: nothing can ring, the call would end
    with ``status``), ``exits`` the (attempt, outcome) pairs not yet sent anywhere."""

    entry: int | None
    exits: list[tuple[int, str]] = field(default_factory=list)
    status: int = 480
    reason: str = ""
    #: the destination is an application the node answers (IVR): only as the call's first stop
    app: object | None = None


class FeatureState:
    """What features remember between calls on this node (hunt statistics), and whether the
    node can answer calls itself (``apps_ready``: the media application runtime is up)."""

    def __init__(self, apps_ready: Callable[[], bool] | None = None) -> None:
        self.hunt = hunt_groups.HuntStats()
        self.apps_ready = apps_ready or (lambda: False)


class Ctx:
    """One plan being compiled for one call of ``tenant``."""

    def __init__(self, tenant: Tenant, config: ConfigStore, locations: LocationStore, state: FeatureState,
                 caller_number: str = "", now: float | None = None) -> None:
        self.tenant = tenant
        self.config = config
        self.locations = locations
        self.state = state
        self.caller_number = caller_number
        self.now = time.time() if now is None else now
        self.attempts: list[list[Target]] = []
        self.rules: list[AttemptRule] = []
        self._stack: list[tuple[str, str]] = []

    # ---------------------------------------------------------------- building blocks
    def add(self, targets: list[Target], ring: float = 0) -> Frag:
        idx = len(self.attempts)
        self.attempts.append(targets)
        self.rules.append(AttemptRule(ring=ring))
        return Frag(idx, [(idx, o) for o in OUTCOMES])

    def _link(self, exits: list[tuple[int, str]], idx: int) -> None:
        for i, outcome in exits:
            assert idx > i, "rules must point forward"
            setattr(self.rules[i], f"on_{outcome}", idx)

    def seq(self, frags: list[Frag]) -> Frag:
        """One after the other, whatever way each ends."""
        live = [f for f in frags if f.entry is not None]
        if not live:
            return frags[0] if frags else Frag(None, [], 480, "Temporarily Unavailable")
        for a, b in zip(live, live[1:]):
            self._link(a.exits, b.entry)  # type: ignore[arg-type]
        return Frag(live[0].entry, live[-1].exits)

    def then(self, frag: Frag, nxt: Frag, outcomes: tuple[str, ...] = OUTCOMES) -> Frag:
        """``nxt`` (compiled after ``frag``) takes over when ``frag`` ends in one of ``outcomes``."""
        if nxt.entry is None:
            return frag
        if frag.entry is None:
            return nxt if _outcome_of(frag.status) in outcomes else frag
        moved = [(i, o) for i, o in frag.exits if o in outcomes]
        self._link(moved, nxt.entry)
        return Frag(frag.entry, [e for e in frag.exits if e not in moved] + nxt.exits)

    def branches(self, frag: Frag, nexts: dict[str, Frag]) -> Frag:
        """Each way ``frag`` itself can end goes to its own next fragment (compiled after it);
        what those fragments end in stays open."""
        if frag.entry is None:
            nxt = nexts.get(_outcome_of(frag.status))
            return nxt if nxt is not None and (nxt.entry is not None or nxt.app is not None) else frag
        exits = []
        for i, o in frag.exits:
            nxt = nexts.get(o)
            if nxt is not None and nxt.entry is not None:
                self._link([(i, o)], nxt.entry)
            else:
                exits.append((i, o))
        for nxt in nexts.values():
            if nxt.entry is not None:
                exits += nxt.exits
        return Frag(frag.entry, exits)

    # ---------------------------------------------------------------- targets
    async def phones(self, number: str) -> list[Target]:
        ext = await self.config.get_extension(self.tenant.id, number)
        if ext is None:
            return []
        return await extension_targets(self.tenant, ext, self.tenant.domain, self.locations)

    def uri_target(self, dest: destinations.Destination) -> Target:
        uri = dest.uri
        assert uri is not None
        transport = uri.transport or "udp"
        return Target(kind="uri", ruri=dest.value, transport=transport, host=uri.host_bare,
                      port=uri.port or 5060, to_value=f"<{dest.value}>")

    async def external(self, number: str, ring: float = 0) -> Frag:
        """Through the tenant's outbound routes, failing over route by route."""
        targets = await route_targets(self.tenant, number, self.config)
        if not targets:
            return Frag(None, [], 404, "Not Found (no route for forwarded number)")
        frags = [self.add([t], ring) for t in targets]
        exits: list[tuple[int, str]] = []
        for a, b in zip(frags, frags[1:]):
            self._link([(a.entry, "fail")], b.entry)  # type: ignore[list-item,arg-type]
            exits += [(a.entry, "busy"), (a.entry, "noanswer")]  # type: ignore[list-item]
        return Frag(frags[0].entry, exits + frags[-1].exits)

    async def member_targets(self, value: str, tag: str) -> list[Target]:
        """Targets that ring one member alongside others: an extension's phones (none when
        it is on do-not-disturb), the first route of an external number, a SIP URI."""
        dest = destinations.parse(value)
        if dest.kind == "uri":
            targets = [self.uri_target(dest)]
        elif dest.kind == "external":
            targets = (await route_targets(self.tenant, dest.value, self.config))[:1]
        else:
            if (await forwarding.load(self.config, self.tenant.id, dest.value)).get("dnd"):
                return []
            targets = await self.phones(dest.value)
        for t in targets:
            t.member = tag
        return targets

    # ---------------------------------------------------------------- destinations
    async def dest(self, value: str, ring: float = 0) -> Frag:
        d = destinations.parse(value)
        if d.kind == "uri":
            return self.add([self.uri_target(d)], ring)
        if d.kind == "external":
            return await self.external(d.value, ring)
        kind = await destinations.internal_kind(self.config, self.tenant.id, d.value)
        if kind is None:
            return Frag(None, [], 404, "Not Found")
        if kind in destinations.app_kinds():
            from node.pbx.routing import AppTarget  # type: ignore[attr-defined]

            return Frag(None, [], 480, "Temporarily Unavailable (application after ringing unsupported)",
                        app=AppTarget(kind, d.value))
        key = (kind, d.value)
        if key in self._stack or len(self._stack) >= MAX_DEPTH:
            if kind == "extension":  # forwarded back to an extension already on the way: ring it
                targets = await self.phones(d.value)
                return self.add(targets, ring) if targets else Frag(None, [], 480, "Temporarily Unavailable")
            return Frag(None, [], 482, "Loop Detected")
        self._stack.append(key)
        try:
            if kind == hunt_groups.KIND:
                doc = hunt_groups.validate(await self.config.get_object(self.tenant.id, kind, d.value))
                return await hunt_groups.compile_group(self, d.value, doc)
            if kind == time_switch.KIND:
                doc = time_switch.validate(await self.config.get_object(self.tenant.id, kind, d.value))
                return await time_switch.compile_switch(self, d.value, doc)
            doc = await forwarding.load(self.config, self.tenant.id, d.value)
            frag = await forwarding.compile_extension(self, d.value, forwarding.validate(doc) if doc else doc, ring)
            # its mailbox answers busy / no answer (when enabled)
            return await _voicemail().fallback(self, d.value, frag)
        except ConfigError as e:
            # a document written around its feature's checks (another tool, an old version)
            log.warning("tenant %s: %s %s is misconfigured: %s", self.tenant.name, kind, d.value, e)
            return Frag(None, [], 500, f"Server Internal Error ({kind.replace('_', ' ')} {d.value} misconfigured)")
        finally:
            self._stack.pop()

    def plan(self, frag: Frag, direction: str, callee: str, ext: Extension | None = None) -> RoutePlan:
        plan = RoutePlan(self.tenant, direction, callee, callee_ext=ext)
        if frag.entry is None and frag.app is not None:
            plan.app = frag.app  # type: ignore[attr-defined]
            return plan
        if frag.entry is None:
            plan.fail_status, plan.fail_reason = frag.status, frag.reason
            return plan
        # attempts compiled before the entry were dropped on the way (a branch never taken)
        base = frag.entry
        plan.attempts = self.attempts[base:]
        plan.rules = [
            AttemptRule(r.ring, *(None if n is None else n - base for n in (r.on_busy, r.on_noanswer, r.on_fail)))
            for r in self.rules[base:]
        ]
        plan.external = direction != "internal" or any(t.kind == "trunk" for a in plan.attempts for t in a)
        stats, tenant_id = self.state.hunt, self.tenant.id
        if any(t.member.startswith("hunt:") for a in plan.attempts for t in a):
            plan.on_answer = lambda target: hunt_groups.on_answer(stats, tenant_id, target.member)
        return plan


def _outcome_of(status: int) -> str:
    if status in (486, 600, 603):
        return "busy"
    if status in (408, 480, 487):
        return "noanswer"
    return "fail"


async def _needs_features(config: ConfigStore, tenant_id: int, number: str) -> bool:
    kind = await destinations.internal_kind(config, tenant_id, number)
    if kind in destinations.DIALLABLE_KINDS:
        return True
    if kind != "extension":
        return False
    if not forwarding.is_plain(await forwarding.load(config, tenant_id, number)):
        return True
    return await _voicemail().enabled(config, tenant_id, number)


_voicemail_module = None


def _voicemail():
    """node.pbx.voicemail, imported on first use (it pulls in the media stack), then kept:
    an import statement on every call costs more than the lookups around it."""
    global _voicemail_module
    if _voicemail_module is None:
        from node.pbx import voicemail

        _voicemail_module = voicemail
    return _voicemail_module


async def plan_outgoing(
    tenant: Tenant, caller: Extension, dialled: str, config: ConfigStore, locations: LocationStore,
    state: FeatureState,
) -> RoutePlan:
    """A call placed by extension ``caller``: feature codes first, then its class of service,
    then the tenant's features, else the plain plan."""
    privacy = False
    fc = await feature_codes.handle(config, tenant.id, caller.number, dialled)
    if fc is not None:
        if not fc.dial:
            plan = RoutePlan(tenant, "internal", dialled)
            log.info("feature code %s by %s: %s %s", fc.code or dialled, caller.number, fc.status, fc.reason)
            if fc.status == feature_codes.DONE_STATUS and state.apps_ready() and feature_codes.application_ready():
                from node.pbx.routing import AppTarget  # type: ignore[attr-defined]

                plan.app = AppTarget(feature_codes.KIND, fc.code)  # type: ignore[attr-defined]
                return plan  # answered, a beep, hung up
            plan.fail_status, plan.fail_reason = fc.status, fc.reason
            return plan
        dialled, privacy = fc.dial, fc.privacy
        if fc.feature == "page":
            from node.pbx import paging

            return await paging.plan(tenant, caller, dialled, config, locations)
    internal = await destinations.internal_kind(config, tenant.id, dialled) is not None
    why_not = await screening.check_dial(config, tenant.id, caller.number, dialled, internal)
    if why_not is not None:
        plan = RoutePlan(tenant, "internal" if internal else "outbound", dialled)
        plan.fail_status, plan.fail_reason = 403, f"Forbidden ({why_not})"
        return plan
    if internal and await _needs_features(config, tenant.id, dialled):
        ctx = Ctx(tenant, config, locations, state, caller.number)
        plan = ctx.plan(await ctx.dest(dialled), "internal", dialled,
                        await config.get_extension(tenant.id, dialled))
    else:
        plan = await plan_from_extension(tenant, dialled, config, locations)
    cid = await screening.caller_id(config, tenant.id, caller.number)
    plan.privacy = privacy or bool(cid.get("hide"))
    plan.caller_number = cid.get("number", "")
    return plan


async def plan_inbound(
    trunks: list[Trunk], dialled: str, caller: str, config: ConfigStore, locations: LocationStore,
    state: FeatureState,
) -> RoutePlan | None:
    """A call from a carrier to one of the tenant's DIDs (None: not ours, see routing.py)."""
    plan = await plan_from_trunk(trunks, dialled, config, locations)
    if plan is None:
        return None
    tenant = plan.tenant
    if await screening.blocked(config, tenant.id, caller):
        blocked = RoutePlan(tenant, "inbound", plan.callee, external=True)
        blocked.fail_status, blocked.fail_reason = 603, "Decline (caller blocked)"
        return blocked
    did = await config.did_by_number(dialled) or await config.did_by_number(
        dialled[1:] if dialled.startswith("+") else "+" + dialled)
    if did is None or did.dest_type not in ("extension",) + destinations.DIALLABLE_KINDS:
        return plan
    if not await _needs_features(config, tenant.id, did.dest_value):
        return plan
    ctx = Ctx(tenant, config, locations, state, caller)
    out = ctx.plan(await ctx.dest(did.dest_value), "inbound", did.dest_value,
                   await config.get_extension(tenant.id, did.dest_value))
    out.external = True
    return out


async def plan_to(
    tenant: Tenant, number: str, config: ConfigStore, locations: LocationStore, state: FeatureState,
    caller_number: str = "",
) -> RoutePlan:
    """A call the node places itself (an IVR transferring its caller): the tenant's hunt
    groups, time switches and forwarding apply as if ``number`` had been dialled."""
    if await _needs_features(config, tenant.id, number):
        ctx = Ctx(tenant, config, locations, state, caller_number)
        return ctx.plan(await ctx.dest(number), "internal", number, await config.get_extension(tenant.id, number))
    return await plan_from_extension(tenant, number, config, locations)
